"""Which device each process runs on. No GPU is here: CUDA's calls are replaced by fakes that check what
the real ones check (torch.cuda.set_device refuses a device without an index)."""

import pytest
import torch

from bigl_sam import distributed
from bigl_sam.errors import BiglSamError


@pytest.fixture
def two_gpus(monkeypatch):
    """A machine with 2 GPUs; returns the devices set_device was called with."""
    chosen = []

    def set_device(device):
        device = torch.device(device)
        if device.type != "cuda" or device.index is None:
            raise ValueError(f"Expected a torch.device with a specified index or an integer, but got:{device}")
        chosen.append(device)

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "set_device", set_device)
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    return chosen


def torchrun(monkeypatch, rank: int, world_size: int) -> None:
    monkeypatch.setenv("WORLD_SIZE", str(world_size))
    monkeypatch.setenv("RANK", str(rank))
    monkeypatch.setenv("LOCAL_RANK", str(rank))


@pytest.mark.parametrize("name", ["cuda", None])
def test_bare_cuda_is_this_process_gpu(two_gpus, monkeypatch, name):
    """`--device cuda` as the docs write it: this process's GPU, with the index torch.cuda.set_device needs."""
    assert distributed.start(name).device == torch.device("cuda", 0)
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert distributed.start(name).device == torch.device("cuda", 1)
    assert two_gpus == [torch.device("cuda", 0), torch.device("cuda", 1)]


def test_explicit_index_in_one_process(two_gpus):
    assert distributed.start("cuda:1").device == torch.device("cuda", 1)
    assert two_gpus == [torch.device("cuda", 1)]


@pytest.mark.parametrize("name", ["cuda:0", "cuda:1"])
def test_explicit_index_under_torchrun_is_refused(two_gpus, monkeypatch, name):
    """Every rank would land on the same GPU; refused before any process group is joined."""
    torchrun(monkeypatch, rank=1, world_size=2)
    monkeypatch.setattr(torch.distributed, "init_process_group", lambda *a, **k: pytest.fail("joined a group"))
    with pytest.raises(BiglSamError) as err:
        distributed.start(name)
    message = str(err.value)
    assert f"--device {name}" in message and "every rank" in message and "--device cuda" in message
    assert "\n" not in message and two_gpus == []


@pytest.mark.parametrize(
    "name, local_rank, expected",
    [("cuda:2", "0", "--device cuda:2: only 2 GPUs here (cuda:0..cuda:1)"),
     ("cuda", "3", "LOCAL_RANK 3 has no GPU: only 2 here"),
     (None, "2", "LOCAL_RANK 2 has no GPU: only 2 here")],
)
def test_a_gpu_that_is_not_here(two_gpus, monkeypatch, name, local_rank, expected):
    monkeypatch.setenv("LOCAL_RANK", local_rank)
    with pytest.raises(BiglSamError, match=expected.replace("(", r"\(").replace(")", r"\)").replace(".", r"\.")):
        distributed.start(name)


def test_cpu_and_garbage(two_gpus, monkeypatch):
    torchrun(monkeypatch, rank=0, world_size=1)
    assert distributed.pick_device("cpu") == torch.device("cpu")
    with pytest.raises(BiglSamError, match="is not a device"):
        distributed.pick_device("gpu0")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert distributed.pick_device(None) == torch.device("cpu")
    with pytest.raises(BiglSamError, match="no CUDA GPU is available here"):
        distributed.pick_device("cuda")


@pytest.mark.parametrize("dtype", ["float32", torch.float32])
def test_float32_runs_without_autocast(dtype):
    with distributed.autocast(torch.device("cpu"), dtype):
        assert not torch.is_autocast_enabled("cpu")
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float32


@pytest.mark.parametrize("dtype", ["bfloat16", torch.bfloat16])
def test_bfloat16_runs_under_autocast(dtype):
    with distributed.autocast(torch.device("cpu"), dtype):
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.bfloat16


def test_an_unknown_precision_is_one_error_line_naming_the_choices():
    with pytest.raises(BiglSamError, match="^--dtype float16: expected float32 or bfloat16$"):
        distributed.autocast(torch.device("cpu"), "float16")


@pytest.mark.parametrize("native, dtype, device, says", [
    (False, "bfloat16", "cpu", True), (True, "bfloat16", "cpu", False), (False, "float32", "cpu", False),
    (False, torch.bfloat16, "cuda", False),
], ids=["emulated", "native", "float32", "gpu"])
def test_one_start_up_line_only_for_emulated_bfloat16(monkeypatch, capsys, native, dtype, device, says):
    monkeypatch.setattr(distributed, "has_native_bfloat16", lambda: native)
    distributed.note_bfloat16(torch.device(device), dtype)
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.splitlines()
    assert len(lines) == (1 if says else 0)
    if says:
        assert "no native bfloat16" in lines[0] and "slower than float32" in lines[0]
