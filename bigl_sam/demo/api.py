"""The scripted endpoints, for `gradio_client` users (a client cannot send click events): `segment` (an
image and numeric prompts in, the mask out) and `everything` (an image in, every mask out). Sizes are
(height, width) pixels, as SAM's `original_size`; points and boxes are (x, y) pixels."""

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import cv2
import numpy as np
from PIL import Image

from ..errors import BiglSamError
from ..fileio import atomic_write
from ..images import load_image
from ..inference import Encoding, check_point_count, decode_click, encode_image
from .models import DemoModel
from .render import color_masks, save_mask_png, working_image


@dataclass(frozen=True)
class ApiCache:
    """One client's memory: the last image's embedding, so repeated calls on one image only decode."""

    key: str
    encoding: Encoding
    scale: float  # working size / original size


def segment(
    model: DemoModel,
    workdir: Path,
    source,
    points: Optional[Sequence] = None,
    box: Optional[Sequence] = None,
    keep_ratio: Optional[float] = None,
    cache: Optional[ApiCache] = None,
) -> Tuple[str, dict, ApiCache]:
    """Image + prompts in original pixels -> (mask PNG path, info, cache for the client's next call).

    source: the image file's path (None: no image, an error). points: [[x, y], ...] or [[x, y, label], ...]
    (label 1 object, 0 background; default 1), at most `inference.MAX_POINTS`; box: [x0, y0, x1, y1].
    The mask is the candidate with the best predicted IoU, at the image's size.
    """
    coords, labels = _parse_points(points)
    if source is None:
        raise BiglSamError("segment: no image given; send an image file with the prompts")
    original = load_image(source)
    box = _parse_box(box)
    if not coords and box is None:
        raise BiglSamError("segment: give at least one point or a box")
    _check_inside(original, coords, box)
    ratio = keep_ratio if model.is_student else None
    key = hashlib.sha1(original.tobytes() + repr((original.shape, ratio)).encode()).hexdigest()
    reused = cache is not None and cache.key == key
    if not reused:
        image, scale = working_image(original)
        cache = ApiCache(key, encode_image(model.model, image, ratio, model.encoder_dtype), scale)
    s = cache.scale
    prediction = decode_click(
        model.model,
        cache.encoding,
        [(x * s, y * s) for x, y in coords],
        labels,
        None if box is None else tuple(v * s for v in box),
    )
    mask = _resize_mask(prediction.masks[prediction.best], original.shape[:2])
    info = {
        "model": model.model_type,
        "trained": model.trained,
        "weights": model.weights_label,
        "original_size": list(original.shape[:2]),
        "scores": [round(float(v), 4) for v in prediction.scores],
        "chosen": prediction.best,
        "keep_ratio": cache.encoding.keep_ratio,
        "encoded": not reused,
        "encoder_ms": 0.0 if reused else round(cache.encoding.seconds * 1000, 1),  # this call's time only
        "decoder_ms": round(prediction.seconds * 1000, 1),
    }
    return str(save_mask_png(mask, workdir)), info, cache


def everything(handlers, workdir: Path, source, keep_ratio: Optional[float] = None) -> Tuple[str, dict]:
    """Image in, every mask out, on its own (no upload call first): `handlers.everything_masks` (the page's
    Everything, SAM's automatic mask generator) on the image as the page shows it (long side at most
    `render.MAX_SIDE`). Returns the picture with the masks coloured in (a PNG path) and info: the masks as
    COCO RLEs at `mask_size` (H, W), with their boxes (XYWH), areas and scores."""
    if source is None:
        raise BiglSamError("everything: no image given; send an image file")
    original = load_image(source)
    image, _ = working_image(original)
    masks, seconds, used = handlers.everything_masks(image, keep_ratio)
    picture = color_masks(image, [m["segmentation"] for m in masks])
    path = Path(workdir) / f"everything-{hashlib.sha1(picture.tobytes()).hexdigest()[:16]}.png"
    atomic_write(path, lambda f: Image.fromarray(picture).save(f, format="PNG", compress_level=1))
    info = {
        "model": handlers.models.main.model_type,
        "original_size": list(original.shape[:2]),
        "mask_size": list(image.shape[:2]),
        "keep_ratio": used,
        "seconds": round(seconds, 2),
        "masks": [{**{k: m[k] for k in ("bbox", "area", "predicted_iou", "stability_score")},
                   "segmentation": _coco_rle(m["segmentation"])} for m in masks],
    }
    return str(path), info


def _coco_rle(mask: np.ndarray) -> dict:
    from pycocotools import mask as mask_utils

    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}


def _resize_mask(mask: np.ndarray, size: Tuple[int, int]) -> np.ndarray:
    if mask.shape == tuple(size):
        return mask
    return cv2.resize(mask.astype(np.uint8), (size[1], size[0]), interpolation=cv2.INTER_NEAREST).astype(bool)


def _parse_points(points: Optional[Sequence]) -> Tuple[List[Tuple[float, float]], List[int]]:
    if points is None:
        return [], []
    if not isinstance(points, (list, tuple)):
        raise BiglSamError(f"segment: points is a {type(points).__name__}, expected a list of [x, y] or [x, y, label]")
    check_point_count(len(points), "segment")
    coords, labels = [], []
    for i, point in enumerate(points):
        if not isinstance(point, (list, tuple)) or len(point) not in (2, 3):
            raise BiglSamError(f"segment: point #{i + 1} is {point!r}, expected [x, y] or [x, y, label]")
        x, y, label = (*point, 1) if len(point) == 2 else point
        if label not in (0, 1):
            raise BiglSamError(f"segment: point #{i + 1} has label {label!r}, expected 1 (object) or 0 (background)")
        coords.append((_number(x, f"point #{i + 1} x"), _number(y, f"point #{i + 1} y")))
        labels.append(int(label))
    return coords, labels


def _parse_box(box: Optional[Sequence]) -> Optional[Tuple[float, float, float, float]]:
    if box is None or (isinstance(box, (list, tuple)) and not box):
        return None
    if not isinstance(box, (list, tuple)) or len(box) != 4:
        raise BiglSamError(f"segment: box is {box!r}, expected [x0, y0, x1, y1]")
    x0, y0, x1, y1 = (_number(v, "box coordinate") for v in box)
    return min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)


def _check_inside(image: np.ndarray, coords: List[Tuple[float, float]], box) -> None:
    """Prompts are in the image's pixels: 0 <= x <= width, 0 <= y <= height."""
    h, w = image.shape[:2]
    corners = [] if box is None else [("box corner", box[:2]), ("box corner", box[2:])]
    for what, (x, y) in [(f"point #{i + 1}", xy) for i, xy in enumerate(coords)] + corners:
        if not (0 <= x <= w and 0 <= y <= h):
            raise BiglSamError(f"segment: {what} ({x:g}, {y:g}) is outside the {w}x{h} image")


def _number(value, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not np.isfinite(value):
        raise BiglSamError(f"segment: {what} is {value!r}, expected a number")
    return float(value)
