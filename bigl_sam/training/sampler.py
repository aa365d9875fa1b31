"""The data order of a training run, the held-out split, and the loader that feeds the loop."""

from typing import Callable, Iterator, List, Optional, Sequence, Tuple

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from .. import distributed
from ..errors import BiglSamError
from .schedule import ORDER, seeded_generator


def split_holdout(image_ids: Sequence[str], holdout: int) -> Tuple[List[int], List[int]]:
    """Item indexes for training and for the held-out curves, where item i shows image `image_ids[i]`: the
    last `holdout` images (all their items) are held out."""
    distinct = sorted(set(image_ids))
    if holdout >= len(distinct):
        raise BiglSamError(f"--holdout {holdout}: there are only {len(distinct)} images")
    held = set(distinct[len(distinct) - holdout :]) if holdout else set()
    train_items = [i for i, image_id in enumerate(image_ids) if image_id not in held]
    return train_items, [i for i, image_id in enumerate(image_ids) if image_id in held]


class StreamSampler(Sampler):
    """Keys (item, epoch) of steps `start` to `end`. Epoch e is a permutation of the items seeded by
    (seed, e); global step s takes the next `batch x world_size` positions of that endless stream, process
    r the r-th slice. Restoring the step restores the data position exactly."""

    def __init__(self, size: int, batch: int, process: distributed.Process, seed: int, start: int, end: int):
        self.size, self.batch, self.process, self.seed = size, batch, process, seed
        self.start, self.end = start, end
        self._epoch, self._order = -1, None

    def __len__(self) -> int:
        return (self.end - self.start) * self.batch

    def __iter__(self) -> Iterator[Tuple[int, int]]:
        per_step = self.batch * self.process.world_size
        for step in range(self.start, self.end):
            first = step * per_step + self.process.rank * self.batch
            for position in range(first, first + self.batch):
                yield self._at(position)

    def _at(self, position: int) -> Tuple[int, int]:
        epoch, offset = divmod(position, self.size)
        if epoch != self._epoch:
            order = torch.randperm(self.size, generator=seeded_generator(self.seed, ORDER, epoch))
            self._epoch, self._order = epoch, order.tolist()
        return self._order[offset], epoch


def make_loader(dataset: Dataset, sampler: StreamSampler, workers: int, process: distributed.Process,
                collate_fn: Optional[Callable[[list], dict]] = None) -> DataLoader:
    """`collate_fn`: how a step's samples become one batch (None: each field stacked)."""
    return DataLoader(
        dataset,
        batch_size=sampler.batch,
        sampler=sampler,
        num_workers=workers,
        collate_fn=collate_fn,
        pin_memory=process.device.type == "cuda",
        persistent_workers=False,
    )
