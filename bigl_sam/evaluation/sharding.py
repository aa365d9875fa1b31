"""Splitting the images over processes started by `torchrun`, and gathering their records on rank 0.

Records are small Python objects, so they travel over gloo whatever device the models run on.
"""

import os
from dataclasses import dataclass
from typing import List, Optional, Sequence, TypeVar

import torch
import torch.distributed as dist

T = TypeVar("T")


@dataclass(frozen=True)
class Shard:
    rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def take(self, items: Sequence[T]) -> List[T]:
        """This process's share: every `world_size`-th item from `rank` on."""
        return list(items[self.rank :: self.world_size])


def current_shard() -> Shard:
    """The process group torchrun describes in the environment (joined on first call), or a single process."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return Shard()
    if not dist.is_initialized():
        dist.init_process_group(backend="gloo")
    return Shard(dist.get_rank(), dist.get_world_size())


def default_device() -> torch.device:
    """The GPU of this process's local rank if there is one, else the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


def gather_to_main(items: List[T], shard: Shard) -> Optional[List[T]]:
    """Every process's `items` concatenated on rank 0 (None elsewhere)."""
    if shard.world_size == 1:
        return list(items)
    gathered = [None] * shard.world_size if shard.is_main else None
    dist.gather_object(items, gathered, dst=0)
    return [item for part in gathered for item in part] if shard.is_main else None
