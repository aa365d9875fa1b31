"""The `bigl-sam amg` options, one per generator setting (`bigl_sam.mask_generator_settings.AmgSettings`:
the settings, their defaults and checks, declared once)."""

import argparse
from dataclasses import fields
from typing import Union

from ..mask_generator_settings import AUTO, AUTO_MEMORY_SHARE, MAX_AUTO_POINTS, AmgSettings

# A run of a tiny model (random weights) that takes seconds and keeps masks: 2 x 2 prompts, thresholds that
# random weights pass (the settings of the command's own tests).
SMOKE_RUN = ("--model vit_test --points-per-side 2 --pred-iou-thresh 0.02 --stability-score-thresh 0.6 "
             "--stability-score-offset 0.02 --box-nms-thresh 1.0")
SETTING_HELP = {
    "points_per_side": "prompts per side of the point grid (N x N per crop)",
    "pred_iou_thresh": "keep masks whose predicted IoU is at least X",
    "stability_score_thresh": "keep masks whose stability score is at least X",
    "stability_score_offset": "logit offset of the stability score",
    "box_nms_thresh": "IoU of boxes above which a duplicate mask is dropped (1: keep all)",
    "crop_n_layers": "crop layers (each crop is one more encoder pass)",
    "crop_nms_thresh": "IoU of boxes above which a duplicate mask of another crop is dropped",
    "crop_overlap_ratio": "overlap of neighbouring crops, as a share of the crop",
    "crop_n_points_downscale_factor": "points per side divided by N in each crop layer",
    "min_mask_region_area": "remove holes and islands smaller than N pixels (0: off)",
}


def add_setting_arguments(parser: argparse.ArgumentParser) -> None:
    """One `--points-per-side N` style option per setting, SAM's default as the default."""
    group = parser.add_argument_group(
        "generator settings (SAM's SamAutomaticMaskGenerator, same defaults)",
        f"At SAM's defaults an image is {AmgSettings.points_per_side}^2 prompts, and random or untrained weights "
        f"(the tiny vit_test and bigl_test included) keep no mask. A smoke run that takes seconds and writes "
        f"masks: {SMOKE_RUN}")
    for f in fields(AmgSettings):
        flag = f"--{f.name.replace('_', '-')}"
        if f.name == "points_per_batch":
            group.add_argument(flag, type=_points_per_batch, default=f.default, metavar="N",
                               help=f"a number, or {AUTO}: as many as fit in {AUTO_MEMORY_SHARE:g} of the "
                                    f"device's free memory, at most {MAX_AUTO_POINTS}")
            continue
        group.add_argument(flag, type=f.type, default=f.default, metavar="N" if f.type is int else "X",
                           help=SETTING_HELP[f.name])


def _points_per_batch(text: str) -> Union[int, str]:
    """A number, AUTO, or the text as it is, for `AmgSettings` to refuse in one line."""
    try:
        return int(text)
    except ValueError:
        return text


def settings_from_args(args: argparse.Namespace) -> AmgSettings:
    return AmgSettings(**{f.name: getattr(args, f.name) for f in fields(AmgSettings)})
