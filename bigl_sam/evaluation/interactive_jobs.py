"""`eval interactive`: its options, and the job they ask for (`interactive.ClickCurves`) on a folder of object
masks or a COCO file."""

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import BiglSamError
from .masks import DATASETS, MaskFolders
from .protocol import SELECTIONS

if TYPE_CHECKING:  # annotations only: the job imports torch, which `bigl-sam eval --help` does without
    from .interactive import ClickCurves

DEFAULT_MAX_CLICKS = 20


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of `eval interactive` besides those every benchmark has."""
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--masks", type=Path, help="folder of object masks, matched to --images by file stem")
    source.add_argument("--annotations", type=Path, help="or a COCO instances JSON")
    parser.add_argument("--dataset", choices=tuple(DATASETS), default=None,
                        help="a benchmark's mask rule, as RITM reads it (sets --ignore-value and --union)")
    parser.add_argument("--ignore-value", type=int, default=None,
                        help="mask value that counts nowhere (GrabCut: 128)")
    parser.add_argument("--union", action="store_true", help="one object of all mask values, not one per value")
    parser.add_argument("--max-clicks", type=int, default=DEFAULT_MAX_CLICKS, metavar="N",
                        help="clicks per instance at most")
    parser.add_argument("--select", choices=SELECTIONS, default="argmax",
                        help="which of the decoder's masks each click keeps")
    parser.add_argument("--feed-logits", action="store_true",
                        help="give each round the previous round's low-res logits as mask input")


def job_from_args(args: argparse.Namespace) -> "ClickCurves":
    from .coco import CocoInstances
    from .decoding import Decoding
    from .interactive import ClickCurves

    if args.max_clicks < 1:
        raise BiglSamError(f"--max-clicks must be at least 1, got {args.max_clicks}")
    if args.annotations is not None and (args.ignore_value is not None or args.union):
        raise BiglSamError("--ignore-value and --union read mask values of --masks; with --annotations each "
                           "annotation is one object: leave them out")
    if args.masks is not None:
        dataset = _mask_folders(args)
    elif args.dataset is not None:
        raise BiglSamError(f"--dataset {args.dataset} is a rule for mask folders: give --masks, not --annotations")
    else:
        dataset = CocoInstances(args.annotations, args.images)
    return ClickCurves(dataset, Decoding(args.select, args.feed_logits), args.max_clicks, args.batch_size,
                       args.max_images, args.out)


def _mask_folders(args: argparse.Namespace) -> MaskFolders:
    """The mask folders under --dataset's rule, or under --ignore-value and --union."""
    if args.dataset is None:
        return MaskFolders(args.images, args.masks, args.ignore_value, args.union)
    if args.ignore_value is not None or args.union:
        raise BiglSamError(f"--dataset {args.dataset} sets the mask rule: leave out --ignore-value and --union")
    return MaskFolders.with_preset(args.images, args.masks, args.dataset)
