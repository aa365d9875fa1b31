"""An interactive-segmentation set as the benchmarks ship it: a folder of images and a folder of masks with
the same file stems (GrabCut, Berkeley, DAVIS, COCO-MVal in RITM's layout).

A mask pixel > `object_above` (0) belongs to an object, except pixels equal to `ignore_value` (GrabCut's
128-valued band between object and background), which count nowhere. A palette or grayscale mask with several
values gives one object per value (`union=True`: one object of all of them); an RGB mask gives one object per
colour. Everything is checked when the set is opened: a missing or extra mask, a mask of another size than its
image, a mask without any object pixel are each one error line before any work starts.

`DATASETS` names the published benchmarks' rules, as RITM's dataset classes read them
(SamsungLabs/ritm_interactive_segmentation, isegm/data/datasets/, and `get_dataset` in
isegm/inference/utils.py), so that `eval interactive --dataset NAME` needs no option to be remembered.
"""

from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..errors import BiglSamError
from ..images import IMAGE_SUFFIXES

MAX_MASK_VALUE = 255  # the benchmarks' masks are 8-bit (palette or gray levels)
MASK_SUFFIXES = (".png", ".bmp", ".tif", ".tiff", ".gif")


@dataclass
class MaskObject:
    """One object to segment: its id within the image (the mask value, or 0 for a union), H x W bool mask
    and H x W bool pixels to ignore (None: none)."""

    object_id: int
    mask: np.ndarray
    ignore: Optional[np.ndarray]


@dataclass(frozen=True)
class DatasetPreset:
    """One benchmark's mask rule (the `MaskFolders` options), the folder names it ships with (images, masks)
    and where the rule comes from."""

    ignore_value: Optional[int]
    union: bool
    object_above: int
    folders: Tuple[str, str]
    source: str


DATASETS = {
    # grabcut.py: value 128 is ignored, values above 128 are the one object, the rest background.
    "grabcut": DatasetPreset(128, True, 128, ("data_GT", "boundary_GT"), "isegm/data/datasets/grabcut.py"),
    "berkeley": DatasetPreset(128, True, 128, ("images", "masks"), "isegm/data/datasets/berkeley.py (GrabCut's reader)"),
    # davis.py: every non-zero value of a frame is one object (DAVIS-345 is scored per frame, not per object).
    "davis": DatasetPreset(None, True, 0, ("img", "gt"), "isegm/data/datasets/davis.py"),
    "coco-mval": DatasetPreset(None, True, 0, ("img", "gt"), "isegm/data/datasets/davis.py (get_dataset reads COCO_MVal with it)"),
}


