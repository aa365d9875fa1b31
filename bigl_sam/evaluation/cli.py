"""`bigl-sam eval coco|interactive ...`: several models side by side on one job; the same under torchrun.

- `eval coco`: mIoU of ground-truth-prompted masks under a protocol preset (`instances.py`), or with
  `--boxes DETECTIONS.json` COCO mask AP from a detector's boxes (`detections.py`).
- `eval interactive`: NoC / NoF / mIoU per click with RITM's clicker (`interactive.py`).
"""

import argparse
import shlex
import sys
import tempfile
from pathlib import Path
from typing import List

from .. import distributed
from ..errors import BiglSamError
from ..pretrained import choose_weights
from ..weights import WEIGHTS_DIR_HELP
from . import detections, interactive
from .coco import CocoInstances
from .decoding import Decoding
from .edgesam import EdgeSamMiou
from .instances import CocoMiou
from .masks import DATASETS, MaskFolders
from .plot import plot_curves
from .protocol import DEFAULT_PRESET, MEDIUM_MAX_AREA, PRESETS, PROMPTS, RITM_RULE, SELECTIONS, SMALL_MAX_AREA, Protocol
from .report import differences, markdown_table, summarize, write_json
from .runner import Evaluation, ModelSpec, evaluate_models
from .sharding import Shard

DEFAULT_CLICKS = 5
SEGMENTATION_RESULTS = "segmentations_{model}.json"
PLOT_FILE = "iou_per_click.png"


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
    parser.add_argument("--images", required=True, type=Path, help="folder of the images")
    parser.add_argument("--model", dest="model", action=_AddModel, required=True, metavar="NAME",
                        help="registry name (repeat for more models; the first is the reference)")
    parser.add_argument("--checkpoint", dest="checkpoint", action=_AddModel, metavar="PATH",
                        help="weights of the --model before it; left out: the student's file in --weights-dir, "
                             "else one built from SAM's official files there, else random weights")
    parser.add_argument("--weights-dir", type=Path, default=None, metavar="DIR",
                        help=f"where to look for weights (default: {WEIGHTS_DIR_HELP})")
    parser.add_argument("--keep-ratio", type=float, default=None,
                        help="share of tokens in the P-path, for students (default: the one their file was saved "
                             "with; 1.0 for one built from SAM's files)")
    parser.add_argument("--max-images", type=int, default=None, help="the first N images (by id, or by file stem)")
    parser.add_argument("--out", type=Path, default=None, help="results.json and resumable per-image records")
    parser.add_argument("--batch-size", type=int, default=16, help="prompts decoded at once")
    parser.add_argument("--device", default=None, help="default: this rank's GPU if there is one, else cpu")
    parser.add_argument("--dtype", choices=tuple(distributed.DTYPES), default="float32",
                        help="bfloat16: autocast the encoder and decoder (for GPUs); recorded in results.json")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    jobs = parser.add_subparsers(dest="benchmark", required=True, metavar="BENCHMARK")
    coco = jobs.add_parser("coco", help="mIoU of GT-prompted masks, or mask AP from detector boxes, on COCO")
    _add_common(coco)
    coco.add_argument("--annotations", required=True, type=Path, help="COCO instances JSON")
    coco.add_argument("--protocol", choices=tuple(PRESETS), default=DEFAULT_PRESET,
                      help="whose evaluation protocol (docs/evaluation.md)")
    coco.add_argument("--prompt", choices=PROMPTS, default="box")
    coco.add_argument("--clicks", type=int, default=None,
                      help=f"clicks in all for --prompt clicks (default {DEFAULT_CLICKS})")
    coco.add_argument("--select", choices=SELECTIONS, default=None, help="default: the protocol's")
    coco.add_argument("--boxes", type=Path, default=None, metavar="DETECTIONS.json",
                      help="COCO results file of box detections: prompt with them and report mask AP")
    coco.add_argument("--score-threshold", type=float, default=None,
                      help="with --boxes: the lowest score kept, in [0, 1] (default 0: every detection)")
    clicks = jobs.add_parser("interactive", help="NoC@85/90, NoF and mIoU per click with RITM's clicker")
    _add_common(clicks)
    source = clicks.add_mutually_exclusive_group(required=True)
    source.add_argument("--masks", type=Path, help="folder of object masks, matched to --images by file stem")
    source.add_argument("--annotations", type=Path, help="or a COCO instances JSON")
    clicks.add_argument("--dataset", choices=tuple(DATASETS), default=None,
                        help="a benchmark's mask rule, as RITM reads it (sets --ignore-value and --union)")
    clicks.add_argument("--ignore-value", type=int, default=None, help="mask value that counts nowhere (GrabCut: 128)")
    clicks.add_argument("--union", action="store_true", help="one object of all mask values, not one per value")
    clicks.add_argument("--max-clicks", type=int, default=interactive.DEFAULT_MAX_CLICKS)
    clicks.add_argument("--select", choices=SELECTIONS, default="argmax")
    clicks.add_argument("--feed-logits", action="store_true",
                        help="give each round the previous round's low-res logits as mask input")


