"""The simulated user: where each click goes, given the ground truth and the prediction so far.

One simulator serves every protocol; a `ClickRule` says where they differ:

- `first`: `interior` clicks the object pixel farthest from its boundary (the maximum of the Euclidean distance
  transform of the mask padded by one background pixel, so the image edge counts as boundary; the first such
  pixel in raster order). This is RITM's first click, which is its corrective click on an empty prediction
  (SamsungLabs/ritm_interactive_segmentation, isegm/inference/clicker.py; the same code is in
  mit-han-lab/efficientvit, applications/efficientvit_sam/sam_eval_utils.py). `random` clicks a pixel of
  the object drawn uniformly (EfficientSAM's point prompt as its paper describes it; its code is not public).
  EdgeSAM's points (an approximate distance transform and random corrections, on resized masks) are not
  this simulator's: they are in `edgesam.py`, with the rest of its protocol.
- `correction`: where the next click goes once there is a prediction. `distance` is RITM's rule: compute the
  distance transform of the missed region (ground truth not predicted) and of the false region (predicted,
  not ground truth), both padded as above and both zero at pixels already clicked; click the larger maximum,
  positive on the missed region, negative on the false one; a tie goes to the false region. `area` compares
  the regions' pixel counts instead (a tie goes to the missed region) and clicks the larger one's interior
  point (no preset uses it).
- `pixel_centre`: the prompt coordinate of pixel (x, y). RITM and EfficientViT-SAM hand SAM the
  integer index (x, y); SAM's coordinate frame puts that pixel's centre at (x + 0.5, y + 0.5), which is what
  `pixel_centre=True` gives (no preset uses it).
- `on_exact`: what happens when nothing is left to correct (the prediction is exact outside the ignore mask,
  or every error pixel is clicked). `stop`: no click, the mask keeps its result. `corner`: a negative click
  at pixel (0, 0), which is what RITM's clicker code does there (both maxima are 0, so it takes the first
  pixel of the false region's all-zero distance map); EfficientViT-SAM's evaluation runs that click. Under
  `corner` an empty object mask is clicked too: its first click is that negative one.

Pixels under an ignore mask (GrabCut's 128-valued band) are in neither error region, as in RITM's `get_iou`
and clicker. Random draws come from a generator seeded per instance, so a click sequence is the same
whatever the sharding, batching or resume.
"""

from dataclasses import asdict, dataclass
from typing import NamedTuple, Optional

import numpy as np

from ..errors import BiglSamError

FIRST_CLICKS = ("interior", "random")
CORRECTIONS = ("distance", "area")
ON_EXACT = ("stop", "corner")


class Click(NamedTuple):
    x: int
    y: int
    positive: bool


@dataclass(frozen=True)
class ClickRule:
    first: str = "interior"
    correction: str = "distance"
    pixel_centre: bool = False
    on_exact: str = "stop"

    def __post_init__(self) -> None:
        if self.first not in FIRST_CLICKS:
            raise BiglSamError(f"unknown first click {self.first!r}; choose one of {', '.join(FIRST_CLICKS)}")
        if self.correction not in CORRECTIONS:
            raise BiglSamError(f"unknown correction {self.correction!r}; choose one of {', '.join(CORRECTIONS)}")
        if self.on_exact not in ON_EXACT:
            raise BiglSamError(f"unknown on_exact {self.on_exact!r}; choose one of {', '.join(ON_EXACT)}")

    @property
    def offset(self) -> float:
        """What is added to a pixel index to get SAM's prompt coordinate."""
        return 0.5 if self.pixel_centre else 0.0

    def to_dict(self) -> dict:
        return asdict(self)


def distance_to_boundary(region: np.ndarray) -> np.ndarray:
    """H x W bool -> H x W float32: each region pixel's Euclidean distance to the nearest pixel outside the
    region, the image edge counting as outside (0 outside the region)."""
    import cv2  # here, not at the top: `bigl-sam eval --help` reads the presets' click rules, without OpenCV

    padded = np.pad(region.astype(np.uint8), 1)
    return cv2.distanceTransform(padded, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)[1:-1, 1:-1]


def interior_point(mask: np.ndarray):
    """H x W bool -> (x, y) of the mask pixel farthest from its boundary (first in raster order on a tie).
    It lies inside the mask whatever its shape, a ring or a C included."""
    if not mask.any():
        raise ValueError("interior_point of an empty mask")
    y, x = np.unravel_index(int(np.argmax(distance_to_boundary(mask))), mask.shape)
    return int(x), int(y)


class Clicker:
    """The clicks on one object: `first()`, then `next(prediction)` after each decoder round.

    gt: H x W bool object mask (empty only under `on_exact="corner"` with an `interior` first click);
    ignore: H x W bool pixels that count nowhere (None: none); seed: for the random rules.
    """

    def __init__(self, gt: np.ndarray, rule: ClickRule, ignore: Optional[np.ndarray] = None, seed: int = 0) -> None:
        self.rule = rule
        self.counted = np.ones_like(gt, dtype=bool) if ignore is None else ~ignore
        self.gt = gt & self.counted
        if not self.gt.any() and (rule.on_exact == "stop" or rule.first == "random"):
            raise ValueError("Clicker on an empty object mask")
        self.not_clicked = np.ones_like(gt, dtype=bool)
        self.rng = np.random.default_rng(seed)

    def first(self) -> Click:
        if self.rule.first == "random":
            return self._record(self._draw(self.gt), True)
        return self.next(np.zeros_like(self.gt))

    def next(self, prediction: np.ndarray) -> Optional[Click]:
        """The click that corrects `prediction` (H x W bool) most by the rule. When nothing is left to correct
        (the prediction equals the object outside the ignore mask, or every error pixel is clicked): None
        under `on_exact="stop"`, a negative click at (0, 0) under `corner`."""
        missed = self.gt & ~prediction
        false = prediction & self.counted & ~self.gt
        missed_distance = distance_to_boundary(missed) * self.not_clicked
        false_distance = distance_to_boundary(false) * self.not_clicked
        if self.rule.correction == "distance":
            positive = missed_distance.max() > false_distance.max()
        else:
            positive = missed.sum() >= false.sum()
        distance = missed_distance if positive else false_distance
        if distance.max() <= 0:
            return self._nothing_to_correct()
        y, x = np.unravel_index(int(np.argmax(distance)), distance.shape)
        return self._record((int(x), int(y)), bool(positive))

    def _nothing_to_correct(self) -> Optional[Click]:
        return None if self.rule.on_exact == "stop" else self._record((0, 0), False)

    def _draw(self, region: np.ndarray):
        ys, xs = np.nonzero(region)
        k = int(self.rng.integers(len(xs)))
        return int(xs[k]), int(ys[k])

    def _record(self, xy, positive: bool) -> Click:
        x, y = xy
        self.not_clicked[y, x] = False
        return Click(x, y, positive)
