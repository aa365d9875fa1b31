"""Splitting images over ranks, leaving out what an earlier run finished, and putting the gathered records
back together."""

import pytest
import torch

from bigl_sam import distributed
from bigl_sam.distributed import Process, gather_to_main, take_unfinished
from bigl_sam.evaluation.runner import in_selection_order

CPU = torch.device("cpu")


@pytest.mark.parametrize("world_size", [1, 2, 3, 7])
def test_shares_cover_every_image_once(world_size):
    images = list(range(100, 111))
    shares = [Process(rank, world_size, CPU).take(images) for rank in range(world_size)]
    assert sorted(i for share in shares for i in share) == images
    assert Process(0, world_size, CPU).is_main
    assert not any(Process(r, world_size, CPU).is_main for r in range(1, world_size))


def test_without_torchrun_there_is_one_process(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    process = distributed.start()
    assert (process.rank, process.world_size) == (0, 1)
    assert gather_to_main([3, 1], process) == [3, 1]


def test_a_rank_takes_its_unfinished_share_and_says_what_was_done(capsys):
    images = list(range(10))
    mine, todo = take_unfinished(images, Process(1, 3, CPU), lambda i: i < 5, "amg", "out/")
    assert mine == [1, 4, 7] and todo == [7]
    assert "amg [rank 1]: 2 of 3 images already done in out/, 1 to go" in capsys.readouterr().err
    assert take_unfinished(images, Process(0, 3, CPU), lambda i: False, "amg", "out/")[1] == [0, 3, 6, 9]
    assert capsys.readouterr().err == ""


def test_gathered_records_come_back_in_selection_order():
    records = [{"image_id": i} for i in (3, 9, 1, 4)]  # rank 0 then rank 1
    assert [r["image_id"] for r in in_selection_order(records, [1, 3, 4, 9])] == [1, 3, 4, 9]


@pytest.mark.parametrize("ids", [(1, 3, 3, 4), (1, 3), (1, 3, 4, 9, 11)])
def test_a_duplicate_or_a_gap_is_refused(ids):
    with pytest.raises(RuntimeError, match="gathered"):
        in_selection_order([{"image_id": i} for i in ids], [1, 3, 4, 9])
