"""From per-image records to the result of `eval coco` (mIoU x100 overall and per COCO size bucket), the time
split every job reports (load, encoder, decoder, scoring), and results.json."""

import json
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from ..fileio import atomic_write_text
from .protocol import SIZE_BUCKETS, size_buckets

BUCKETS = ("all",) + SIZE_BUCKETS
RESULTS_FILE = "results.json"


def summarize(records: Sequence[dict], inclusive_buckets: bool = False) -> dict:
    """One model's numbers from its image records (skipped images are listed, not scored); inclusive_buckets:
    the size buckets include both bounds (`size_buckets`)."""
    evaluated = [r for r in records if "instances" in r]
    instances = [i for r in evaluated for i in r["instances"]]
    by_bucket: Dict[str, List[float]] = {bucket: [] for bucket in BUCKETS}
    for instance in instances:
        for bucket in ("all",) + size_buckets(instance["area"], inclusive_buckets):
            by_bucket[bucket].append(instance["iou"])
    split = time_split(evaluated)
    seconds = split["seconds"]
    return {
        "miou": {bucket: _mean_x100(ious) for bucket, ious in by_bucket.items()},
        "instances": {bucket: len(ious) for bucket, ious in by_bucket.items()},
        "images": len(evaluated),
        "skipped_images": [{"file": r["file"], "reason": r["skipped"]} for r in records if "skipped" in r],
        "empty_masks": sum(len(r.get("empty_masks", [])) for r in evaluated),
        "exif_rotated_images": sum("exif_orientation" in r for r in evaluated),
        "seconds": seconds,
        "time_split": split,
        "images_per_s": rate(len(evaluated), seconds),
        "instances_per_s": rate(len(instances), seconds),
        "encoder_share": split["share"]["encoder"],
    }


TIME_PARTS = {"load": "load_s", "encoder": "encode_s", "decoder": "decode_s", "scoring": "score_s"}


def time_split(records: Sequence[dict]) -> dict:
    """Seconds in all over the scored records, and per part: reading the image, the encoder (with SAM's
    preprocessing), the mask decoder, and the rest of scoring (click simulator, IoU, RLE)."""
    parts = {part: sum(r.get(key, 0.0) for r in records) for part, key in TIME_PARTS.items()}
    seconds = sum(parts.values())
    share = {part: (value / seconds if seconds > 0 else None) for part, value in parts.items()}
    return {"seconds": seconds, "parts": parts, "share": share}


def time_split_cell(split: dict) -> str:
    """'5/80/12/3%': the shares of load, encoder, decoder and scoring."""
    if split["seconds"] <= 0:
        return "–"
    return "/".join(f"{100 * split['share'][part]:.0f}" for part in TIME_PARTS) + "%"


def differences(summary: dict, reference: dict) -> Dict[str, Optional[float]]:
    """mIoU minus the reference's, per bucket (None where either has no instances)."""
    return {
        bucket: None if value is None or reference["miou"][bucket] is None else value - reference["miou"][bucket]
        for bucket, value in summary["miou"].items()
    }


def markdown_table(models: Sequence[dict]) -> str:
    """models: dicts with `label` and the keys of `summarize`; the first row is the reference."""
    header = ("| model | mIoU all | small | medium | large | instances | images/s | instances/s "
              "| time: load/encoder/decoder/scoring |")
    lines = [header, "|" + "---|" * header.count(" | ") + "---|"]
    reference = models[0]
    for row, model in enumerate(models):
        delta = differences(model, reference) if row > 0 else {}
        cells = [_miou_cell(model["miou"][b], delta.get(b)) for b in BUCKETS]
        cells += [str(model["instances"]["all"]), _number(model["images_per_s"], 2)]
        cells.append(_number(model["instances_per_s"], 1))
        cells.append(time_split_cell(model["time_split"]))
        lines.append(f"| {model['label']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_json(report: dict, out_dir: Path) -> Path:
    """`out_dir/results.json`, written atomically."""
    path = Path(out_dir) / RESULTS_FILE
    return atomic_write_text(path, json.dumps(report, indent=2) + "\n")


def _mean_x100(values: List[float]) -> Optional[float]:
    return 100.0 * sum(values) / len(values) if values else None


def rate(count: int, seconds: float) -> Optional[float]:
    return count / seconds if seconds > 0 else None


def _miou_cell(value: Optional[float], delta: Optional[float]) -> str:
    if value is None:
        return "–"
    return f"{value:.1f}" if delta is None else f"{value:.1f} ({delta:+.1f})"


def _number(value: Optional[float], digits: int) -> str:
    return "–" if value is None else f"{value:.{digits}f}"
