"""`bigl-sam study`: the quality study's own steps (docs/study.md).

  keep-rate   the EViT keep rate of a SAM ViT at the GMACs of a student at a keep ratio (row 6)
  eval        `bigl-sam eval` of a row that is not a registry model and file: a pruned SAM (row 6), a
              student fresh from a SAM file (rows 2, 3), random routing (row 5); the row's options come
              before the benchmark's
  intervals   mIoU and share of the teacher's, with 95% bootstrap intervals, from eval run folders
  plot        the curves against distillation steps or keep ratio, from a points file
"""

import argparse
import json
import sys
from pathlib import Path
from typing import Optional, Tuple

from ..bench.inputs import BenchInput, encoder_input, parse_size, synthetic_photo
from ..errors import BiglSamError, check_keep_ratio
from ..evaluation import cli as evaluation_cli
from ..fileio import atomic_write_text
from ..modeling.config import get_config, is_student, sam_vit_config
from ..options import model_spec
from .bootstrap import RESAMPLES, instance_ious, paired_intervals, read_records
from .curves import add_points, plot_against_keep_ratio, plot_against_steps


def add_arguments(parser: argparse.ArgumentParser) -> None:
    steps = parser.add_subparsers(dest="step", required=True)
    keep = steps.add_parser("keep-rate", help="the EViT keep rate of the student's SAM at the student's GMACs")
    keep.add_argument("--student", default="bigl_mini", help="the student whose GMACs set the budget")
    keep.add_argument("--keep-ratio", type=float, default=0.25, help="the student's keep ratio")
    keep.add_argument("--prune-layers", default=None,
                      help="comma-separated 0-based layers that prune (default: EViT's, scaled to the depth)")
    keep.add_argument("--size", default=None, metavar="SIZE",
                      help="WIDTHxHEIGHT: count the student's GMACs on a photo of this size, padded as SAM pads it (its budget "
                           "shrinks with the image; the pruned SAM's does not); default: a square image")

    variant = steps.add_parser("eval", help="bigl-sam eval of a pruned SAM or a randomly routed student")
    variant.add_argument("--evit-keep-rate", type=float, default=None,
                         help="prune every --model (a SAM) EViT-style at this keep rate (from `study keep-rate`)")
    variant.add_argument("--prune-layers", default=None, help="with --evit-keep-rate: 0-based layers that prune")
    variant.add_argument("--fresh-student", default=None, metavar="NAME",
                         help="build the student NAME from every --model (a SAM): its weights, a fresh router and "
                              "E-path (seeded); at --keep-ratio")
    variant.add_argument("--random-routing", type=int, default=None, metavar="SEED",
                         help="replace every --model's (a student's, or --fresh-student's) routers by a random "
                              "choice seeded by SEED")
    evaluation_cli.add_arguments(variant)

    intervals = steps.add_parser("intervals", help="mIoU and share of the teacher's with 95%% bootstrap intervals")
    intervals.add_argument("--teacher", type=Path, required=True, help="the teacher's eval run folder")
    intervals.add_argument("--row", action="append", required=True, metavar="ROW",
                           help="LABEL=RUN_DIR: a row's eval run folder (same data and protocol); repeatable")
    intervals.add_argument("--click", type=int, default=None,
                           help="eval interactive records: the IoU after this click (default: the last)")
    intervals.add_argument("--resamples", type=int, default=RESAMPLES,
                           help="bootstrap resamples over instances (default: %(default)s)")
    intervals.add_argument("--seed", type=int, default=0, help="seed of the resampling (default: %(default)s)")
    intervals.add_argument("--out", type=Path, default=None, help="also write the intervals as JSON here")
    intervals.add_argument("--points", type=Path, default=None, metavar="CSV",
                           help="also add each row's mIoU and interval at --x to this points file (for `plot`)")
    intervals.add_argument("--x", type=float, default=None, help="with --points: the steps or the keep ratio")

    plot = steps.add_parser("plot", help="a PNG of mIoU against distillation steps or keep ratio")
    plot.add_argument("against", choices=("steps", "keep-ratio"))
    plot.add_argument("points", type=Path, help="CSV (row,x,miou[,low,high]) or JSON points file")
    plot.add_argument("--out", type=Path, required=True, help="the PNG to write")


