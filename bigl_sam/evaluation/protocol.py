"""The fixed evaluation protocol: prompts from ground-truth masks, the click simulator, IoU and COCO's size
buckets. Everything here is pure array code, so it is tested on masks whose answer is known by construction.
"""

from dataclasses import asdict, dataclass
from typing import Tuple

import cv2
import numpy as np
import torch

from ..errors import BiglSamError

PROMPTS = ("box", "point", "clicks")
SELECTIONS = ("argmax", "oracle", "single")
# COCO's object size bounds, on the annotation's `area` field.
SMALL_MAX_AREA = 32**2
MEDIUM_MAX_AREA = 96**2
SIZE_BUCKETS = ("small", "medium", "large")


@dataclass(frozen=True)
class Protocol:
    """prompt: box | point | clicks; clicks: how many clicks in all for `clicks` (the first one included);
    select: which of SAM's outputs is scored (argmax of predicted IoU, oracle by true IoU, single-mask)."""

    prompt: str = "box"
    clicks: int = 1
    select: str = "argmax"

    def __post_init__(self) -> None:
        if self.prompt not in PROMPTS:
            raise BiglSamError(f"unknown prompt {self.prompt!r}; choose one of {', '.join(PROMPTS)}")
        if self.select not in SELECTIONS:
            raise BiglSamError(f"unknown mask selection {self.select!r}; choose one of {', '.join(SELECTIONS)}")
        if self.clicks < 1:
            raise BiglSamError(f"--clicks must be at least 1, got {self.clicks}")
        if self.prompt != "clicks" and self.clicks != 1:
            raise BiglSamError(f"--clicks {self.clicks} needs --prompt clicks (got --prompt {self.prompt})")

    @property
    def click_rounds(self) -> int:
        """How many decoder rounds a prompt takes: a box or a point is one, K clicks are K."""
        return self.clicks if self.prompt == "clicks" else 1

    def to_dict(self) -> dict:
        return asdict(self)


def size_bucket(area: float) -> str:
    """COCO's bucket for an annotation `area`: small < 32^2 <= medium < 96^2 <= large."""
    if area < SMALL_MAX_AREA:
        return "small"
    if area < MEDIUM_MAX_AREA:
        return "medium"
    return "large"


def mask_iou(pred: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    """pred, gt: ... x H x W bool -> ... IoU; two empty masks count as a perfect match (1.0)."""
    intersection = (pred & gt).sum(dim=(-2, -1)).double()
    union = (pred | gt).sum(dim=(-2, -1)).double()
    return torch.where(union > 0, intersection / union.clamp(min=1), torch.ones_like(union))


def box_xywh_to_xyxy(box) -> Tuple[float, float, float, float]:
    x, y, w, h = (float(v) for v in box)
    return x, y, x + w, y + h


def interior_point(mask: np.ndarray) -> Tuple[int, int]:
    """H x W bool -> (x, y) of the pixel farthest from the region's boundary (image edges count as
    boundary). It lies inside the mask whatever its shape, a ring or a C included."""
    if not mask.any():
        raise ValueError("interior_point of an empty mask")
    padded = np.pad(mask.astype(np.uint8), 1)
    distance = cv2.distanceTransform(padded, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)[1:-1, 1:-1]
    y, x = np.unravel_index(int(np.argmax(distance)), distance.shape)
    return int(x), int(y)


def next_click(pred: np.ndarray, gt: np.ndarray):
    """The simulated user's next click on prediction `pred` of `gt` (both H x W bool): at the interior
    point of the larger error region, positive (1) on missed pixels, negative (0) on false ones.
    Returns (x, y, label), or None when the prediction is already exact."""
    missed = gt & ~pred
    false = pred & ~gt
    if not missed.any() and not false.any():
        return None
    if missed.sum() >= false.sum():
        return (*interior_point(missed), 1)
    return (*interior_point(false), 0)
