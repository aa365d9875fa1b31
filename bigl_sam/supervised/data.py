"""Training images and their instance masks, augmented so that masks stay aligned with pixels.

An item is one image of the annotation file with its scored instances (`eval coco`'s reader, so every
annotation form it reads is read here, with the same one-line errors). Key (item, epoch) -> the same
sample on every process and in every rerun: the augmentation and the instances drawn depend on the run's
seed, the item and the epoch only (what `training.sampler.StreamSampler` yields).

Each sample is prepared as `SamPredictor` prepares a photo (long side resized to the model's input size,
normalised, zero-padded at the bottom and right). Masks are resized the same way, then kept at the
resolution of the decoder's low-res logits (a quarter of the input side, in cells of 4 x 4 input pixels):
the losses and the corrective clicks are computed there.
"""

import hashlib
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Set, Tuple

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from ..errors import BiglSamError
from ..evaluation.coco import CocoInstances
from ..images import IMAGE_SUFFIXES, load_image, sam_input

LOW_RES_SCALE = 4  # input pixels per side of a low-res logit cell (SAM's decoder upscales its grid by 4)
DATA_STREAM = 0x5EED  # the numpy stream of the augmentations, apart from torch's streams


def held_out_images(folder: Path) -> Tuple[Set[str], Set[str]]:
    """The file names and the contents (sha256 of the bytes) of the images under `folder` (searched
    recursively): a held-out set's photo may sit in the training set under another name."""
    if not folder.is_dir():
        raise BiglSamError(f"--exclude {folder}: folder not found")
    files = [p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()]
    return {p.name for p in files}, {_content(p) for p in files}


def training_images(dataset: CocoInstances, exclude: Optional[Path]) -> Tuple[List[int], int]:
    """The ids of the images with at least one scored instance, minus those that are also under `exclude`
    (the same file name, or the same bytes under another name); and how many were left out that way. None
    left, or a missing image file, is a `BiglSamError`."""
    ids = dataset.image_ids()
    missing = [dataset.image_path(i) for i in ids if not dataset.image_path(i).is_file()]
    if missing:
        raise BiglSamError(f"{len(missing)} of the {len(ids)} training images are not found under "
                           f"{dataset.images_dir}, e.g. {missing[0]}")
    kept = ids
    if exclude:
        names, contents = held_out_images(exclude)
        kept = [i for i in ids if dataset.image_path(i).name not in names
                and _content(dataset.image_path(i)) not in contents]
    if not kept:
        raise BiglSamError(f"{dataset.annotations_path}: no usable instance is left for training "
                           f"({len(ids)} images with instances, {len(ids) - len(kept)} of them excluded)")
    return kept, len(ids) - len(kept)


