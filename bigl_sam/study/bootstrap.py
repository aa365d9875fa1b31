"""95% bootstrap intervals over instances, from eval's per-image records.

`bigl-sam eval coco` writes, per model, `OUT/runs/<model>-<settings hash>/part-<rank>.jsonl`: one record per
image, `instances: [{id, area, iou}, ...]` (the job's prompt: box, point or clicks). `eval interactive`
writes `objects: [{id, ious: [IoU after click 1, 2, ...]}, ...]`. An instance is (image id, annotation or
object id); skipped images have no instances.

A row and the teacher are compared *paired*: both are scored on the same instances, and each bootstrap
resample draws instances (with replacement, uniformly) once and computes both means on that same draw, so
the row's share of the teacher's mIoU has an interval that the instances' shared difficulty does not
widen. The interval is the percentile interval (2.5th and 97.5th percentiles of the resampled statistic).
"""

from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterable, Optional, Tuple

import numpy as np

from ..errors import BiglSamError
from ..evaluation.records import RecordLog

Instance = Tuple[int, int]  # (image id, annotation or object id)
RESAMPLES = 10000
CONFIDENCE = 0.95


@dataclass(frozen=True)
class Interval:
    """A statistic on the instances as measured, and its bootstrap percentile interval."""

    value: float
    low: float
    high: float

    def to_dict(self) -> dict:
        return {"value": self.value, "low": self.low, "high": self.high}


def read_records(run_dir: Path) -> Iterable[dict]:
    """The records of one eval run folder (every process's part file), one per image."""
    run_dir = Path(run_dir)
    if not any(run_dir.glob("part-*.jsonl")):
        raise BiglSamError(f"{run_dir}: no part-*.jsonl records; expected an eval run folder (OUT/runs/<model>-<hash>)")
    return RecordLog(run_dir, 0).read().values()


def instance_ious(records: Iterable[dict], click: Optional[int] = None) -> Dict[Instance, float]:
    """(image id, instance id) -> IoU, from `eval coco` records (`instances`), or from `eval interactive`
    records (`objects`) after click `click` (1-based; None: the last click recorded)."""
    ious: Dict[Instance, float] = {}
    for record in records:
        image_id = int(record["image_id"])
        for instance in record.get("instances", []):
            ious[(image_id, int(instance["id"]))] = float(instance["iou"])
        for obj in record.get("objects", []):
            curve = obj["ious"]
            if click is not None and not 1 <= click <= len(curve):
                raise BiglSamError(f"image {image_id}, object {obj['id']}: no IoU after click {click} "
                                   f"({len(curve)} recorded)")
            ious[(image_id, int(obj["id"]))] = float(curve[-1 if click is None else click - 1])
    return ious


def paired_ious(row: Dict[Instance, float], teacher: Dict[Instance, float]) -> Tuple[np.ndarray, np.ndarray]:
    """The two rows' IoUs on the same instances, in one order; a `BiglSamError` if they scored different
    instances (another dataset or protocol, or images skipped in one of them)."""
    if not row:
        raise BiglSamError("no scored instance in the records")
    if row.keys() != teacher.keys():
        only_row, only_teacher = len(row.keys() - teacher.keys()), len(teacher.keys() - row.keys())
        raise BiglSamError(f"the row and the teacher scored different instances ({only_row} only in the row, "
                           f"{only_teacher} only in the teacher's): compare runs on the same data and protocol")
    keys = sorted(row)
    return np.array([row[k] for k in keys]), np.array([teacher[k] for k in keys])


def resample_indexes(count: int, resamples: int, seed: int) -> np.ndarray:
    """resamples x count instance indexes drawn uniformly with replacement, from a generator of `seed`."""
    return np.random.default_rng(seed).integers(0, count, size=(resamples, count))


def percentile_interval(value: float, resampled: np.ndarray, confidence: float = CONFIDENCE) -> Interval:
    tail = 100 * (1 - confidence) / 2
    low, high = np.percentile(resampled, [tail, 100 - tail])
    return Interval(float(value), float(low), float(high))


def miou_interval(ious: np.ndarray, resamples: int = RESAMPLES, seed: int = 0) -> Interval:
    """mIoU x100 of `ious` (one per instance) and its 95% bootstrap interval."""
    draws = resample_indexes(len(ious), resamples, seed)
    return percentile_interval(100 * ious.mean(), 100 * ious[draws].mean(axis=1))


def paired_intervals(
    row: Dict[Instance, float], teacher: Dict[Instance, float], resamples: int = RESAMPLES, seed: int = 0
) -> dict:
    """The row's and the teacher's mIoU x100 and the row's share of the teacher's (row / teacher), each with
    its 95% interval, all three from the same resampled instances."""
    row_ious, teacher_ious = paired_ious(row, teacher)
    if teacher_ious.sum() <= 0:
        raise BiglSamError("the teacher's mIoU is 0: no share of it can be taken")
    draws = resample_indexes(len(row_ious), resamples, seed)
    row_means, teacher_means = row_ious[draws].mean(axis=1), teacher_ious[draws].mean(axis=1)
    share = np.divide(row_means, teacher_means, out=np.full_like(row_means, np.nan), where=teacher_means > 0)
    return {
        "instances": len(row_ious),
        "resamples": resamples,
        "seed": seed,
        "miou": percentile_interval(100 * row_ious.mean(), 100 * row_means).to_dict(),
        "teacher_miou": percentile_interval(100 * teacher_ious.mean(), 100 * teacher_means).to_dict(),
        "share": percentile_interval(row_ious.mean() / teacher_ious.mean(), share[np.isfinite(share)]).to_dict(),
    }
