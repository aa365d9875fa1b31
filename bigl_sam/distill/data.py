"""Training inputs rebuilt exactly as SAM's predictor builds them, and the part of them that is image.

`SamPredictor.set_image` resizes the longest side to the encoder's input size with PIL
(`ResizeLongestSide`), then `Sam.preprocess` normalises with the model's pixel mean and std and pads
the bottom and right with zeros (`bigl_sam.images.sam_input`).

Both datasets are indexed by a `(item, epoch)` key (what `sampler.StreamSampler` yields): the cached one
replays the augmentation the cache stored for the item, the image one draws augmentation `epoch` of the
image (epoch 0: the original), so the data stays a function of the step and the seed.
"""

from pathlib import Path
from typing import Sequence, Tuple

import torch
from torch.utils.data import Dataset

from ..errors import BiglSamError
from ..images import load_image, sam_input
from ..modeling.routing import token_extent, token_extent_mask
from .augment import augment, augmentation_seed

Key = Tuple[int, int]  # (item, epoch)


def loss_region(region: str, input_size: torch.Tensor, grid: int, img_size: int) -> torch.Tensor:
    """B x 1 x grid x grid weights of the embedding loss: every cell ("full") or the cells that see the
    image ("valid"), for images of B x 2 `input_size` (h, w) in input pixels of an img_size square."""
    if region == "valid":
        extents = token_extent(input_size, img_size // grid)
        return token_extent_mask(extents, (grid, grid)).unsqueeze(1).float()
    return torch.ones(input_size.shape[0], 1, grid, grid, device=input_size.device)


class DistillDataset(Dataset):
    """Key (i, epoch) -> {"image": 3 x S x S, "target": C x G x G float16, "input_size": 2 (int64)} for entry
    `indexes[i]` of the teacher cache: the input replayed from the original file and the cached
    augmentation seed (the epoch plays no part: the cache fixed the augmentation)."""

    def __init__(self, cache, indexes: Sequence[int], pixel_mean: torch.Tensor, pixel_std: torch.Tensor) -> None:
        self.cache = cache
        self.indexes = list(indexes)
        self.pixel_mean = pixel_mean.detach().cpu().view(-1)
        self.pixel_std = pixel_std.detach().cpu().view(-1)

    def __len__(self) -> int:
        return len(self.indexes)

    def __getitem__(self, key: Key) -> dict:
        index = self.indexes[key[0]]
        entry = self.cache.entry(index)
        image = augment(load_image(Path(self.cache.images_root) / entry.image_id), entry.seed)
        x, input_size = sam_input(image, self.pixel_mean, self.pixel_std, self.cache.img_size)
        if tuple(input_size) != tuple(entry.input_size):
            raise BiglSamError(
                f"{entry.image_id} (seed {entry.seed}): rebuilt input covers {input_size}, the cache says "
                f"{tuple(entry.input_size)}; the image changed since the cache was built"
            )
        return {"image": x, "target": self.cache.embedding(index), "input_size": torch.tensor(input_size)}


class ImageDataset(Dataset):
    """Key (i, epoch) -> {"image": 3 x S x S, "input_size": 2 (int64)}: augmentation `epoch` of image
    `image_ids[i]` under `root` (epoch 0: the image itself), for a teacher that runs on the fly."""

    def __init__(
        self, root: Path, image_ids: Sequence[str], pixel_mean: torch.Tensor, pixel_std: torch.Tensor, img_size: int
    ) -> None:
        self.root = Path(root)
        self.image_ids = list(image_ids)
        self.pixel_mean = pixel_mean.detach().cpu().view(-1)
        self.pixel_std = pixel_std.detach().cpu().view(-1)
        self.img_size = img_size

    def __len__(self) -> int:
        return len(self.image_ids)

    def __getitem__(self, key: Key) -> dict:
        item, epoch = key
        image_id = self.image_ids[item]
        image = augment(load_image(self.root / image_id), augmentation_seed(image_id, epoch))
        x, input_size = sam_input(image, self.pixel_mean, self.pixel_std, self.img_size)
        return {"image": x, "input_size": torch.tensor(input_size)}


def collate(samples) -> dict:
    """List of dataset items -> one batch (each field stacked)."""
    return {key: torch.stack([sample[key] for sample in samples]) for key in samples[0]}