def _content(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


class MaskDataset(Dataset):
    """Key (i, epoch) -> {"image": 3 x S x S, "input_size": 2 (h, w in input pixels), "masks": M x S/4 x S/4 bool,
    "boxes": M x 4 float (XYXY in input pixels, the tight box of each mask)}, M >= 1, for image `image_ids[i]`.

    Augmentation (each part off at 0): a crop keeping `min_crop` or more of each side, a horizontal flip with
    probability `flip`, and with probability `copy_paste` the instances of another training image pasted on,
    at the same relative place (they occlude the masks they cover). Instances left with no low-res cell are
    dropped; a crop that would drop every instance is not taken.
    """

    def __init__(self, dataset: CocoInstances, image_ids: Sequence[int], img_size: int, pixel_mean: torch.Tensor,
                 pixel_std: torch.Tensor, seed: int, masks_per_image: int, flip: float, min_crop: float,
                 copy_paste: float) -> None:
        self.dataset, self.image_ids, self.img_size = dataset, list(image_ids), img_size
        self.pixel_mean = pixel_mean.detach().cpu().view(-1)
        self.pixel_std = pixel_std.detach().cpu().view(-1)
        self.seed, self.masks_per_image = seed, masks_per_image
        self.flip, self.min_crop, self.copy_paste = flip, min_crop, copy_paste

    def __len__(self) -> int:
        return len(self.image_ids)

    def __getitem__(self, key: Tuple[int, int]) -> Dict[str, torch.Tensor]:
        item, epoch = key
        rng = np.random.default_rng([DATA_STREAM, self.seed, item, epoch])
        image, masks = self._read(item)
        image, masks = _crop(image, masks, rng, self.min_crop)
        if rng.random() < self.copy_paste and len(self.image_ids) > 1:
            other = (item + 1 + int(rng.integers(len(self.image_ids) - 1))) % len(self.image_ids)
            image, masks = _paste(image, masks, *self._read(other))
        if rng.random() < self.flip:
            image, masks = image[:, ::-1], masks[:, :, ::-1]
        x, input_size = sam_input(np.ascontiguousarray(image), self.pixel_mean, self.pixel_std, self.img_size)
        low, boxes = _low_res_masks(masks, input_size, self.img_size)
        keep = np.flatnonzero(low.reshape(len(low), -1).any(axis=1))
        if len(keep) > self.masks_per_image:
            keep = np.sort(rng.choice(keep, self.masks_per_image, replace=False))
        if len(keep) == 0:  # every instance thinner than a low-res cell: the whole mask is its cell
            keep, low = np.arange(1), _at_least_one_cell(low[:1], boxes[:1])
        return {"image": x, "input_size": torch.tensor(input_size), "masks": torch.from_numpy(low[keep]),
                "boxes": torch.from_numpy(boxes[keep])}

    def _read(self, item: int) -> Tuple[np.ndarray, np.ndarray]:
        """H x W x 3 uint8 pixels as stored (as the annotations are) and N x H x W bool non-empty masks."""
        image_id = self.image_ids[item]
        image = load_image(self.dataset.image_path(image_id), exif=False)
        expected = self.dataset.original_size(image_id)
        if image.shape[:2] != expected:
            raise BiglSamError(f"{self.dataset.image_path(image_id)}: image is {image.shape[0]}x{image.shape[1]} "
                               f"(HxW), the annotations say {expected[0]}x{expected[1]}")
        masks = [i.mask for i in self.dataset.instances(image_id) if i.mask.any()]
        if not masks:
            raise BiglSamError(f"{self.dataset.annotations_path}: image {image_id} has instances, but every mask "
                               "is empty (polygons thinner than a pixel)")
        return image, np.stack(masks)


def collate(samples: List[dict]) -> dict:
    """Images and sizes stacked; masks and boxes as lists (each image has its own number of instances)."""
    return {"image": torch.stack([s["image"] for s in samples]),
            "input_size": torch.stack([s["input_size"] for s in samples]),
            "masks": [s["masks"] for s in samples], "boxes": [s["boxes"] for s in samples]}


def _crop(image: np.ndarray, masks: np.ndarray, rng: np.random.Generator, min_crop: float):
    H, W = image.shape[:2]
    h = max(1, round(H * rng.uniform(min_crop, 1.0)))
    w = max(1, round(W * rng.uniform(min_crop, 1.0)))
    top, left = int(rng.integers(0, H - h + 1)), int(rng.integers(0, W - w + 1))
    cropped = masks[:, top : top + h, left : left + w]
    if not cropped.any():
        return image, masks
    return image[top : top + h, left : left + w], cropped[cropped.any(axis=(1, 2))]


def _paste(image: np.ndarray, masks: np.ndarray, other: np.ndarray, other_masks: np.ndarray):
    """`other`'s instances resized to `image`'s size and pasted at the same relative place, on top."""
    h, w = image.shape[:2]
    other = cv2.resize(other, (w, h), interpolation=cv2.INTER_LINEAR)
    pasted = np.stack([cv2.resize(m.astype(np.uint8), (w, h), interpolation=cv2.INTER_NEAREST) > 0
                       for m in other_masks])
    pasted = pasted[pasted.any(axis=(1, 2))]
    if len(pasted) == 0:
        return image, masks
    cover = pasted.any(axis=0)
    image = np.where(cover[:, :, None], other, image)
    masks = masks & ~cover
    return image, np.concatenate([masks[masks.any(axis=(1, 2))], pasted])


def _low_res_masks(masks: np.ndarray, input_size: Tuple[int, int], img_size: int):
    """N x H x W bool -> N x S/4 x S/4 bool (a cell is in the mask when half of its input pixels are) and
    N x 4 float32 tight boxes in input pixels, the masks resized to `input_size` (h, w) as the image is."""
    h, w = input_size
    side = img_size // LOW_RES_SCALE
    low = np.zeros((len(masks), side, side), dtype=bool)
    boxes = np.zeros((len(masks), 4), dtype=np.float32)
    for n, mask in enumerate(masks):
        resized = cv2.resize(mask.astype(np.float32), (w, h), interpolation=cv2.INTER_LINEAR)
        padded = np.zeros((img_size, img_size), dtype=np.float32)
        padded[:h, :w] = resized
        cells = padded.reshape(side, LOW_RES_SCALE, side, LOW_RES_SCALE).mean(axis=(1, 3))
        low[n] = cells >= 0.5
        ys, xs = np.nonzero(resized >= 0.5)
        if len(xs):
            boxes[n] = (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
    return low, boxes


def _at_least_one_cell(low: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """The cell under the box centre, for an instance too thin to cover half of any cell."""
    low = low.copy()
    x = int((boxes[0, 0] + boxes[0, 2]) / 2) // LOW_RES_SCALE
    y = int((boxes[0, 1] + boxes[0, 3]) / 2) // LOW_RES_SCALE
    low[0, min(y, low.shape[1] - 1), min(x, low.shape[2] - 1)] = True
    return low
