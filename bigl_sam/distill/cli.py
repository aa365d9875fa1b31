"""`bigl-sam distill cache|train|compare`: the commands of a distillation run (cache and train work under
`torchrun`). The flags of `train` are made from the fields of `TrainConfig` (`config.py`)."""

import argparse
from pathlib import Path

from ..errors import BiglSamError
from ..fileio import check_writable
from ..arguments import add_renamed
from ..options import add_device_options, add_dtype_option
from ..training.config import add_config_arguments, numbers
from .config import TrainConfig


def add_arguments(parser: argparse.ArgumentParser) -> None:
    commands = parser.add_subparsers(dest="distill_command", required=True)
    _add_cache_arguments(commands.add_parser("cache", help="run the teacher once per image and augmentation"))
    add_config_arguments(commands.add_parser(
        "train", help="train a student on a teacher cache, or against its own SAM (--teacher-checkpoint)"), TrainConfig)
    _add_compare_arguments(
        commands.add_parser("compare", help="embedding error and mask agreement of students vs their teacher")
    )


def _add_cache_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, type=Path, help="cache folder (created; a rerun resumes)")
    parser.add_argument("--teacher", dest="teacher_model_type",
                        help="teacher model type (vit_h, ...); default: read off the checkpoint")
    parser.add_argument("--teacher-checkpoint", type=Path, help="e.g. sam_vit_h_4b8939.pth")
    parser.add_argument("--images", type=Path, help="folder of images (searched recursively)")
    parser.add_argument("--augment", type=int, default=0, help="augmented copies per image besides the original")
    parser.add_argument("--shard-size", type=int, default=64, help="embeddings per shard file")
    parser.add_argument("--batch", type=int, default=4, help="images per teacher forward pass")
    parser.add_argument("--strict", action="store_true", help="stop at the first unreadable image instead of skipping it")
    add_device_options(parser, autocasts="the teacher")
    parser.add_argument("--verify", action="store_true", help="only check the shards of --out against the index")


def _add_compare_arguments(parser: argparse.ArgumentParser) -> None:
    add = parser.add_argument
    add_renamed(parser, "--teacher-checkpoint", "--teacher-from", help="the SAM-layout file the students learn from "
                "(required)")
    add("--student", action="append", required=True,
        help="a student checkpoint, or a registry name built fresh from --encoder-checkpoint (repeat: the first "
        "is the baseline of the 'error removed' column)")
    add_renamed(parser, "--encoder-checkpoint", "--init-from",
                help="SAM file for the P-path of students given by name; default: --teacher-checkpoint")
    add("--images", required=True, type=Path, help="folder of images (searched recursively)")
    add("--holdout", type=int, default=10, help="compare on the last N images (sorted), as train --holdout N keeps out")
    add_renamed(parser, "--keep-ratio", "--keep-ratios", dest="keep_ratios", type=numbers(float),
                default=(0.15, 0.25, 0.5), metavar="RATIOS",
                help="keep ratios, comma-separated, as bench's --keep-ratio (default: 0.15,0.25,0.5)")
    add("--seed", type=int, default=0, help="router and E-path draw of students given by name (as train --seed)")
    add("--baseline", type=Path, help="JSON of an earlier compare: its first student is the 'error removed' baseline")
    add("--teacher-outputs", type=Path, help="file keeping the teacher's embeddings and masks: written once, "
        "then read (compare before and after training without running the teacher twice)")
    add("--json", type=Path, help="also write the rows as JSON here")
    add_dtype_option(parser, "the teacher and the students")


def run(args: argparse.Namespace) -> int:
    if args.distill_command == "cache":
        return _run_cache(args)
    if args.distill_command == "compare":
        return _run_compare(args)
    from .train import train  # torch and the models load only once the flags are parsed

    options = {k: v for k, v in vars(args).items() if k != "distill_command"}
    print(f"final checkpoint: {train(TrainConfig(**options))}")
    return 0


def _run_compare(args: argparse.Namespace) -> int:
    import torch  # here, not at the top, as the comparing modules: --help does without them

    from .. import distributed
    from .compare import compare, read_json, table, write_json

    if args.teacher_checkpoint is None:  # not argparse's required=: the former name would not count
        raise BiglSamError("--teacher-checkpoint is required: the SAM-layout file the students learn from")
    if args.holdout < 1:
        raise BiglSamError(f"--holdout {args.holdout}: must be at least 1")
    baseline = read_json(args.baseline) if args.baseline else None
    if args.json:
        check_writable(args.json, "--json")
    if args.teacher_outputs and not args.teacher_outputs.is_file():  # written once the teacher ran
        check_writable(args.teacher_outputs, "--teacher-outputs")
    distributed.note_bfloat16(torch.device("cpu"), args.dtype)
    rows = compare(args.teacher_checkpoint, args.student, args.images, args.holdout, args.keep_ratios,
                   args.encoder_checkpoint, args.seed, baseline, args.teacher_outputs, args.dtype)
    print(table(rows))
    if args.json:
        write_json(rows, args.json)
    return 0


def _run_cache(args: argparse.Namespace) -> int:
    from ..build import build_sam, load_sam  # here, not at the top: torch, which --help does without
    from .cache import SKIPPED, build_cache, read_index, verify_cache

    if args.verify:
        problems = verify_cache(args.out)
        for problem in problems:
            print(problem)
        if problems:
            raise BiglSamError(f"{args.out}: {len(problems)} bad shards; delete them and rerun the cache command")
        print(f"{args.out}: every shard matches the index")
        return 0
    for option in ("teacher_checkpoint", "images"):
        if getattr(args, option) is None:
            raise BiglSamError(f"--{option.replace('_', '-')} is required to build a cache")
    if args.augment < 0 or args.shard_size < 1 or args.batch < 1:
        raise BiglSamError("--augment must be >= 0, --shard-size and --batch >= 1")
    if args.teacher_model_type:
        teacher = build_sam(args.teacher_model_type, args.teacher_checkpoint)
    else:
        teacher = load_sam(args.teacher_checkpoint)
    index = build_cache(
        teacher, args.images, args.out, args.augment, args.shard_size, args.batch, args.device, args.dtype, args.strict
    )
    skipped = len(read_index(args.out).get("skipped", []))
    if skipped:
        print(f"teacher cache: {index}; {skipped} unreadable images skipped, listed in {args.out / SKIPPED}")
    else:
        print(f"teacher cache: {index}")
    return 0
