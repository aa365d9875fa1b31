"""Seeded augmentations: one integer seed replays the same crop, flip and colour change.

The cache stores the seed next to each teacher embedding, so training rebuilds the very image the
teacher saw from the original file and the seed alone.
"""

import zlib

import numpy as np

IDENTITY_SEED = 0  # the original image, untouched
MIN_CROP = 0.5  # a crop keeps at least this share of each side
COLOUR_RANGE = 0.2  # brightness and contrast change by at most this factor either way


def augmentation_seed(image_id: str, index: int) -> int:
    """The seed of augmentation `index` of an image: 0 (the original) for index 0, otherwise a positive
    int31 fixed by the image id and the index, so it does not depend on how images are split or ordered."""
    if index == 0:
        return IDENTITY_SEED
    return zlib.crc32(f"{image_id}#{index}".encode()) % (2**31 - 1) + 1


def augment(image: np.ndarray, seed: int) -> np.ndarray:
    """H x W x 3 uint8 -> h x w x 3 uint8: a crop of 50-100% of each side, a horizontal flip half the
    time, brightness and contrast within +-20%. Seed 0 gives the image back unchanged."""
    if seed == IDENTITY_SEED:
        return image
    rng = np.random.default_rng(seed)
    crop = _random_crop(image, rng)
    if rng.random() < 0.5:
        crop = crop[:, ::-1]
    return _jitter_colour(crop, rng)


def _random_crop(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    H, W = image.shape[:2]
    h = max(1, round(H * rng.uniform(MIN_CROP, 1.0)))
    w = max(1, round(W * rng.uniform(MIN_CROP, 1.0)))
    top = int(rng.integers(0, H - h + 1))
    left = int(rng.integers(0, W - w + 1))
    return image[top : top + h, left : left + w]


def _jitter_colour(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    brightness, contrast = rng.uniform(1 - COLOUR_RANGE, 1 + COLOUR_RANGE, size=2)
    pixels = image.astype(np.float32)
    mean = pixels.mean()
    pixels = (pixels - mean) * contrast + mean * brightness
    return np.ascontiguousarray(np.clip(pixels + 0.5, 0, 255).astype(np.uint8))
