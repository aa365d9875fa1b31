"""`eval coco` (mIoU): every scored COCO instance of an image prompted from its ground truth (box, point or
clicks, by the protocol preset) and its mask scored by IoU; the report gives mIoU x100 overall and per COCO
size bucket."""

from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
from segment_anything import SamPredictor

from .coco import MIN_AREA, CocoInstances
from .decoding import DecoderClock, Decoding, Target, box_ious, click_ious
from .protocol import MEDIUM_MAX_AREA, SIZE_BUCKETS, SMALL_MAX_AREA, Protocol, size_buckets
from .report import image_counts, number_cell, rate, table, time_split, time_split_cell
from .runner import Job

BUCKETS = ("all",) + SIZE_BUCKETS


class CocoMiou(Job):
    min_area = MIN_AREA  # the smallest annotation `area` scored (`CocoInstances`)
    file_order = False  # images in id order; True: in the annotation file's

    def __init__(self, dataset: CocoInstances, protocol: Protocol, batch_size: int,
                 max_images: Optional[int] = None) -> None:
        self.dataset, self.protocol, self.batch_size = dataset, protocol, batch_size
        self.image_ids: List[int] = dataset.image_ids(max_images, file_order=self.file_order)
        self.images_dir: Path = dataset.images_dir

    def settings(self) -> dict:
        return {"job": "coco-miou", "protocol": self.protocol.to_dict(), "annotations_sha256": self.dataset.sha256}

    def image_path(self, image_id: int) -> Path:
        return self.dataset.image_path(image_id)

    def original_size(self, image_id: int) -> Tuple[int, int]:
        return self.dataset.original_size(image_id)

    def score(self, predictor: SamPredictor, image_id: int, clock: DecoderClock) -> dict:
        """Empty masks (polygons too thin to cover a pixel) are listed; under `score_empty` they are scored
        too, and their IoU is 0 whatever the prediction, as EfficientViT-SAM's metric gives."""
        instances = self.dataset.instances(image_id)
        empty = [i.ann_id for i in instances if not i.mask.any()]
        if not self.protocol.score_empty:
            instances = [i for i in instances if i.mask.any()]
        decoding = Decoding(self.protocol.select, self.protocol.feed_logits,
                            both_empty_iou=0.0 if self.protocol.score_empty else 1.0)
        targets = [Target(i.mask, seed=i.ann_id) for i in instances]
        if self.protocol.prompt == "box":
            boxes = np.array([i.box for i in instances], dtype=np.float64).reshape(-1, 4)
            ious = box_ious(predictor, targets, boxes, decoding, clock, self.batch_size)
        else:
            rounds = self.protocol.click_rounds
            ious = click_ious(predictor, targets, self.protocol.rule, rounds, decoding, clock, self.batch_size)
            ious = ious[:, -1].tolist()
        scored = [{"id": i.ann_id, "area": i.area, "iou": iou} for i, iou in zip(instances, ious)]
        return {"instances": scored, "empty_masks": empty}

    def summarize(self, model_type: str, records: Sequence[dict], reference: Optional[dict]) -> dict:
        summary = miou_summary(records, self.protocol.inclusive_buckets)
        if reference is not None:
            summary["miou_minus_reference"] = differences(summary, reference)
        return summary

    def markdown_table(self, models: Sequence[dict]) -> str:
        return miou_table(models)

    def report_fields(self, models: Sequence[dict]) -> dict:
        protocol = self.protocol
        skipped = ("" if protocol.score_crowd else "iscrowd, or ") + f"area < {self.dataset.min_area:g}"
        return {
            "protocol": {
                **protocol.to_dict(),
                "source": protocol.source,
                "multimask_output": protocol.select != "single",
                "iou_at": "original image resolution",
                "pixels": "as stored (EXIF orientation not applied)",
                "size_bounds_area": {"small_max": SMALL_MAX_AREA, "large_min": MEDIUM_MAX_AREA,
                                     "bounds_in_both_buckets": protocol.inclusive_buckets},
                "skipped_annotations": skipped + ("" if protocol.score_empty else ", or an empty mask"),
            },
            "dataset": {**self.dataset.report_entry(self.image_ids),
                        "skipped_annotations": self.dataset.skipped_annotations(self.image_ids)},
        }


def miou_summary(records: Sequence[dict], inclusive_buckets: bool = False) -> dict:
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
        **image_counts(records, evaluated),
        "empty_masks": sum(len(r.get("empty_masks", [])) for r in evaluated),
        "seconds": seconds,
        "time_split": split,
        "images_per_s": rate(len(evaluated), seconds),
        "instances_per_s": rate(len(instances), seconds),
        "encoder_share": split["share"]["encoder"],
    }


def differences(summary: dict, reference: dict) -> Dict[str, Optional[float]]:
    """mIoU minus the reference's, per bucket (None where either has no instances)."""
    return {
        bucket: None if value is None or reference["miou"][bucket] is None else value - reference["miou"][bucket]
        for bucket, value in summary["miou"].items()
    }


def miou_table(models: Sequence[dict]) -> str:
    """models: dicts with `label` and the keys of `miou_summary`; the first row is the reference, the others
    show their difference to it in brackets."""
    header = ["model", "mIoU all", "small", "medium", "large", "instances", "images/s", "instances/s",
              "time: load/encoder/decoder/scoring"]
    rows = []
    for row, model in enumerate(models):
        delta = differences(model, models[0]) if row > 0 else {}
        cells = [model["label"]] + [_miou_cell(model["miou"][b], delta.get(b)) for b in BUCKETS]
        cells += [str(model["instances"]["all"]), number_cell(model["images_per_s"], 2)]
        cells += [number_cell(model["instances_per_s"], 1), time_split_cell(model["time_split"])]
        rows.append(cells)
    return table(header, rows)


def _mean_x100(values: List[float]) -> Optional[float]:
    return 100.0 * sum(values) / len(values) if values else None


def _miou_cell(value: Optional[float], delta: Optional[float]) -> str:
    if value is None:
        return "–"
    return f"{value:.1f}" if delta is None else f"{value:.1f} ({delta:+.1f})"