class MaskFolders:
    """Images under `images_dir`, masks under `masks_dir`, paired by file stem, in stem order. preset: the
    `DATASETS` name whose rule it follows (`with_preset`), if any."""

    preset: Optional[str] = None

    def __init__(self, images_dir, masks_dir, ignore_value: Optional[int] = None, union: bool = False,
                 object_above: int = 0) -> None:
        self.images_dir, self.masks_dir = Path(images_dir), Path(masks_dir)
        if ignore_value is not None and not 1 <= ignore_value <= MAX_MASK_VALUE:
            raise BiglSamError(f"--ignore-value must be a value of an 8-bit mask in 1..{MAX_MASK_VALUE} "
                               f"(0 is the background), got {ignore_value}")
        self.ignore_value, self.union, self.object_above = ignore_value, union, object_above
        images, masks = _by_stem(self.images_dir, IMAGE_SUFFIXES, "image"), _by_stem(self.masks_dir, MASK_SUFFIXES, "mask")
        _check_pairs(self.images_dir, self.masks_dir, images, masks)
        self.stems = sorted(images)
        self.images, self.masks = images, masks
        for stem in self.stems:
            self._check(stem)

    @classmethod
    def with_preset(cls, images_dir, masks_dir, name: str) -> "MaskFolders":
        """The folders read under the rule of `DATASETS[name]`."""
        rule = DATASETS[name]
        folders = cls(images_dir, masks_dir, rule.ignore_value, rule.union, rule.object_above)
        folders.preset = name
        return folders

    def report_entry(self, image_ids: List[int]) -> dict:
        """The folders and their mask rule as a report names them, and the selection's size."""
        return {"images": str(self.images_dir), "masks": str(self.masks_dir), "preset": self.preset,
                "preset_source": None if self.preset is None else DATASETS[self.preset].source,
                "ignore_value": self.ignore_value, "union": self.union, "object_above": self.object_above,
                "selected_images": len(image_ids)}

    def image_ids(self, max_images: Optional[int] = None) -> List[int]:
        """Image ids are positions in stem order; the first `max_images` of them."""
        if max_images is not None and max_images < 1:
            raise BiglSamError(f"--max-images must be at least 1, got {max_images}")
        return list(range(len(self.stems)))[:max_images]

    def image_path(self, image_id: int) -> Path:
        return self.images[self.stems[image_id]]

    def original_size(self, image_id: int) -> Tuple[int, int]:
        """(height, width) of the mask, which the image must have."""
        with Image.open(self.masks[self.stems[image_id]]) as mask:
            return mask.height, mask.width

    def objects(self, image_id: int) -> List[MaskObject]:
        values = _read_values(self.masks[self.stems[image_id]])
        ignore = None if self.ignore_value is None else values == self.ignore_value
        if ignore is not None and not ignore.any():
            ignore = None
        ids = [int(v) for v in np.unique(values[self._object_pixels(values)])]
        if self.union:
            return [MaskObject(0, np.isin(values, ids), ignore)]
        return [MaskObject(i, values == i, ignore) for i in ids]

    def _check(self, stem: str) -> None:
        mask_path, image_path = self.masks[stem], self.images[stem]
        try:
            with Image.open(image_path) as image:
                image_size = image.size
        except (UnidentifiedImageError, OSError) as err:
            raise BiglSamError(f"{image_path}: not a readable image ({err})") from None
        values = _read_values(mask_path)
        if (values.shape[1], values.shape[0]) != image_size:
            raise BiglSamError(f"{mask_path}: mask is {values.shape[0]}x{values.shape[1]} (HxW), its image "
                               f"{image_path.name} is {image_size[1]}x{image_size[0]}")
        if not self._object_pixels(values).any():
            raise BiglSamError(f"{mask_path}: empty mask (no object pixel)")

    def _object_pixels(self, values: np.ndarray) -> np.ndarray:
        """H x W values -> H x W bool: the pixels of some object."""
        objects = values > self.object_above
        return objects if self.ignore_value is None else objects & (values != self.ignore_value)


def _by_stem(folder: Path, suffixes, kind: str) -> Dict[str, Path]:
    if not folder.is_dir():
        raise BiglSamError(f"{folder}: {kind} folder not found")
    files: Dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.suffix.lower() not in suffixes or path.name.startswith("."):
            continue
        if path.stem in files:
            raise BiglSamError(f"{folder}: two {kind} files with the stem {path.stem!r} ({files[path.stem].name}, {path.name})")
        files[path.stem] = path
    if not files:
        raise BiglSamError(f"{folder}: no {kind} files ({', '.join(suffixes)})")
    return files


def _check_pairs(images_dir: Path, masks_dir: Path, images: dict, masks: dict) -> None:
    without_mask = sorted(set(images) - set(masks))
    without_image = sorted(set(masks) - set(images))
    if without_mask:
        raise BiglSamError(f"{masks_dir}: no mask for {len(without_mask)} image(s) of {images_dir}, e.g. "
                           f"{images[without_mask[0]].name} (masks are matched by file stem)")
    if without_image:
        raise BiglSamError(f"{masks_dir}: {len(without_image)} mask(s) without an image in {images_dir}, e.g. "
                           f"{masks[without_image[0]].name} (masks are matched by file stem; images are "
                           f"{', '.join(IMAGE_SUFFIXES)})")


def _read_values(path: Path) -> np.ndarray:
    """H x W integer object values: palette indexes, gray levels, or one id per RGB colour (black is 0)."""
    try:
        with Image.open(path) as mask:
            mask.load()
            if mask.mode in ("P", "L", "1", "I", "I;16"):
                return np.asarray(mask.convert("L") if mask.mode == "1" else mask).astype(np.int64)
            rgb = np.asarray(mask.convert("RGB")).astype(np.int64)
    except (UnidentifiedImageError, OSError) as err:
        raise BiglSamError(f"{path}: not a readable mask image ({err})") from None
    if (rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all():
        return rgb[..., 0]
    return rgb[..., 0] << 16 | rgb[..., 1] << 8 | rgb[..., 2]
