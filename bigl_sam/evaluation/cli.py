"""`bigl-sam eval BENCHMARK ...`: several models side by side on one job; the same under torchrun.

- `eval coco`: mIoU of ground-truth-prompted masks under a protocol preset, or with `--boxes
  DETECTIONS.json` COCO mask AP from a detector's boxes (`coco_jobs.py`).
- `eval interactive`: NoC / NoF / mIoU per click with RITM's clicker (`interactive.py`; its options: `interactive_jobs.py`).

A benchmark is a module with `add_arguments(parser)` (its own options) and `job_from_args(args)` (its
`runner.Job`), registered in `BENCHMARKS`; the job scores the images and writes its part of the report. The
module imports no torch at its top (its job's modules load in `job_from_args`): `--help` answers at once.
"""

import argparse
import shlex
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, List, Optional

from ..errors import BiglSamError
from ..options import WEIGHTS_RULE_HELP, add_device_options, add_weights_options, model_spec
from . import coco_jobs, interactive_jobs
from .report import write_json

if TYPE_CHECKING:  # annotations only: --help imports no torch
    from ..pretrained import ModelSpec

BENCHMARKS = {
    "coco": (coco_jobs, "mIoU of GT-prompted masks, or mask AP from detector boxes, on COCO"),
    "interactive": (interactive_jobs, "NoC@85/90, NoF and mIoU per click with RITM's clicker"),
}


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


def _add_common(parser: argparse.ArgumentParser) -> None:
    """The options of every benchmark. --model and --checkpoint come in pairs, one per model, so they are not
    `options.add_model_options`' single model."""
    parser.add_argument("--images", required=True, type=Path, help="folder of the images")
    parser.add_argument("--model", dest="model", action=_AddModel, required=True, metavar="NAME",
                        help="registry name (repeat for more models; the first is the reference)")
    parser.add_argument("--checkpoint", dest="checkpoint", action=_AddModel, metavar="PATH",
                        help=f"weights of the --model before it; {WEIGHTS_RULE_HELP}")
    add_weights_options(parser)
    parser.add_argument("--max-images", type=int, default=None, help="the first N images (by id, or by file stem)")
    parser.add_argument("--out", type=Path, default=None, help="results.json and resumable per-image records")
    parser.add_argument("--batch-size", type=int, default=16, help="prompts decoded at once")
    add_device_options(parser)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    benchmarks = parser.add_subparsers(dest="benchmark", required=True, metavar="BENCHMARK")
    for name, (module, description) in BENCHMARKS.items():
        benchmark = benchmarks.add_parser(name, help=description)
        _add_common(benchmark)
        module.add_arguments(benchmark)


def run(args: argparse.Namespace, specs: Optional[List["ModelSpec"]] = None) -> int:
    """`specs`: the models, when the caller built them from `args.models` (`bigl-sam study eval`'s rows)."""
    from .. import distributed  # here, not at the top, as the evaluation's modules: --help does without torch
    from .runner import Evaluation, evaluate_models

    if specs is None:
        specs = [model_spec(args, model_type, checkpoint) for model_type, checkpoint in args.models]
    if args.batch_size < 1:
        raise BiglSamError(f"--batch-size must be at least 1, got {args.batch_size}")
    job = BENCHMARKS[args.benchmark][0].job_from_args(args)
    process = distributed.start(args.device, backend="gloo")  # records are Python objects: gloo anywhere
    if process.is_main:
        _say_which_weights(specs)
        distributed.note_bfloat16(process.device, args.dtype)
    with tempfile.TemporaryDirectory(prefix="bigl-sam-eval-") as scratch:
        out_dir = args.out if args.out is not None else Path(scratch)
        evaluation = Evaluation(job, out_dir, process, args.dtype)
        results = evaluate_models(evaluation, specs)
    if results is None:
        return 0
    models: List[dict] = []
    for spec, settings, records in zip(specs, evaluation.settings, results):
        summary = job.summarize(spec.model_type, records, models[0] if models else None)
        models.append({**_model_entry(spec, settings), **summary})
    arguments = recorded_arguments(args)
    report = {"command": command_line(arguments), "arguments": arguments, "world_size": process.world_size,
              "dtype": args.dtype, **job.report_fields(models), "models": models}
    print(job.markdown_table(models))
    if args.out is not None:
        print(f"wrote {write_json(report, args.out)}", file=sys.stderr)
    return 0


def _say_which_weights(specs) -> None:
    """The weights folder the rule searched, if it did, then one line per model: the weights the rule took
    (`pretrained.choose_weights`), and from which files."""
    from ..pretrained import folder_lines

    for line in folder_lines([spec.weights for spec in specs]):
        print(line, file=sys.stderr)
    for spec in specs:
        caveat = ": the numbers measure the pipeline and its speed, not mask quality" if spec.random_weights else ""
        print(spec.weights.describe() + caveat, file=sys.stderr)


def _model_entry(spec: "ModelSpec", settings: dict) -> dict:
    """The report's entry for one model; `settings`: what its run was keyed on (`ModelSpec.settings`)."""
    label = spec.model_type + (" (RANDOM WEIGHTS)" if spec.random_weights else "")
    return {"label": label, "name": spec.model_type, "weights": spec.weights.describe(),
            "weights_files": [str(path) for path in spec.weights.files], "random_weights": spec.random_weights,
            "keep_ratio": settings["keep_ratio"]}


def recorded_arguments(args: argparse.Namespace) -> Dict[str, Any]:
    """Every parsed option, defaults included, as JSON values (paths as given): the benchmark, the models as
    a list of {"model", "checkpoint"} in order, then the rest."""
    models = [{"model": model_type, "checkpoint": checkpoint} for model_type, checkpoint in args.models]
    arguments: Dict[str, Any] = {"benchmark": args.benchmark, "models": models}
    for dest, value in vars(args).items():
        if dest not in arguments and dest not in ("model", "checkpoint"):  # those two are in `models`
            arguments[dest] = str(value) if isinstance(value, Path) else value
    return arguments


def command_line(arguments: Dict[str, Any]) -> str:
    """The `bigl-sam eval` command that `recorded_arguments` came from, every option spelled out (an option
    whose value is None or False is left out: that is its default)."""
    words: List[str] = ["bigl-sam", "eval", arguments["benchmark"]]
    for entry in arguments["models"]:
        words += ["--model", entry["model"]] + (["--checkpoint", entry["checkpoint"]] if entry["checkpoint"] else [])
    for dest, value in arguments.items():
        if dest in ("benchmark", "models") or value is None or value is False:
            continue
        flag = "--" + dest.replace("_", "-")
        words += [flag] if value is True else [flag, str(value)]
    return shlex.join(words)
