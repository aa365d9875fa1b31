"""`bigl-sam distill cache|train`: the two commands of a distillation run (both work under `torchrun`)."""

import argparse
from pathlib import Path

import torch

from .. import distributed
from ..build import build_sam, load_sam
from ..errors import BiglSamError
from ..fileio import check_writable
from .cache import SKIPPED, build_cache, read_index, verify_cache
from .compare import compare, read_json, table, write_json
from .data import LOSS_REGIONS
from .train import TrainConfig, train

TRAIN_DEFAULTS = TrainConfig(out="")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    commands = parser.add_subparsers(dest="distill_command", required=True)
    _add_cache_arguments(commands.add_parser("cache", help="run the teacher once per image and augmentation"))
    _add_train_arguments(
        commands.add_parser("train", help="train a student on a teacher cache, or against its own SAM (--teacher-from)")
    )
    _add_compare_arguments(
        commands.add_parser("compare", help="embedding error and mask agreement of students vs their teacher")
    )


def _add_cache_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, type=Path, help="cache folder (created; a rerun resumes)")
    parser.add_argument("--teacher", help="teacher model name (vit_h, ...); default: read off the checkpoint")
    parser.add_argument("--teacher-checkpoint", type=Path, help="e.g. sam_vit_h_4b8939.pth")
    parser.add_argument("--images", type=Path, help="folder of images (searched recursively)")
    parser.add_argument("--augment", type=int, default=0, help="augmented copies per image besides the original")
    parser.add_argument("--shard-size", type=int, default=64, help="embeddings per shard file")
    parser.add_argument("--batch", type=int, default=4, help="images per teacher forward pass")
    parser.add_argument("--dtype", choices=tuple(distributed.DTYPES), default="float32", help="teacher precision (bfloat16: autocast)")
    parser.add_argument("--strict", action="store_true", help="stop at the first unreadable image instead of skipping it")
    parser.add_argument("--device", help="default: this process's GPU if there is one, else cpu")
    parser.add_argument("--verify", action="store_true", help="only check the shards of --out against the index")


def _add_train_arguments(parser: argparse.ArgumentParser) -> None:
    d = TRAIN_DEFAULTS
    add = parser.add_argument
    add("--student", help="bigl_b_t, bigl_l_s, ... or a student checkpoint to continue; "
        "default with --teacher-from: the student of that SAM's size")
    add("--cache", help="teacher cache folder from `bigl-sam distill cache` (a bigger teacher, e.g. ViT-H)")
    add("--teacher-from", help="self-distillation: this SAM-layout file's frozen encoder is the teacher, run on "
        "the fly on the same input (no cache); needs --images")
    add("--images", help="folder of images (searched recursively), with --teacher-from")
    add("--init-from", help="SAM checkpoint of the P-path's size (e.g. sam_vit_b_01ec64.pth); "
        "default: --teacher-from's file, else random")
    add("--decoder-from", help="SAM checkpoint for the prompt encoder and mask decoder; default: --teacher-from's file")
    add("--out", required=True, help="run folder: checkpoints, CSV and TensorBoard logs")
    add("--steps", type=int, default=d.steps)
    add("--batch", type=int, default=d.batch, help="images per process and step")
    add("--lr", type=float, default=d.lr, help="peak learning rate")
    add("--min-lr", type=float, default=d.min_lr, help="learning rate at the end of the cosine decay")
    add("--warmup", type=int, default=d.warmup, help="linear warm-up steps")
    add("--weight-decay", type=float, default=d.weight_decay)
    add("--grad-clip", type=float, default=d.grad_clip, help="max gradient norm")
    add("--keep-ratio-range", type=_ratio_range, default=d.keep_ratio_range, help="LOW,HIGH sampled per step")
    add("--cosine-weight", type=float, default=d.cosine_weight, help="weight of (1 - cosine) next to the MSE")
    add("--mask-weight", type=float, default=d.mask_weight,
        help="> 0 adds the mask-level loss (decoder, prompts); default 1 with --teacher-from, else 0")
    add("--freeze-source", action="store_true",
        help="only the routers and E-paths learn; the P-path, embeddings and neck keep the source SAM's weights, "
        "so at keep 1.0 the student is that SAM plus the E-paths' learned updates")
    add("--loss-region", choices=LOSS_REGIONS, default=d.loss_region,
        help="embedding cells the loss covers: the full grid (padding too: SAM's decoder attends to it) or valid")
    add("--holdout", type=int, default=d.holdout, help="images held out for the held-out loss curves")
    add("--eval-every", type=int, default=d.eval_every, help="held-out curves every N steps and at the end; 0: never")
    add("--ckpt-every", type=int, default=d.ckpt_every)
    add("--seed", type=int, default=d.seed)
    add("--amp", choices=("auto", "bf16", "none"), default=d.amp, help="auto: bf16 autocast on GPU only")
    add("--workers", type=int, default=d.workers, help="data loader processes")
    add("--device", help="default: this process's GPU if there is one, else cpu")
    add("--resume", action="store_true", help="continue from RUN/ckpt.pt (start fresh if there is none yet)")


