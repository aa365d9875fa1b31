"""Splitting the images over processes started by `torchrun`, and gathering their records on rank 0.

Records are small Python objects, so they travel over gloo whatever device the models run on.
"""

from dataclasses import dataclass
from typing import List, Optional, Sequence, TypeVar

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


def gather_to_main(items: List[T], shard: Shard) -> Optional[List[T]]:
    """Every process's `items` concatenated on rank 0 (None elsewhere)."""
    if shard.world_size == 1:
        return list(items)
    gathered = [None] * shard.world_size if shard.is_main else None
    dist.gather_object(items, gathered, dst=0)
    return [item for part in gathered for item in part] if shard.is_main else None
