"""A COCO instances file, read with pycocotools: which images to evaluate and their instances as masks.

Crowd annotations and those with `area < 1` are not instances of the protocol; they are counted, not scored.
"""

import contextlib
import io
import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
from pycocotools.coco import COCO

from ..errors import BiglSamError
from .protocol import box_xywh_to_xyxy

MIN_AREA = 1.0


@dataclass
class Instance:
    """One scored object: its COCO annotation id, `area` field, XYXY box, and H x W bool mask."""

    ann_id: int
    area: float
    box: Tuple[float, float, float, float]
    mask: np.ndarray


class CocoInstances:
    """The annotations of `annotations_path` for the images under `images_dir`."""

    def __init__(self, annotations_path, images_dir) -> None:
        self.annotations_path = Path(annotations_path)
        self.images_dir = Path(images_dir)
        if not self.images_dir.is_dir():
            raise BiglSamError(f"{self.images_dir}: image folder not found")
        self.coco = _read_coco(self.annotations_path)

    def image_ids(self, max_images: Optional[int] = None) -> List[int]:
        """The ids of images with at least one scored instance, in id order, the first `max_images` of them."""
        ids = sorted(i for i in self.coco.imgs if any(_is_scored(a) for a in self._annotations(i)))
        if max_images is not None:
            if max_images < 1:
                raise BiglSamError(f"--max-images must be at least 1, got {max_images}")
            ids = ids[:max_images]
        if not ids:
            raise BiglSamError(f"{self.annotations_path}: no image with a scorable (non-crowd, area >= 1) annotation")
        return ids

    def skipped_annotations(self, image_ids: Sequence[int]) -> Dict[str, int]:
        """How many annotations of these images the protocol leaves out, and why."""
        reasons = Counter(_skip_reason(a) for i in image_ids for a in self._annotations(i))
        return {"iscrowd": reasons["iscrowd"], "area_below_1": reasons["area_below_1"]}

    def image_path(self, image_id: int) -> Path:
        return self.images_dir / self.coco.imgs[image_id]["file_name"]

    def image_size(self, image_id: int) -> Tuple[int, int]:
        """(height, width) as the annotations say."""
        info = self.coco.imgs[image_id]
        return int(info["height"]), int(info["width"])

    def instances(self, image_id: int) -> List[Instance]:
        """The scored instances of one image, masks rasterised at the annotated image size."""
        return [self._instance(a) for a in self._annotations(image_id) if _is_scored(a)]

    def _annotations(self, image_id: int) -> list:
        return self.coco.imgToAnns.get(image_id, [])

    def _instance(self, ann: dict) -> Instance:
        try:
            mask = self.coco.annToMask(ann).astype(bool)
            box = box_xywh_to_xyxy(ann["bbox"])
        except (KeyError, TypeError, ValueError, IndexError) as err:
            raise BiglSamError(f"{self.annotations_path}: annotation {ann.get('id')} is malformed ({err!r})") from None
        return Instance(ann_id=int(ann["id"]), area=float(ann["area"]), box=box, mask=mask)


def _read_coco(path: Path) -> COCO:
    if not path.is_file():
        raise BiglSamError(f"{path}: annotation file not found")
    try:
        dataset = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise BiglSamError(f"{path}: malformed JSON ({err})") from None
    if not isinstance(dataset, dict) or not all(isinstance(dataset.get(k), list) for k in ("images", "annotations")):
        raise BiglSamError(f"{path}: not a COCO instances file (needs 'images' and 'annotations' lists)")
    coco = COCO()
    coco.dataset = dataset
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress on stdout
            coco.createIndex()
    except (KeyError, TypeError) as err:
        raise BiglSamError(f"{path}: COCO entry without the field {err}") from None
    return coco


def _skip_reason(ann: dict) -> Optional[str]:
    if ann.get("iscrowd", 0):
        return "iscrowd"
    if float(ann.get("area", 0.0)) < MIN_AREA:
        return "area_below_1"
    return None


def _is_scored(ann: dict) -> bool:
    return _skip_reason(ann) is None