def _add_compare_arguments(parser: argparse.ArgumentParser) -> None:
    add = parser.add_argument
    add("--teacher-from", required=True, help="the SAM-layout file the students learn from")
    add("--student", action="append", required=True,
        help="a student checkpoint, or a registry name built fresh from --init-from (repeat: the first is the "
        "baseline of the 'error removed' column)")
    add("--init-from", help="SAM file for students given by name; default: --teacher-from")
    add("--images", required=True, type=Path, help="folder of images (searched recursively)")
    add("--holdout", type=int, default=10, help="compare on the last N images (sorted), as train --holdout N keeps out")
    add("--keep-ratios", type=_ratios, default=(0.15, 0.25, 0.5), help="comma-separated, e.g. 0.15,0.25,0.5")
    add("--seed", type=int, default=0, help="router and E-path draw of students given by name (as train --seed)")
    add("--baseline", type=Path, help="JSON of an earlier compare: its first student is the 'error removed' baseline")
    add("--teacher-outputs", type=Path, help="file keeping the teacher's embeddings and masks: written once, "
        "then read (compare before and after training without running the teacher twice)")
    add("--json", type=Path, help="also write the rows as JSON here")
    add("--dtype", choices=tuple(distributed.DTYPES), default="float32",
        help="teacher and students in float32, or under bfloat16 autocast")


def _ratios(text: str):
    try:
        return tuple(float(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected numbers such as 0.15,0.25,0.5") from None


def _ratio_range(text: str):
    try:
        lo, hi = (float(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected LOW,HIGH such as 0.15,0.5") from None
    return lo, hi


def run(args: argparse.Namespace) -> int:
    if args.distill_command == "cache":
        return _run_cache(args)
    if args.distill_command == "compare":
        return _run_compare(args)
    options = {k: v for k, v in vars(args).items() if k != "distill_command"}
    print(f"final checkpoint: {train(TrainConfig(**options))}")
    return 0


def _run_compare(args: argparse.Namespace) -> int:
    if args.holdout < 1:
        raise BiglSamError(f"--holdout {args.holdout}: must be at least 1")
    baseline = read_json(args.baseline) if args.baseline else None
    if args.json:
        check_writable(args.json, "--json")
    if args.teacher_outputs and not args.teacher_outputs.is_file():  # written once the teacher ran
        check_writable(args.teacher_outputs, "--teacher-outputs")
    distributed.note_bfloat16(torch.device("cpu"), args.dtype)
    rows = compare(args.teacher_from, args.student, args.images, args.holdout, args.keep_ratios, args.init_from,
                   args.seed, baseline, args.teacher_outputs, args.dtype)
    print(table(rows))
    if args.json:
        write_json(rows, args.json)
    return 0


def _run_cache(args: argparse.Namespace) -> int:
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
    if args.teacher:
        teacher = build_sam(args.teacher, args.teacher_checkpoint)
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
