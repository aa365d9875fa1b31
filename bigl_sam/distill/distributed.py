"""One process or many under `torchrun`: NCCL on GPU, gloo on CPU."""

import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Optional

import torch
import torch.distributed as dist

# Ranks wait for each other at the end of a cache shard list or a checkpoint; that can take long.
BARRIER_TIMEOUT = timedelta(hours=6)


@dataclass(frozen=True)
class Process:
    rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def start(device: Optional[str] = None) -> Process:
    """Joins the `torchrun` process group when there is one; picks this process's device."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device is None:
        device = f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if world_size > 1 and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend, timeout=BARRIER_TIMEOUT)
    return Process(rank, world_size, device)


def barrier(process: Process) -> None:
    if process.world_size > 1:
        dist.barrier()


def stop(process: Process) -> None:
    if process.world_size > 1 and dist.is_initialized():
        dist.destroy_process_group()
