"""`bigl-sam eval coco ...`: COCO mIoU of one or more models, side by side; the same under torchrun."""

import argparse
import shlex
import sys
import tempfile
from pathlib import Path
from typing import List


from .. import distributed
from ..errors import BiglSamError
from .coco import MIN_AREA, CocoInstances
from .protocol import MEDIUM_MAX_AREA, PROMPTS, SELECTIONS, SMALL_MAX_AREA, Protocol
from .report import differences, markdown_table, summarize, write_json
from .runner import Evaluation, ModelSpec, evaluate_models
from .sharding import Shard

DEFAULT_CLICKS = 5


class _AddModel(argparse.Action):
    """--model NAME starts an entry; a following --checkpoint PATH belongs to it."""

    def __call__(self, parser, namespace, value, option_string=None):
        models = getattr(namespace, "models", None) or []
        checkpoint = None
        if self.dest == "checkpoint":
            if not models or models[-1][1] is not None:
                parser.error("each --checkpoint must follow its own --model NAME")
            value, checkpoint = models.pop()[0], value
        namespace.models = models + [(value, checkpoint)]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    benchmarks = parser.add_subparsers(dest="benchmark", required=True, metavar="BENCHMARK")
    coco = benchmarks.add_parser("coco", help="mIoU on COCO-format instance annotations")
    coco.add_argument("--images", required=True, type=Path, help="folder of the images")
    coco.add_argument("--annotations", required=True, type=Path, help="COCO instances JSON")
    coco.add_argument("--model", dest="model", action=_AddModel, required=True, metavar="NAME",
                      help="registry name (repeat for more models; the first is the reference)")
    coco.add_argument("--checkpoint", dest="checkpoint", action=_AddModel, metavar="PATH",
                      help="weights of the --model before it; left out: random weights (measures the pipeline only)")
    coco.add_argument("--prompt", choices=PROMPTS, default="box")
    coco.add_argument("--clicks", type=int, default=None,
                      help=f"clicks in all for --prompt clicks (default {DEFAULT_CLICKS})")
    coco.add_argument("--select", choices=SELECTIONS, default="argmax")
    coco.add_argument("--keep-ratio", type=float, default=None,
                      help="share of tokens in the P-path, for students (default: their config's)")
    coco.add_argument("--max-images", type=int, default=None, help="the first N images by id")
    coco.add_argument("--out", type=Path, default=None, help="results.json and resumable per-image records")
    coco.add_argument("--batch-size", type=int, default=16, help="instances decoded at once")
    coco.add_argument("--device", default=None, help="default: this rank's GPU if there is one, else cpu")


def run(args: argparse.Namespace) -> int:
    protocol = Protocol(args.prompt, _clicks(args), args.select)
    specs = [ModelSpec(name, checkpoint, args.keep_ratio) for name, checkpoint in args.models]
    if args.batch_size < 1:
        raise BiglSamError(f"--batch-size must be at least 1, got {args.batch_size}")
    process = distributed.start(args.device, backend="gloo")  # records are Python objects: gloo anywhere
    dataset = CocoInstances(args.annotations, args.images)
    image_ids = dataset.image_ids(args.max_images)
    shard = Shard(process.rank, process.world_size)
    if shard.is_main:
        _warn_about_random_weights(specs)
    with tempfile.TemporaryDirectory(prefix="bigl-sam-eval-") as scratch:
        out_dir = args.out if args.out is not None else Path(scratch)
        evaluation = Evaluation(dataset, image_ids, protocol, out_dir, shard, process.device, args.batch_size)
        results = evaluate_models(evaluation, specs)
    if results is None:
        return 0
    report = _report(args, protocol, dataset, image_ids, specs, results, shard.world_size)
    print(markdown_table(report["models"]))
    skipped = {(s["file"], s["reason"]) for model in report["models"] for s in model["skipped_images"]}
    for file, reason in sorted(skipped):
        print(f"skipped {file}: {reason}", file=sys.stderr)
    if args.out is not None:
        print(f"wrote {write_json(report, args.out)}", file=sys.stderr)
    return 0


def _warn_about_random_weights(specs) -> None:
    for spec in specs:
        if spec.random_weights:
            print(f"WARNING: {spec.name} has no --checkpoint: RANDOM WEIGHTS, the numbers measure the pipeline "
                  "and its speed, not mask quality", file=sys.stderr)


def _clicks(args: argparse.Namespace) -> int:
    if args.clicks is None:
        return DEFAULT_CLICKS if args.prompt == "clicks" else 1
    return args.clicks


def _report(args, protocol, dataset, image_ids, specs, results, world_size) -> dict:
    models = []
    for spec, records in zip(specs, results):
        label = spec.name + (" (RANDOM WEIGHTS)" if spec.random_weights else "")
        models.append({"label": label, "name": spec.name, "checkpoint": spec.checkpoint,
                       "random_weights": spec.random_weights, "keep_ratio": spec.effective_keep_ratio,
                       **summarize(records)})
    for model in models[1:]:
        model["miou_minus_reference"] = differences(model, models[0])
    return {
        "command": _command_line(args, protocol),
        "protocol": {
            **protocol.to_dict(),
            "multimask_output": protocol.select != "single",
            "iou_at": "original image resolution",
            "size_bounds_area": {"small_below": SMALL_MAX_AREA, "large_from": MEDIUM_MAX_AREA},
            "skipped_annotations": f"iscrowd, or area < {MIN_AREA:g}",
        },
        "dataset": {
            "annotations": str(args.annotations),
            "images": str(args.images),
            "selected_images": len(image_ids),
            "skipped_annotations": dataset.skipped_annotations(image_ids),
        },
        "world_size": world_size,
        "models": models,
    }


def _command_line(args: argparse.Namespace, protocol: Protocol) -> str:
    """The command with every setting spelled out, defaults included, so it reproduces the run."""
    words: List[str] = ["bigl-sam", "eval", "coco", "--images", str(args.images)]
    words += ["--annotations", str(args.annotations)]
    for name, checkpoint in args.models:
        words += ["--model", name] + (["--checkpoint", checkpoint] if checkpoint else [])
    words += ["--prompt", protocol.prompt, "--select", protocol.select]
    if protocol.prompt == "clicks":
        words += ["--clicks", str(protocol.clicks)]
    if args.keep_ratio is not None:
        words += ["--keep-ratio", str(args.keep_ratio)]
    if args.max_images is not None:
        words += ["--max-images", str(args.max_images)]
    if args.out is not None:
        words += ["--out", str(args.out)]
    return shlex.join(words)
