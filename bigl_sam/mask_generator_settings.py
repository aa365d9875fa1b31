"""The settings of segment-everything, declared once: `SamAutomaticMaskGenerator`'s constructor arguments
and defaults, and their checks. `bigl_sam.mask_generator` runs them; `bigl-sam amg` makes its options of
them (`bigl_sam.amg.settings`); the demo's "Everything" runs SAM's defaults. Imports no torch, so that
`--help` does without it."""

import math
import os
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any, Dict, Union

from .errors import BiglSamError

if TYPE_CHECKING:  # annotations only: --help imports no torch
    import torch

# More crops than this (crop_n_layers=3 makes 1 + 4 + 16 + 64 = 85) is refused: each crop is one more encoder
# pass and one more point grid.
MAX_CROPS = 85
OUTPUT_MODES = ("binary_mask", "uncompressed_rle", "coco_rle")
# `points_per_batch="auto"`: as many points as fit in this share of the device's free memory, at most
# MAX_AUTO_POINTS (the default 32 x 32 grid in one batch). A point's working set in SAM's mask decoder is
# DECODER_EMBEDDINGS_PER_POINT image embeddings (float32, C x h x w: 28 MiB for SAM's 256 x 64 x 64; the
# peak of the decoder's live tensors, measured).
AUTO = "auto"
AUTO_MEMORY_SHARE = 0.25
MAX_AUTO_POINTS = 1024
DECODER_EMBEDDINGS_PER_POINT = 7


class AmgSettingsError(BiglSamError, ValueError):
    """A generator setting out of its range."""


@dataclass(frozen=True)
class AmgSettings:
    """SAM's generator settings, with SAM's defaults (its `SamAutomaticMaskGenerator.__init__`)."""

    points_per_side: int = 32
    points_per_batch: Union[int, str] = 64  # or AUTO
    pred_iou_thresh: float = 0.88
    stability_score_thresh: float = 0.95
    stability_score_offset: float = 1.0
    box_nms_thresh: float = 0.7
    crop_n_layers: int = 0
    crop_nms_thresh: float = 0.7
    crop_overlap_ratio: float = 512 / 1500
    crop_n_points_downscale_factor: int = 1
    min_mask_region_area: int = 0

    def __post_init__(self) -> None:
        for name in ("points_per_side", "crop_n_points_downscale_factor"):
            _check(name, getattr(self, name), int, 1, math.inf)
        if self.points_per_batch != AUTO:
            try:
                _check("points_per_batch", self.points_per_batch, int, 1, math.inf)
            except AmgSettingsError:
                raise AmgSettingsError(f"points_per_batch must be a whole number of at least 1 or {AUTO}, got "
                                       f"{self.points_per_batch!r}") from None
        for name in ("crop_n_layers", "min_mask_region_area"):
            _check(name, getattr(self, name), int, 0, math.inf)
        for name in ("pred_iou_thresh", "stability_score_thresh", "box_nms_thresh", "crop_nms_thresh"):
            _check(name, getattr(self, name), float, 0.0, 1.0)
        _check("stability_score_offset", self.stability_score_offset, float, 0.0, math.inf)
        _check("crop_overlap_ratio", self.crop_overlap_ratio, float, 0.0, 1.0)
        crops = sum(4**layer for layer in range(self.crop_n_layers + 1))
        if crops > MAX_CROPS:
            raise AmgSettingsError(f"crop_n_layers {self.crop_n_layers} makes {crops} crops per image; the limit is "
                                   f"{MAX_CROPS} (crop_n_layers at most 3)")
        points = self.points_per_side // self.crop_n_points_downscale_factor**self.crop_n_layers
        if points < 1:
            raise AmgSettingsError(
                f"points_per_side {self.points_per_side} leaves no point in crop layer {self.crop_n_layers} "
                f"(divided by crop_n_points_downscale_factor {self.crop_n_points_downscale_factor} per layer)")

    def as_kwargs(self) -> Dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def crop_boxes(self, height: int, width: int):
        """The crop boxes (x0, y0, x1, y1 pixels) and their layers, as SAM's generator makes them."""
        from segment_anything.utils.amg import generate_crop_boxes

        return generate_crop_boxes((height, width), self.crop_n_layers, self.crop_overlap_ratio)


def auto_points_per_batch(embedding_bytes: int, device: "torch.device") -> int:
    """The point batch for `points_per_batch="auto"`: the points whose decoder working set
    (DECODER_EMBEDDINGS_PER_POINT x `embedding_bytes`, one image embedding's size) fits in AUTO_MEMORY_SHARE of
    `device`'s free memory (the GPU's, or the system's available memory), between 1 and MAX_AUTO_POINTS."""
    free_bytes = free_memory_bytes(device)
    if free_bytes is None:  # unknown: SAM's default
        return AmgSettings.points_per_batch
    points = int(AUTO_MEMORY_SHARE * free_bytes // (DECODER_EMBEDDINGS_PER_POINT * embedding_bytes))
    return max(1, min(MAX_AUTO_POINTS, points))


def free_memory_bytes(device: "torch.device"):
    """Free memory of `device` in bytes: the GPU's free memory, or the system's available memory for the CPU
    (None where the system does not say)."""
    if device.type == "cuda":
        import torch

        return torch.cuda.mem_get_info(device)[0]
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def _check(name: str, value, kind: type, low: float, high: float) -> None:
    is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind is int and not (is_number and float(value).is_integer()):
        raise AmgSettingsError(f"{name} must be a whole number, got {value!r}")
    if is_number and not math.isfinite(value):
        raise AmgSettingsError(f"{name} must be a finite number, got {value!r}")
    if not (is_number and low <= value <= high):
        span = f"at least {low:g}" if high == math.inf else f"in [{low:g}, {high:g}]"
        raise AmgSettingsError(f"{name} must be {span}, got {value!r}")
