"""Splitting images over ranks and putting the gathered records back together."""

import pytest

from bigl_sam.evaluation.runner import in_selection_order
from bigl_sam import distributed
from bigl_sam.evaluation.sharding import Shard


@pytest.mark.parametrize("world_size", [1, 2, 3, 7])
def test_shards_cover_every_image_once(world_size):
    images = list(range(100, 111))
    shares = [Shard(rank, world_size).take(images) for rank in range(world_size)]
    assert sorted(i for share in shares for i in share) == images
    assert Shard(0, world_size).is_main and not any(Shard(r, world_size).is_main for r in range(1, world_size))


def test_without_torchrun_there_is_one_process(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    process = distributed.start()
    assert Shard(process.rank, process.world_size) == Shard(0, 1)


def test_gathered_records_come_back_in_selection_order():
    records = [{"image_id": i} for i in (3, 9, 1, 4)]  # rank 0 then rank 1
    assert [r["image_id"] for r in in_selection_order(records, [1, 3, 4, 9])] == [1, 3, 4, 9]


@pytest.mark.parametrize("ids", [(1, 3, 3, 4), (1, 3), (1, 3, 4, 9, 11)])
def test_a_duplicate_or_a_gap_is_refused(ids):
    with pytest.raises(RuntimeError, match="gathered"):
        in_selection_order([{"image_id": i} for i in ids], [1, 3, 4, 9])