def run(args: argparse.Namespace) -> int:
    if args.step == "eval":
        return _evaluate_variant(args)
    if args.step == "keep-rate":
        result = keep_rate_at_student_budget(args.student, args.keep_ratio, args.prune_layers, args.size)
        print(json.dumps(result, indent=2))
    elif args.step == "intervals":
        if args.resamples < 1:
            raise BiglSamError(f"--resamples must be at least 1, got {args.resamples}")
        if (args.points is None) != (args.x is None):
            raise BiglSamError("--points and --x go together: the points file, and where on x these rows are")
        teacher = instance_ious(read_records(args.teacher), args.click)
        rows = {}
        for spec in args.row:
            label, sep, run_dir = spec.partition("=")
            if not sep or not label or not run_dir:
                raise BiglSamError(f"--row {spec!r}: expected LABEL=RUN_DIR")
            row = instance_ious(read_records(Path(run_dir)), args.click)
            rows[label] = paired_intervals(row, teacher, args.resamples, args.seed)
        text = json.dumps(rows, indent=2) + "\n"
        if args.out is not None:
            atomic_write_text(args.out, text)
        if args.points is not None:
            add_points(args.points, [{"row": label, "x": args.x, **row["miou"]} for label, row in rows.items()])
        print(text, end="")
    else:
        plot = plot_against_steps if args.against == "steps" else plot_against_keep_ratio
        print(plot(args.points, args.out))
    return 0


def _evaluate_variant(args: argparse.Namespace) -> int:
    """`bigl-sam eval` with every model made the study's variant; the variant is in each run's settings
    (results.json's `command` is eval's part of the command line)."""
    from .variants import VariantSpec  # here, not at the top: torch, which --help does without

    layers = args.prune_layers
    variant = {"evit_keep_rate": args.evit_keep_rate, "fresh_student": args.fresh_student,
               "random_routing_seed": args.random_routing}
    for dest in ("step", "evit_keep_rate", "prune_layers", "fresh_student", "random_routing"):
        delattr(args, dest)
    specs = []
    for model_type, checkpoint in args.models:
        spec = model_spec(args, model_type, checkpoint)
        depth = sam_vit_config(get_config(model_type)).depth
        prune_layers = None if layers is None else _layers(layers, depth)
        specs.append(VariantSpec(spec.model_type, spec.weights, spec.keep_ratio, prune_layers=prune_layers, **variant))
        print(f"{model_type}: study row {specs[-1].variant()}", file=sys.stderr)
    return evaluation_cli.run(args, specs)


def keep_rate_at_student_budget(
    student: str, keep_ratio: float, prune_layers: Optional[str] = None, size: Optional[str] = None
) -> dict:
    """The EViT keep rate of `student`'s SAM ViT whose GMACs are at most the student's at `keep_ratio` on a
    photo of `size` ("WIDTHxHEIGHT"; None: a square image), with both GMACs and the SAM's dense ones
    (random weights: MACs do not depend on them)."""
    import torch  # here, not at the top, as the models: --help does without them

    from ..build import build_model
    from .pruning import choose_keep_rate, count_gmacs, evit_layers

    config = get_config(student)
    if not is_student(config):
        raise BiglSamError(f"--student: {student} is not a big.LITTLE student")
    check_keep_ratio(keep_ratio, "--keep-ratio")
    vit_config = sam_vit_config(config)
    layers = evit_layers(vit_config.depth) if prune_layers is None else _layers(prune_layers, vit_config.depth)
    model = build_model(config)
    model.image_encoder.keep_ratio = keep_ratio
    side = vit_config.img_size
    images = torch.zeros(1, 3, side, side)
    if size is not None:
        width, height = parse_size(size)
        photo = BenchInput(size, synthetic_photo(width, height))
        images = encoder_input(photo, model.pixel_mean, model.pixel_std, side, batch=1)
    budget = count_gmacs(model.image_encoder, images)
    vit = build_model(vit_config).image_encoder
    try:
        rate, gmacs = choose_keep_rate(vit, budget, layers)
    except ValueError as err:
        raise BiglSamError(f"--prune-layers {','.join(map(str, layers))}: {err}") from None
    return {"sam": vit_config.name, "student": student, "keep_ratio": keep_ratio, "input": size or "square",
            "student_gmacs": budget, "sam_gmacs": count_gmacs(vit, images, "meta"), "prune_layers": list(layers),
            "keep_rate": rate, "pruned_gmacs": gmacs}


def _layers(spec: str, depth: int) -> Tuple[int, ...]:
    try:
        layers = sorted({int(part) for part in spec.split(",")})
    except ValueError:
        raise BiglSamError(f"--prune-layers {spec!r}: expected comma-separated layer numbers") from None
    if not layers or layers[0] < 0 or layers[-1] >= depth:
        raise BiglSamError(f"--prune-layers {spec!r}: layers are 0..{depth - 1}")
    return tuple(layers)
