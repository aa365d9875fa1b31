"""The evaluation protocols: which prompt, which of SAM's outputs, which click rule; IoU and COCO's size
buckets. Each preset follows one paper's published evaluation code (docs/evaluation.md has the table it
reproduces and the differences); the click simulator itself is in `clicker.py`.
"""

from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional, Tuple

from ..errors import BiglSamError
from .clicker import ClickRule

if TYPE_CHECKING:  # annotations only: `bigl-sam eval --help` reads the presets without torch
    import torch

PROMPTS = ("box", "point", "clicks")
SELECTIONS = ("argmax", "oracle", "single")
# COCO's object size bounds, on the annotation's `area` field.
SMALL_MAX_AREA = 32**2
MEDIUM_MAX_AREA = 96**2
SIZE_BUCKETS = ("small", "medium", "large")


@dataclass(frozen=True)
class Preset:
    """One paper's protocol. rule: the click simulator's (None: the preset has its own steps); feed_logits:
    whether each click round gets the previous round's low-res logits as `mask_input`; select: which output
    is scored unless --select says; score_crowd: whether `iscrowd` annotations are scored too; score_empty:
    whether an annotation whose mask covers no pixel is scored (IoU 0) rather than counted and left out;
    inclusive_buckets: whether the size buckets include both bounds (an instance of exactly 32^2 or 96^2
    pixels is in two buckets) rather than partition the instances; prompts: the prompts it defines."""

    source: str
    rule: Optional[ClickRule]
    feed_logits: bool
    select: str
    score_crowd: bool
    score_empty: bool = False
    inclusive_buckets: bool = False
    prompts: Tuple[str, ...] = PROMPTS


PRESETS = {
    # mit-han-lab/efficientvit applications/efficientvit_sam/eval_efficientvit_sam_model.py + sam_eval_utils.py
    # (EfficientViT-SAM, Tab. 2-3): RITM clicker (with its negative click at (0, 0) on an exact mask),
    # integer click coordinates, multimask output and the argmax of the predicted IoU, all clicks so far and
    # no mask input each round, crowd annotations and empty masks scored, size buckets with both bounds in.
    "efficientvit": Preset("mit-han-lab/efficientvit applications/efficientvit_sam/eval_efficientvit_sam_model.py",
                           ClickRule("interior", "distance", pixel_centre=False, on_exact="corner"),
                           feed_logits=False, select="argmax", score_crowd=True, score_empty=True,
                           inclusive_buckets=True),
    # chongzhou96/EdgeSAM evaluation/eval_mIoU.py, scripts/eval_mIoU.sh (EdgeSAM, Tab. 2-3), step by step in
    # edgesam.py: the first mask token, a point at the mask centre, corrective points drawn at random from
    # the low-res error, no mask input.
    "edgesam": Preset("chongzhou96/EdgeSAM evaluation/eval_mIoU.py", None, feed_logits=False, select="single",
                      score_crowd=False),
    # EfficientSAM (Tab. 4): one point drawn at random inside the mask; no evaluation code is public, so the
    # rest (multimask argmax, crowd not scored) is SAM's usual setting, not theirs.
    "efficientsam": Preset("EfficientSAM paper (yformer/EfficientSAM has no evaluation code)",
                           ClickRule("random", "distance", pixel_centre=False), feed_logits=False,
                           select="argmax", score_crowd=False, prompts=("box", "point")),
}
DEFAULT_PRESET = "efficientvit"
# Presets no longer offered, and what to use instead.
REMOVED_PRESETS = {"ours": "it followed no paper's protocol; --protocol efficientvit is the default"}
# Interactive segmentation (NoC) uses RITM's clicker, as RITM, SimpleClick and FocSAM evaluate. An exact mask
# keeps its result: RITM's evaluation stops an object once it reaches the target IoU, so its NoC never sees
# the clicker's (0, 0) click.
RITM_RULE = ClickRule("interior", "distance", pixel_centre=False)