def run(args: argparse.Namespace) -> int:
    specs = [
        ModelSpec(name, choose_weights(name, checkpoint, args.weights_dir), args.keep_ratio)
        for name, checkpoint in args.models
    ]
    if args.batch_size < 1:
        raise BiglSamError(f"--batch-size must be at least 1, got {args.batch_size}")
    job = _job(args)
    process = distributed.start(args.device, backend="gloo")  # records are Python objects: gloo anywhere
    shard = Shard(process.rank, process.world_size)
    if shard.is_main:
        _say_which_weights(specs)
        distributed.note_bfloat16(process.device, args.dtype)
    with tempfile.TemporaryDirectory(prefix="bigl-sam-eval-") as scratch:
        out_dir = args.out if args.out is not None else Path(scratch)
        evaluation = Evaluation(job, out_dir, shard, process.device, args.dtype)
        results = evaluate_models(evaluation, specs)
    if results is None:
        return 0
    models = [_model_entry(spec, used) for spec, used in zip(specs, evaluation.settings)]
    header = {"command": _command_line(args), "world_size": shard.world_size, "dtype": args.dtype}
    if isinstance(job, CocoMiou):
        report, table = _miou_report(job, models, results)
    elif isinstance(job, detections.DetectionMasks):
        report, table = _detections_report(args, job, models, results)
    else:
        report, table = _interactive_report(args, job, models, results)
    print(table)
    if args.out is not None:
        print(f"wrote {write_json({**header, **report}, args.out)}", file=sys.stderr)
    return 0


def _job(args: argparse.Namespace):
    if args.benchmark == "interactive":
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
        return interactive.ClickCurves(dataset, Decoding(args.select, args.feed_logits), args.max_clicks,
                                       args.batch_size, args.max_images)
    if args.boxes is not None:
        if args.prompt != "box" or args.clicks is not None:
            raise BiglSamError("--boxes prompts with the detector's boxes: leave out --prompt and --clicks")
        select = args.select or PRESETS[args.protocol].select
        dataset = CocoInstances(args.annotations, args.images)
        return detections.DetectionMasks(dataset, args.boxes, _score_threshold(args), select, args.batch_size,
                                         args.max_images)
    if args.score_threshold is not None:
        raise BiglSamError("--score-threshold filters the detections of --boxes: give --boxes, or leave it out")
    protocol = Protocol(args.prompt, _clicks(args), args.select, args.protocol)
    job = EdgeSamMiou if protocol.preset == "edgesam" else CocoMiou
    dataset = CocoInstances(args.annotations, args.images, score_crowd=protocol.score_crowd, min_area=job.min_area)
    return job(dataset, protocol, args.batch_size, args.max_images)


def _mask_folders(args: argparse.Namespace) -> MaskFolders:
    """The mask folders under --dataset's rule, or under --ignore-value and --union."""
    if args.dataset is None:
        return MaskFolders(args.images, args.masks, args.ignore_value, args.union)
    if args.ignore_value is not None or args.union:
        raise BiglSamError(f"--dataset {args.dataset} sets the mask rule: leave out --ignore-value and --union")
    preset = DATASETS[args.dataset]
    return MaskFolders(args.images, args.masks, preset.ignore_value, preset.union, preset.object_above)


def _say_which_weights(specs) -> None:
    """One line per model: the weights the rule took (`pretrained.choose_weights`), and from which files."""
    for spec in specs:
        caveat = ": the numbers measure the pipeline and its speed, not mask quality" if spec.random_weights else ""
        print(spec.weights.describe() + caveat, file=sys.stderr)


def _score_threshold(args: argparse.Namespace) -> float:
    return 0.0 if args.score_threshold is None else args.score_threshold


def _clicks(args: argparse.Namespace) -> int:
    if args.clicks is None:
        return DEFAULT_CLICKS if args.prompt == "clicks" else 1
    return args.clicks


def _model_entry(spec: ModelSpec, settings: dict) -> dict:
    """The report's entry for one model; `settings`: what its run was keyed on (`ModelSpec.settings`)."""
    label = spec.name + (" (RANDOM WEIGHTS)" if spec.random_weights else "")
    return {"label": label, "name": spec.name, "weights": spec.weights.describe(),
            "weights_files": [str(path) for path in spec.weights.files], "random_weights": spec.random_weights,
            "keep_ratio": settings["keep_ratio"]}


def _coco_dataset_entry(dataset: CocoInstances, image_ids) -> dict:
    return {"annotations": str(dataset.annotations_path), "annotations_sha256": dataset.sha256,
            "run_hash_covers": "the annotation file's content (sha256), not its path",
            "images": str(dataset.images_dir), "selected_images": len(image_ids)}


