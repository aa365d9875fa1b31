"""`eval coco`: its options, and which of its jobs they ask for: mIoU of ground-truth-prompted masks under a
protocol preset (`instances.CocoMiou`, or `edgesam.EdgeSamMiou` for `--protocol edgesam`), or with `--boxes`
mask AP from a detector's boxes (`detections.DetectionMasks`)."""

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Optional

from ..errors import BiglSamError
from .protocol import DEFAULT_PRESET, PRESETS, PROMPTS, SELECTIONS, Protocol, preset

if TYPE_CHECKING:  # annotations only: the jobs import torch, which `bigl-sam eval --help` does without
    from .instances import CocoMiou
    from .runner import Job

DEFAULT_CLICKS = 5


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of `eval coco` besides those every benchmark has."""
    parser.add_argument("--annotations", required=True, type=Path, help="COCO instances JSON")
    parser.add_argument("--protocol", default=DEFAULT_PRESET, metavar="NAME",
                        help=f"whose evaluation protocol: {', '.join(PRESETS)} (docs/evaluation.md)")
    parser.add_argument("--prompt", choices=PROMPTS, default="box", help="what prompts each instance")
    parser.add_argument("--clicks", type=int, default=None,
                        help=f"clicks in all for --prompt clicks (default {DEFAULT_CLICKS})")
    parser.add_argument("--select", choices=SELECTIONS, default=None, help="default: the protocol's")
    parser.add_argument("--boxes", type=Path, default=None, metavar="PATH",
                        help="COCO results file of box detections: prompt with them and report mask AP")
    parser.add_argument("--score-threshold", type=float, default=None,
                        help="with --boxes: the lowest score kept, in [0, 1] (default 0: every detection)")


def job_from_args(args: argparse.Namespace) -> "Job":
    from .coco import CocoInstances
    from .detections import DetectionMasks

    select = args.select or preset(args.protocol).select  # an unknown --protocol is an error first
    if args.boxes is not None:
        if args.prompt != "box" or args.clicks is not None:
            raise BiglSamError("--boxes prompts with the detector's boxes: leave out --prompt and --clicks")
        dataset = CocoInstances(args.annotations, args.images)
        threshold = 0.0 if args.score_threshold is None else args.score_threshold
        return DetectionMasks(dataset, args.boxes, threshold, select, args.batch_size, args.max_images, args.out)
    if args.score_threshold is not None:
        raise BiglSamError("--score-threshold filters the detections of --boxes: give --boxes, or leave it out")
    protocol = Protocol(args.prompt, _clicks(args), args.select, args.protocol)
    return miou_job(args.annotations, args.images, protocol, args.batch_size, args.max_images)


def miou_job(annotations: Path, images: Path, protocol: Protocol, batch_size: int,
             max_images: Optional[int] = None) -> "CocoMiou":
    """The mIoU job of `protocol` on a COCO file (what `eval coco` runs without --boxes)."""
    from .coco import CocoInstances
    from .edgesam import EdgeSamMiou
    from .instances import CocoMiou

    job = EdgeSamMiou if protocol.preset == "edgesam" else CocoMiou
    dataset = CocoInstances(annotations, images, score_crowd=protocol.score_crowd, min_area=job.min_area)
    return job(dataset, protocol, batch_size, max_images)


def _clicks(args: argparse.Namespace) -> int:
    if args.clicks is None:
        return DEFAULT_CLICKS if args.prompt == "clicks" else 1
    return args.clicks