def preset(name: str) -> Preset:
    """The preset `--protocol name`; an unknown or removed name is one error line."""
    if name in REMOVED_PRESETS:
        raise BiglSamError(f"--protocol {name} was removed: {REMOVED_PRESETS[name]}")
    if name not in PRESETS:
        raise BiglSamError(f"unknown --protocol {name!r}; choose one of {', '.join(PRESETS)}")
    return PRESETS[name]


@dataclass(frozen=True)
class Protocol:
    """preset: whose protocol (PRESETS); prompt: box | point | clicks; clicks: how many clicks in all for
    `clicks` (the first one included); select: which of SAM's outputs is scored (argmax of predicted IoU,
    oracle by true IoU, single-mask; None: the preset's)."""

    prompt: str = "box"
    clicks: int = 1
    select: Optional[str] = None
    preset: str = DEFAULT_PRESET

    def __post_init__(self) -> None:
        chosen = preset(self.preset)
        if self.select is None:
            object.__setattr__(self, "select", chosen.select)
        if self.prompt not in PROMPTS:
            raise BiglSamError(f"unknown prompt {self.prompt!r}; choose one of {', '.join(PROMPTS)}")
        if self.prompt not in chosen.prompts:
            raise BiglSamError(f"--protocol {self.preset} defines no --prompt {self.prompt}")
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

    @property
    def source(self) -> str:
        return PRESETS[self.preset].source

    @property
    def rule(self) -> Optional[ClickRule]:
        return PRESETS[self.preset].rule

    @property
    def feed_logits(self) -> bool:
        return PRESETS[self.preset].feed_logits

    @property
    def score_crowd(self) -> bool:
        return PRESETS[self.preset].score_crowd

    @property
    def score_empty(self) -> bool:
        return PRESETS[self.preset].score_empty

    @property
    def inclusive_buckets(self) -> bool:
        return PRESETS[self.preset].inclusive_buckets

    def to_dict(self) -> dict:
        """Everything that decides a number, for results.json and the run hash."""
        rule = None if self.rule is None else self.rule.to_dict()
        return {"preset": self.preset, "prompt": self.prompt, "clicks": self.clicks, "select": self.select,
                "click_rule": rule, "feed_logits": self.feed_logits, "score_crowd": self.score_crowd,
                "score_empty": self.score_empty, "inclusive_buckets": self.inclusive_buckets}


def size_buckets(area: float, inclusive: bool = False) -> Tuple[str, ...]:
    """COCO's buckets for an annotation `area` (pixels). Disjoint: small < 32^2 <= medium < 96^2 <= large.
    inclusive: small <= 32^2 <= medium <= 96^2 <= large, so an area of exactly 32^2 or 96^2 is in two
    (EfficientViT-SAM's `filter_results_by_area`, and COCOeval's `areaRng`)."""
    if inclusive:
        fits = (area <= SMALL_MAX_AREA, SMALL_MAX_AREA <= area <= MEDIUM_MAX_AREA, area >= MEDIUM_MAX_AREA)
    else:
        fits = (area < SMALL_MAX_AREA, SMALL_MAX_AREA <= area < MEDIUM_MAX_AREA, area >= MEDIUM_MAX_AREA)
    return tuple(bucket for bucket, fit in zip(SIZE_BUCKETS, fits) if fit)


def mask_iou(pred: "torch.Tensor", gt: "torch.Tensor", counted: Optional["torch.Tensor"] = None,
             both_empty: float = 1.0) -> "torch.Tensor":
    """pred, gt: ... x H x W bool -> ... IoU. counted (broadcastable to them): the pixels that count, e.g. all
    but GrabCut's ignore band (None: all). both_empty: the IoU of two empty masks (1.0: a perfect match;
    EfficientViT-SAM's metric, intersection / (union + 1e-7), gives 0.0)."""
    intersection, union = pred & gt, pred | gt
    if counted is not None:
        intersection, union = intersection & counted, union & counted
    intersection = intersection.sum(dim=(-2, -1)).double()
    union = union.sum(dim=(-2, -1)).double()
    return (intersection / union.clamp(min=1)).masked_fill(union == 0, both_empty)


def box_xywh_to_xyxy(box) -> Tuple[float, float, float, float]:
    x, y, w, h = (float(v) for v in box)
    return x, y, x + w, y + h
