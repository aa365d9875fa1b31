"""`eval coco --boxes DETECTIONS.json`: COCO mask AP with a detector's boxes as prompts (the zero-shot
instance segmentation of SAM, Tab. 5, and of EfficientViT-SAM, EdgeSAM, TinySAM, RepViT-SAM).

Each detection above `--score-threshold` becomes a box prompt; its mask is kept as a COCO segmentation result
(compressed RLE) with the detection's image, category and score; pycocotools' COCOeval (segm) scores all of
them against the annotations. As in mit-han-lab/efficientvit, applications/efficientvit_sam/
eval_efficientvit_sam_model.py (`run_box_from_detector`): multimask output, the argmax of the predicted IoU,
and COCOeval with its default settings (maxDets 1/10/100). A segmentation result carries no `bbox`, as
detectron2 and EfficientViT-SAM (`sam_eval_utils.evaluate_predictions_on_coco`) drop it before `loadRes`:
with a `bbox`, pycocotools sets the result's `area` to the box's w x h, and APs / APm / APl would then sort
the detections by box area instead of mask area.
"""

import contextlib
import copy
import io
import json
import math
from collections import defaultdict
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
from pycocotools import mask as mask_utils
from pycocotools.cocoeval import COCOeval
from segment_anything import SamPredictor

from ..errors import BiglSamError
from ..fileio import atomic_write_text
from ..weights import sha256_of
from .coco import CocoInstances, read_json
from .decoding import DecoderClock, Decoding, box_masks
from .protocol import box_xywh_to_xyxy
from .report import image_counts, number_cell, rate, table, time_split, time_split_cell
from .runner import Job

AP_METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl")  # COCOeval.stats[0:6], x100
SEGMENTATION_KEYS = ("image_id", "category_id", "score")  # of the detection, kept in its segmentation result
SEGMENTATION_RESULTS = "segmentations_{model}.json"  # in out_dir, per model


def read_detections(path: Path, dataset: CocoInstances, score_threshold: float) -> Dict[int, List[dict]]:
    """image id -> its detections with score >= `score_threshold`, highest score first. A file that is not
    a list of detections, or a detection that names an unknown image or lacks a field, is one error line."""
    detections = read_json(path, "detections file")
    if not isinstance(detections, list):
        raise BiglSamError(f"{path}: not a COCO results file (needs a list of detections, got {type(detections).__name__})")
    kept: Dict[int, List[dict]] = defaultdict(list)
    for index, det in enumerate(detections):
        _check_detection(path, index, det, dataset)
        if det["score"] >= score_threshold:
            kept[det["image_id"]].append({"image_id": det["image_id"], "category_id": det["category_id"],
                                          "bbox": [float(v) for v in det["bbox"]], "score": float(det["score"])})
    for dets in kept.values():
        dets.sort(key=lambda d: -d["score"])
    return dict(kept)


def _check_detection(path: Path, index: int, det, dataset: CocoInstances) -> None:
    name = f"{path}: detection {index}"
    if not isinstance(det, dict):
        raise BiglSamError(f"{name} is not an object ({str(det)[:60]})")
    for key in ("image_id", "category_id", "bbox", "score"):
        if key not in det:
            raise BiglSamError(f"{name} has no {key!r}")
    if det["image_id"] not in dataset.coco.imgs:
        raise BiglSamError(f"{name} names image id {det['image_id']!r}, which {dataset.annotations_path.name} does not have")
    if det["category_id"] not in dataset.coco.cats:
        raise BiglSamError(f"{name} names category id {det['category_id']!r}, which {dataset.annotations_path.name} does not have")
    bbox, score = det["bbox"], det["score"]
    if not isinstance(bbox, list) or len(bbox) != 4 or not all(_is_finite(v) for v in bbox) or bbox[2] < 0 or bbox[3] < 0:
        raise BiglSamError(f"{name}: bbox must be 4 finite numbers [x, y, width, height] with width, height >= 0, "
                           f"got {bbox!r}")
    if not (_is_finite(score) and 0.0 <= score <= 1.0):
        raise BiglSamError(f"{name}: score must be a detector's confidence in [0, 1] (as --score-threshold), "
                           f"got {score!r}")


