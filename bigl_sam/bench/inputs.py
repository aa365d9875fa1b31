"""What a bench row runs on: photos from files (`--image`) or synthetic photos of a given size (`--size`),
each turned into encoder input exactly as `SamPredictor.set_image` does (long side resized to the
encoder's input size, normalised with the model's pixel mean and std, zero-padded to a square), so the
padding a real photo brings shows in MACs and latency."""

import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, List, Sequence, Tuple

import numpy as np

from ..errors import BiglSamError
from ..images import MAX_ASPECT, MAX_PIXELS, check_size, load_image, sam_input

if TYPE_CHECKING:  # annotations only: --help imports no torch
    import torch

DEFAULT_SIZE = "1024x1024"
SIZE_PATTERN = re.compile(r"(\d+)[xX](\d+)")


@dataclass(frozen=True)
class BenchInput:
    """One input of the table's `input` column: `name` is the --size or the --image path as given."""

    name: str
    image: np.ndarray  # H x W x 3 uint8 RGB

    @property
    def label(self) -> str:
        """`640x480` for a synthetic photo, `photos/cat.jpg (640x425)` for a file."""
        height, width = self.image.shape[:2]
        size = f"{width}x{height}"
        return size if self.name == size else f"{self.name} ({size})"


def parse_size(text: str) -> Tuple[int, int]:
    """'640x480' -> (640, 480): width, height, within the limits the image loader sets for a photo."""
    match = SIZE_PATTERN.fullmatch(text.strip())
    if match is None:
        raise BiglSamError(f"--size {text!r}: expected WIDTHxHEIGHT in pixels, e.g. 640x480")
    width, height = int(match[1]), int(match[2])
    check_size(height, width, f"--size {text!r}", MAX_PIXELS, MAX_ASPECT)
    return width, height


def synthetic_photo(width: int, height: int) -> np.ndarray:
    """H x W x 3 uint8 noise, the same for the same size. No pixel normalises to exactly zero (SAM's
    pixel means are not integers), so only the padding SAM adds is zero, as with a real photo."""
    rng = np.random.default_rng(width * 100_003 + height)
    return rng.integers(0, 256, (height, width, 3), dtype=np.uint8)


def bench_inputs(images: Sequence[Path], sizes: Sequence[str]) -> List[BenchInput]:
    """The photos first, in the order given, then the synthetic sizes; a square 1024 photo if neither is
    given. Every file is read and every size checked here, before anything is measured."""
    inputs = [BenchInput(str(path), load_image(path)) for path in images]
    for size in sizes or ([] if images else [DEFAULT_SIZE]):
        width, height = parse_size(size)
        inputs.append(BenchInput(f"{width}x{height}", synthetic_photo(width, height)))
    unique = {}
    for item in inputs:
        unique.setdefault(item.name, item)
    return list(unique.values())


def encoder_input(
    item: BenchInput, pixel_mean: "torch.Tensor", pixel_std: "torch.Tensor", img_size: int, batch: int
) -> "torch.Tensor":
    """batch x 3 x img_size x img_size: `item` preprocessed as `SamPredictor.set_image` does, repeated."""
    x, _ = sam_input(item.image, pixel_mean, pixel_std, img_size)
    return x[None].repeat(batch, 1, 1, 1)