def _miou_report(job: CocoMiou, models: List[dict], results) -> tuple:
    protocol = job.protocol
    models = [{**model, **summarize(records, protocol.inclusive_buckets)} for model, records in zip(models, results)]
    for model in models[1:]:
        model["miou_minus_reference"] = differences(model, models[0])
    report = {
        "protocol": {
            **protocol.to_dict(),
            "source": PRESETS[protocol.preset].source,
            "multimask_output": protocol.select != "single",
            "iou_at": "original image resolution",
            "pixels": "as stored (EXIF orientation not applied)",
            "size_bounds_area": {"small_max": SMALL_MAX_AREA, "large_min": MEDIUM_MAX_AREA,
                                 "bounds_in_both_buckets": protocol.inclusive_buckets},
            "skipped_annotations": ("" if protocol.score_crowd else "iscrowd, or ") + f"area < {job.dataset.min_area:g}"
                                   + ("" if protocol.score_empty else ", or an empty mask"),
        },
        "dataset": {**_coco_dataset_entry(job.dataset, job.image_ids),
                    "skipped_annotations": job.dataset.skipped_annotations(job.image_ids)},
        "models": models,
    }
    return report, markdown_table(models)


def _detections_report(args, job: "detections.DetectionMasks", models: List[dict], results) -> tuple:
    entries = []
    for model, records in zip(models, results):
        out_file = None if args.out is None else args.out / SEGMENTATION_RESULTS.format(model=model["name"])
        entries.append({**model, **detections.summarize(records, job.dataset, out_file)})
    report = {
        "protocol": {"prompt": "detector boxes", "select": job.decoding.select,
                     "multimask_output": job.decoding.select != "single", "score_threshold": job.score_threshold,
                     "metric": "COCOeval segm, maxDets 1/10/100", "pixels": "as stored (EXIF orientation not applied)",
                     "source": "mit-han-lab/efficientvit applications/efficientvit_sam/eval_efficientvit_sam_model.py"},
        "dataset": {**_coco_dataset_entry(job.dataset, job.image_ids), "detections": str(job.detections_path),
                    "detections_sha256": job.sha256},
        "models": entries,
    }
    return report, detections.markdown_table(entries)


def _interactive_report(args, job: "interactive.ClickCurves", models: List[dict], results) -> tuple:
    entries = [{**model, **interactive.summarize(records, job.max_clicks)} for model, records in zip(models, results)]
    if isinstance(job.dataset, MaskFolders):
        dataset = {"images": str(job.dataset.images_dir), "masks": str(job.dataset.masks_dir),
                   "preset": args.dataset, "preset_source": None if args.dataset is None else DATASETS[args.dataset].source,
                   "ignore_value": job.dataset.ignore_value, "union": job.dataset.union,
                   "object_above": job.dataset.object_above, "selected_images": len(job.image_ids)}
    else:
        dataset = _coco_dataset_entry(job.dataset, job.image_ids)
    report = {
        "protocol": {"clicker": "RITM (isegm/inference/clicker.py)", "click_rule": RITM_RULE.to_dict(),
                     "max_clicks": job.max_clicks, "select": job.decoding.select,
                     "feed_logits": job.decoding.feed_logits, "noc_thresholds": list(interactive.NOC_THRESHOLDS),
                     "nof": "objects whose NoC equals max_clicks (RITM's count)",
                     "pixels": "as stored (EXIF orientation not applied)"},
        "dataset": dataset,
        "models": entries,
    }
    if args.out is not None:
        curves = [(m["label"], m["miou_per_click"]) for m in entries]
        report["plot"] = str(plot_curves(args.out / PLOT_FILE, curves, "mIoU after each click"))
    return report, interactive.markdown_table(entries, job.max_clicks)


def _command_line(args: argparse.Namespace) -> str:
    """The command with every setting spelled out, defaults included, so it reproduces the run."""
    words: List[str] = ["bigl-sam", "eval", args.benchmark, "--images", str(args.images)]
    if args.benchmark == "coco":
        words += ["--annotations", str(args.annotations), "--protocol", args.protocol]
        if args.boxes is not None:
            words += ["--boxes", str(args.boxes), "--score-threshold", str(_score_threshold(args))]
        else:
            words += ["--prompt", args.prompt]
            if args.prompt == "clicks":
                words += ["--clicks", str(_clicks(args))]
        if args.select is not None:
            words += ["--select", args.select]
    else:
        words += ["--masks", str(args.masks)] if args.masks is not None else ["--annotations", str(args.annotations)]
        words += ["--dataset", args.dataset] if args.dataset is not None else []
        if args.ignore_value is not None:
            words += ["--ignore-value", str(args.ignore_value)]
        words += ["--union"] if args.union else []
        words += ["--max-clicks", str(args.max_clicks), "--select", args.select]
        words += ["--feed-logits"] if args.feed_logits else []
    for name, checkpoint in args.models:
        words += ["--model", name] + (["--checkpoint", checkpoint] if checkpoint else [])
    if args.keep_ratio is not None:
        words += ["--keep-ratio", str(args.keep_ratio)]
    if args.weights_dir is not None:
        words += ["--weights-dir", str(args.weights_dir)]
    if args.max_images is not None:
        words += ["--max-images", str(args.max_images)]
    words += ["--dtype", args.dtype]
    if args.out is not None:
        words += ["--out", str(args.out)]
    return shlex.join(words)