def _is_finite(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


class DetectionMasks(Job):
    """Every image of the annotation file (with or without detections: AP counts both), in id order. With
    `out_dir`, each model's masks are written there as a COCO results file."""

    def __init__(self, dataset: CocoInstances, detections_path: Path, score_threshold: float, select: str,
                 batch_size: int, max_images: Optional[int] = None, out_dir: Optional[Path] = None) -> None:
        if not 0.0 <= score_threshold <= 1.0:
            raise BiglSamError(f"--score-threshold must be in [0, 1], got {score_threshold}")
        self.dataset, self.batch_size = dataset, batch_size
        self.decoding = Decoding(select, feed_logits=False)
        if select == "oracle":
            raise BiglSamError("--select oracle needs a ground-truth mask per prompt; detections have none")
        self.detections_path, self.score_threshold = Path(detections_path), score_threshold
        self.image_ids: List[int] = dataset.image_ids(max_images, with_instances=False)
        self.images_dir: Path = dataset.images_dir
        self.detections = read_detections(self.detections_path, dataset, score_threshold)
        if not any(self.detections.get(i) for i in self.image_ids):
            raise BiglSamError(f"{self.detections_path}: no detection with score >= {score_threshold} on the "
                               f"{len(self.image_ids)} selected images")
        self.sha256 = sha256_of(self.detections_path, progress=False)
        self.out_dir = out_dir

    def settings(self) -> dict:
        return {"job": "coco-detections", "select": self.decoding.select, "annotations_sha256": self.dataset.sha256,
                "detections_sha256": self.sha256, "score_threshold": self.score_threshold}

    def image_path(self, image_id: int) -> Path:
        return self.dataset.image_path(image_id)

    def original_size(self, image_id: int) -> Tuple[int, int]:
        return self.dataset.original_size(image_id)

    def needs_image(self, image_id: int) -> bool:
        return bool(self.detections.get(image_id))

    def score(self, predictor: SamPredictor, image_id: int, clock: DecoderClock) -> dict:
        dets = self.detections.get(image_id, [])
        results = []
        for start in range(0, len(dets), self.batch_size):
            batch = dets[start : start + self.batch_size]
            boxes = np.array([box_xywh_to_xyxy(d["bbox"]) for d in batch], dtype=np.float64)
            masks = box_masks(predictor, boxes, self.decoding, clock).cpu().numpy()
            for det, mask in zip(batch, masks):
                rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
                segmentation = {"size": rle["size"], "counts": rle["counts"].decode("ascii")}
                results.append({key: det[key] for key in SEGMENTATION_KEYS} | {"segmentation": segmentation})
        return {"segmentations": results}

    def summarize(self, model_type: str, records: Sequence[dict], reference: Optional[dict]) -> dict:
        out_file = None if self.out_dir is None else self.out_dir / SEGMENTATION_RESULTS.format(model=model_type)
        return ap_summary(records, self.dataset, out_file)

    def markdown_table(self, models: Sequence[dict]) -> str:
        return ap_table(models)

    def report_fields(self, models: Sequence[dict]) -> dict:
        return {
            "protocol": {"prompt": "detector boxes", "select": self.decoding.select,
                         "multimask_output": self.decoding.select != "single", "score_threshold": self.score_threshold,
                         "metric": "COCOeval segm, maxDets 1/10/100",
                         "pixels": "as stored (EXIF orientation not applied)",
                         "source": "mit-han-lab/efficientvit applications/efficientvit_sam/eval_efficientvit_sam_model.py"},
            "dataset": {**self.dataset.report_entry(self.image_ids), "detections": str(self.detections_path),
                        "detections_sha256": self.sha256},
        }


def segmentation_results(records: Sequence[dict]) -> List[dict]:
    """The COCO results file: every mask of every scored image, in image order."""
    return [result for r in records if "segmentations" in r for result in r["segmentations"]]


def coco_ap(dataset: CocoInstances, results: List[dict], image_ids: Sequence[int]) -> Dict[str, Optional[float]]:
    """COCOeval segm AP, AP50, AP75, APs, APm, APl (x100) of `results` on `image_ids`, each result's area
    that of its mask (a `bbox` is dropped, as in the module docstring); COCOeval's printout is not shown.
    None for all when there is no result, and for a size range without ground truth."""
    if not results:
        return {metric: None for metric in AP_METRICS}
    masks_only = [{key: value for key, value in result.items() if key != "bbox"} for result in results]
    with contextlib.redirect_stdout(io.StringIO()):
        detections = dataset.coco.loadRes(copy.deepcopy(masks_only))
        evaluation = COCOeval(dataset.coco, detections, "segm")
        evaluation.params.imgIds = list(image_ids)
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    # COCOeval says -1 where a size range has no ground truth
    return {metric: None if value < 0 else 100.0 * float(value) for metric, value in zip(AP_METRICS, evaluation.stats[:6])}


def ap_summary(records: Sequence[dict], dataset: CocoInstances, out_file: Optional[Path]) -> dict:
    """One model's AP; with `out_file`, its masks written there as a COCO segmentation results file."""
    evaluated = [r for r in records if "segmentations" in r]
    results = segmentation_results(evaluated)
    if out_file is not None:
        atomic_write_text(out_file, json.dumps(results) + "\n")
    split = time_split(evaluated)
    return {
        "ap": coco_ap(dataset, results, [r["image_id"] for r in evaluated]),
        "masks": len(results),
        **image_counts(records, evaluated),
        "segmentation_results": None if out_file is None else str(out_file),
        "time_split": split,
        "images_per_s": rate(sum(bool(r["segmentations"]) for r in evaluated), split["seconds"]),
    }


def ap_table(models: Sequence[dict]) -> str:
    """models: dicts with `label` and the keys of `ap_summary`."""
    header = ["model", *AP_METRICS, "masks", "images/s", "time: load/encoder/decoder/scoring"]
    rows = [[model["label"], *(number_cell(model["ap"][m], 1) for m in AP_METRICS), str(model["masks"]),
             number_cell(model["images_per_s"], 2), time_split_cell(model["time_split"])] for model in models]
    return table(header, rows)
