"""Training inputs rebuilt exactly as SAM's predictor builds them, and the part of them that is image.

`SamPredictor.set_image` resizes the longest side to the encoder's input size with PIL
(`ResizeLongestSide`), then `Sam.preprocess` normalises with the model's pixel mean and std and pads
the bottom and right with zeros (`bigl_sam.images.sam_input`). The embedding cells that see only
padding are masked out of the loss.
"""

import math
from pathlib import Path
from typing import Sequence, Tuple

import torch
from torch.utils.data import Dataset

from ..errors import BiglSamError
from ..images import load_image, sam_input
from .augment import augment


def valid_mask(valid_hw: torch.Tensor, grid: int, img_size: int) -> torch.Tensor:
    """B x 2 (h, w) image extents in input pixels -> B x 1 x grid x grid, 1 where a cell sees the image."""
    cell = img_size / grid
    rows = torch.arange(grid, device=valid_hw.device)
    inside_h = rows[None, :] < torch.ceil(valid_hw[:, :1] / cell)
    inside_w = rows[None, :] < torch.ceil(valid_hw[:, 1:] / cell)
    return (inside_h[:, :, None] & inside_w[:, None, :]).unsqueeze(1).float()


def valid_cells(valid_hw: Sequence[int], grid: int, img_size: int) -> Tuple[int, int]:
    """How many embedding rows and columns an image of extent (h, w) covers."""
    cell = img_size / grid
    return math.ceil(valid_hw[0] / cell), math.ceil(valid_hw[1] / cell)


class DistillDataset(Dataset):
    """Item i of `indexes` in the teacher cache -> {"image": 3 x S x S, "target": C x G x G float16,
    "valid_hw": 2 (int64)}: the input replayed from the original file and the cached augmentation seed."""

    def __init__(self, cache, indexes: Sequence[int], pixel_mean: torch.Tensor, pixel_std: torch.Tensor) -> None:
        self.cache = cache
        self.indexes = list(indexes)
        self.pixel_mean = pixel_mean.detach().cpu().view(-1)
        self.pixel_std = pixel_std.detach().cpu().view(-1)

    def __len__(self) -> int:
        return len(self.indexes)

    def __getitem__(self, i: int) -> dict:
        entry = self.cache.entry(self.indexes[i])
        image = augment(load_image(Path(self.cache.images_root) / entry.image_id), entry.seed)
        x, valid_hw = sam_input(image, self.pixel_mean, self.pixel_std, self.cache.img_size)
        if tuple(valid_hw) != tuple(entry.valid_hw):
            raise BiglSamError(
                f"{entry.image_id} (seed {entry.seed}): rebuilt input covers {valid_hw}, the cache says "
                f"{tuple(entry.valid_hw)}; the image changed since the cache was built"
            )
        return {"image": x, "target": self.cache.embedding(self.indexes[i]), "valid_hw": torch.tensor(valid_hw)}
