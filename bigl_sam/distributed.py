"""One process or many under `torchrun` (NCCL on GPU, gloo on CPU), the device each one runs on, and the
precisions the commands offer (`--dtype`).

Resumable work over a list (the images of `eval`, `amg` and `embed`) goes one way: each process takes its
share (`Process.take`), leaves out what an earlier run finished (`take_unfinished`), and rank 0 gathers what
the processes return (`gather_to_main`: small Python objects, so over gloo whatever the device).
"""

import os
import sys
from dataclasses import dataclass
from datetime import timedelta
from typing import Callable, List, Optional, Sequence, Tuple, TypeVar, Union

import torch
import torch.distributed as dist
from tqdm import tqdm

from .errors import BiglSamError
from .options import DTYPE_NAMES

# Ranks wait for each other at the end of a cache shard list or a checkpoint; that can take long.
BARRIER_TIMEOUT = timedelta(hours=6)
# --dtype of every command that has one: float32, or bfloat16 under torch.autocast (`autocast`).
DTYPES = dict(zip(DTYPE_NAMES, (torch.float32, torch.bfloat16)))

T = TypeVar("T")


@dataclass(frozen=True)
class Process:
    """This process among those `torchrun` started (rank 0 of 1 without torchrun), and its device."""

    rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def take(self, items: Sequence[T]) -> List[T]:
        """This process's share: every `world_size`-th item from `rank` on."""
        return list(items[self.rank :: self.world_size])


def take_unfinished(items: Sequence[T], process: Process, finished: Callable[[T], bool], label: str,
                    where: object) -> Tuple[List[T], List[T]]:
    """This process's share of `items` and, of that share, the items not `finished` by an earlier run, in
    order. When some are, says how many on stderr (`label`: whose work, `where`: the folder that holds it)."""
    mine = process.take(items)
    todo = [item for item in mine if not finished(item)]
    if len(todo) < len(mine):
        tqdm.write(f"{label} [rank {process.rank}]: {len(mine) - len(todo)} of {len(mine)} images already done in "
                   f"{where}, {len(todo)} to go", file=sys.stderr)
    return mine, todo


def gather_to_main(items: List[T], process: Process) -> Optional[List[T]]:
    """Every process's `items` concatenated on rank 0, in rank order (None elsewhere)."""
    if process.world_size == 1:
        return list(items)
    gathered = [None] * process.world_size if process.is_main else None
    dist.gather_object(items, gathered, dst=0)
    return [item for part in gathered for item in part] if process.is_main else None


def pick_device(name: Optional[str] = None) -> torch.device:
    """`name` checked (a `BiglSamError` if it is no device, or no such GPU is here); None: the GPU of this
    process's local rank if there is one, else the CPU.

    A bare `cuda` means this process's GPU too (`LOCAL_RANK`, 0 without torchrun). Under torchrun
    (`WORLD_SIZE` > 1) an explicit index such as `cuda:0` is refused: every rank would run on that one GPU.
    """
    if name is None and not torch.cuda.is_available():
        return torch.device("cpu")
    try:
        device = torch.device(name or "cuda")
    except RuntimeError:
        raise BiglSamError(f"--device {name!r} is not a device (cpu, cuda, cuda:1, ...)") from None
    if device.type != "cuda":
        return device
    if not torch.cuda.is_available():
        raise BiglSamError(f"--device {name}: no CUDA GPU is available here")
    count = torch.cuda.device_count()
    if device.index is None:
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        if local_rank >= count:
            raise BiglSamError(f"LOCAL_RANK {local_rank} has no GPU: only {count} here")
        return torch.device("cuda", local_rank)
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size > 1:
        raise BiglSamError(
            f"--device {name} under torchrun ({world_size} processes) would put every rank on that GPU; "
            "use --device cuda (each rank takes the GPU of its LOCAL_RANK) and CUDA_VISIBLE_DEVICES to choose GPUs"
        )
    if device.index >= count:
        raise BiglSamError(f"--device {name}: only {count} GPUs here (cuda:0..cuda:{count - 1})")
    return device


def torch_dtype(dtype: Union[str, torch.dtype]) -> torch.dtype:
    """A `DTYPES` name as its torch dtype (a torch dtype is returned as it is); any other name is a
    `BiglSamError` naming the choices."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise BiglSamError(f"--dtype {dtype}: expected {' or '.join(DTYPES)}")
    return DTYPES[dtype]


def autocast(device: torch.device, dtype: Union[str, torch.dtype]) -> torch.autocast:
    """The one precision context of every command: `dtype` (a `DTYPES` name or a torch dtype) other than
    float32 runs the block under `torch.autocast` on `device`; float32 runs it as it is."""
    dtype = torch_dtype(dtype)
    return torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32)


def note_bfloat16(device: torch.device, dtype: Union[str, torch.dtype]) -> None:
    """Says on stderr, in one line, when bfloat16 is asked for on a CPU without native bfloat16 (no
    AVX512-BF16, no AMX): torch then emulates it, slower than float32, not faster."""
    if torch_dtype(dtype) == torch.bfloat16 and device.type == "cpu" and not has_native_bfloat16():
        print(f"note: this CPU ({torch.backends.cpu.get_cpu_capability()}) has no native bfloat16 (AVX512-BF16 "
              "or AMX): bfloat16 runs emulated, slower than float32", file=sys.stderr)


def has_native_bfloat16() -> bool:
    """Whether this CPU multiplies bfloat16 in hardware (AVX512-BF16 or AMX tiles)."""
    return torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()


def start(device: Optional[str] = None, backend: Optional[str] = None) -> Process:
    """Joins the `torchrun` process group when there is one (`backend` None: NCCL on GPU, gloo on CPU);
    picks this process's device."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    device = pick_device(device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if world_size > 1 and not dist.is_initialized():
        backend = backend or ("nccl" if device.type == "cuda" else "gloo")
        dist.init_process_group(backend, timeout=BARRIER_TIMEOUT)
    return Process(rank, world_size, device)


def barrier(process: Process) -> None:
    if process.world_size > 1:
        dist.barrier()


def stop(process: Process) -> None:
    if process.world_size > 1 and dist.is_initialized():
        dist.destroy_process_group()
