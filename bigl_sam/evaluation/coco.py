"""A COCO instances file, read with pycocotools: which images to evaluate and their instances as masks.

Annotations with `area < 1` (unless the protocol sets another `min_area`), and crowd annotations unless the
protocol scores them, are counted, not scored.
Every image entry and annotation is checked when the file is read, so a malformed one is one error line
naming its id before any work starts.
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
from ..weights import sha256_of
from .protocol import box_xywh_to_xyxy

MIN_AREA = 1.0

# How far (pixels) a ground-truth box may reach past its image's border: boxes computed from polygon
# coordinates can round past it by a fraction of a pixel.
BOX_SLACK_PIXELS = 1.0


@dataclass
class Instance:
    """One scored object: its COCO annotation id, `area` field, XYXY box, and H x W bool mask."""

    ann_id: int
    area: float
    box: Tuple[float, float, float, float]
    mask: np.ndarray


class CocoInstances:
    """The annotations of `annotations_path` for the images under `images_dir`."""

    def __init__(self, annotations_path, images_dir, score_crowd: bool = False, min_area: float = MIN_AREA) -> None:
        self.annotations_path = Path(annotations_path)
        self.images_dir = Path(images_dir)
        self.score_crowd, self.min_area = score_crowd, min_area
        if not self.images_dir.is_dir():
            raise BiglSamError(f"{self.images_dir}: image folder not found")
        self.coco = _read_coco(self.annotations_path)
        self.sha256 = sha256_of(self.annotations_path, progress=False)

    def image_ids(self, max_images: Optional[int] = None, with_instances: bool = True,
                  file_order: bool = False) -> List[int]:
        """The ids of images (with at least one scored instance, unless `with_instances` is False), in id
        order (or in the file's, with `file_order`), the first `max_images` of them."""
        ids = [i for i in self.coco.imgs if not with_instances or any(self._is_scored(a) for a in self._annotations(i))]
        ids = ids if file_order else sorted(ids)
        if max_images is not None:
            if max_images < 1:
                raise BiglSamError(f"--max-images must be at least 1, got {max_images}")
            ids = ids[:max_images]
        if not ids:
            crowd = "" if self.score_crowd else "non-crowd, "
            raise BiglSamError(f"{self.annotations_path}: no image with a scorable ({crowd}area >= 1) annotation")
        return ids

    def report_entry(self, image_ids: Sequence[int]) -> dict:
        """The dataset as a report names it: the files, the annotation file's sha256, the selection's size."""
        return {"annotations": str(self.annotations_path), "annotations_sha256": self.sha256,
                "run_hash_covers": "the annotation file's content (sha256), not its path",
                "images": str(self.images_dir), "selected_images": len(image_ids)}

    def skipped_annotations(self, image_ids: Sequence[int]) -> Dict[str, int]:
        """How many annotations of these images the protocol leaves out, and why."""
        reasons = Counter(self._skip_reason(a) for i in image_ids for a in self._annotations(i))
        return {"iscrowd": reasons["iscrowd"], "area_below_1": reasons["area_below_1"]}

    def image_path(self, image_id: int) -> Path:
        return self.images_dir / self.coco.imgs[image_id]["file_name"]

    def original_size(self, image_id: int) -> Tuple[int, int]:
        """(height, width) as the annotations say."""
        info = self.coco.imgs[image_id]
        return int(info["height"]), int(info["width"])

    def box_xywh(self, ann_id: int) -> List[float]:
        """An annotation's `bbox` field as it is written: [x, y, width, height]."""
        return self.coco.anns[ann_id]["bbox"]

    def instances(self, image_id: int) -> List[Instance]:
        """The scored instances of one image, masks rasterised at the annotated image size."""
        return [self._instance(a) for a in self._annotations(image_id) if self._is_scored(a)]

    def _annotations(self, image_id: int) -> list:
        return self.coco.imgToAnns.get(image_id, [])

    def _instance(self, ann: dict) -> Instance:
        try:
            mask = self.coco.annToMask(ann).astype(bool)
            box = box_xywh_to_xyxy(ann["bbox"])
        except (KeyError, TypeError, ValueError, IndexError) as err:
            raise BiglSamError(f"{self.annotations_path}: annotation {ann.get('id')} is malformed ({err!r})") from None
        return Instance(ann_id=int(ann["id"]), area=float(ann["area"]), box=box, mask=mask)

    def _skip_reason(self, ann: dict) -> Optional[str]:
        if ann.get("iscrowd", 0) and not self.score_crowd:
            return "iscrowd"
        if float(ann.get("area", 0.0)) < self.min_area:
            return "area_below_1"
        return None

    def _is_scored(self, ann: dict) -> bool:
        return self._skip_reason(ann) is None


def read_json(path: Path, what: str):
    """The parsed JSON file; a missing or malformed file is one error line naming it as `what`."""
    if not path.is_file():
        raise BiglSamError(f"{path}: {what} not found")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise BiglSamError(f"{path}: malformed JSON ({err})") from None


def _read_coco(path: Path) -> COCO:
    dataset = read_json(path, "annotation file")
    if not isinstance(dataset, dict) or not all(isinstance(dataset.get(k), list) for k in ("images", "annotations")):
        raise BiglSamError(f"{path}: not a COCO instances file (needs 'images' and 'annotations' lists)")
    _check_entries(path, dataset)
    coco = COCO()
    coco.dataset = dataset
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress on stdout
            coco.createIndex()
    except (KeyError, TypeError) as err:
        raise BiglSamError(f"{path}: COCO entry without the field {err}") from None
    return coco


def _check_entries(path: Path, dataset: dict) -> None:
    """One error line for the first malformed image entry or annotation, naming its id."""
    images = {}
    for entry in dataset["images"]:
        _check_image(path, entry)
        earlier = images.get(entry["id"])
        if earlier is not None:
            raise BiglSamError(f"{path}: image id {entry['id']} is given twice ({earlier['file_name']} and "
                               f"{entry['file_name']})")
        images[entry["id"]] = entry
    for ann in dataset["annotations"]:
        _check_annotation(path, ann, images)


def _check_image(path: Path, entry) -> None:
    if not isinstance(entry, dict) or "id" not in entry:
        raise BiglSamError(f"{path}: an image entry without an id ({str(entry)[:80]})")
    name = f"{path}: image {entry['id']}"
    if not isinstance(entry.get("file_name"), str) or not entry["file_name"]:
        raise BiglSamError(f"{name} has no file_name")
    for key in ("height", "width"):
        value = entry.get(key)
        if not _is_integer(value) or value < 1:
            raise BiglSamError(f"{name}: {key} must be a positive integer, got {value!r}")


def _check_annotation(path: Path, ann, images: dict) -> None:
    if not isinstance(ann, dict) or "id" not in ann:
        raise BiglSamError(f"{path}: an annotation without an id ({str(ann)[:80]})")
    name = f"{path}: annotation {ann['id']}"
    image = images.get(ann.get("image_id"))
    if image is None:
        raise BiglSamError(f"{name} names image {ann.get('image_id')!r}, which is not in 'images'")
    area = ann.get("area")
    if not _is_number(area):
        raise BiglSamError(f"{name}: area must be a number, got {area!r}")
    bbox = ann.get("bbox")
    if not isinstance(bbox, list) or len(bbox) != 4 or not all(_is_number(v) for v in bbox):
        raise BiglSamError(f"{name}: bbox must be 4 numbers [x, y, width, height], got {bbox!r}")
    _check_box_in_image(name, bbox, image)
    segmentation = ann.get("segmentation")
    if isinstance(segmentation, list):
        if not segmentation:
            raise BiglSamError(f"{name}: empty segmentation (no polygon; give polygons or an RLE)")
        for polygon in segmentation:
            if not isinstance(polygon, list) or len(polygon) < 6 or len(polygon) % 2 or not all(_is_number(v) for v in polygon):
                count = len(polygon) if isinstance(polygon, list) else type(polygon).__name__
                raise BiglSamError(f"{name}: a polygon needs an even number (at least 6) of coordinates, got {count}")
    elif isinstance(segmentation, dict):
        size = segmentation.get("size")
        if not isinstance(segmentation.get("counts"), (str, list)):
            raise BiglSamError(f"{name}: RLE without counts (a string or a list of run lengths)")
        if size != [image["height"], image["width"]]:
            raise BiglSamError(f"{name}: RLE of size {size!r}, but image {image['id']} is "
                               f"[{image['height']}, {image['width']}] (height, width)")
    else:
        raise BiglSamError(f"{name}: segmentation must be polygons or an RLE, got {type(segmentation).__name__}")


def _check_box_in_image(name: str, bbox: List[float], image: dict) -> None:
    """The box [x, y, width, height] has no negative size and lies in its image, up to BOX_SLACK_PIXELS
    (boxes computed from polygons may round past the border)."""
    x, y, width, height = bbox
    if width < 0 or height < 0:
        raise BiglSamError(f"{name}: bbox {bbox} has a negative width or height")
    if (min(x, y) < -BOX_SLACK_PIXELS or x + width > image["width"] + BOX_SLACK_PIXELS
            or y + height > image["height"] + BOX_SLACK_PIXELS):
        raise BiglSamError(f"{name}: bbox {bbox} [x, y, width, height] reaches outside image {image['id']} "
                           f"({image['width']} x {image['height']} pixels, width x height)")


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value == value


def _is_integer(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
