"""`eval interactive`: click-to-segment quality as the interactive-segmentation papers measure it.

Each object gets `max_clicks` (20) clicks from RITM's clicker (`clicker.py`, rule `RITM_RULE`); after each
click the IoU of the chosen mask is recorded. From those curves, following RITM's `compute_noc_metric`
(SamsungLabs/ritm_interactive_segmentation, isegm/inference/utils.py):

- NoC@T: per object, the first click whose IoU >= T (1-based), or `max_clicks` if none does; averaged.
- NoF@T: how many objects have NoC@T == `max_clicks` (RITM's count, so an object that first reaches T at
  the last click counts too).
- mIoU@k: mean IoU after k clicks, x100.

Every object runs all `max_clicks` rounds (RITM stops at its target IoU, which does not change NoC), so one
run gives NoC at every threshold and the whole curve.
"""

from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
from segment_anything import SamPredictor

from .coco import CocoInstances
from .decoding import DecoderClock, Decoding, Target, click_ious
from .masks import MaskFolders
from .protocol import RITM_RULE
from .report import rate, time_split, time_split_cell
from .runner import Job

NOC_THRESHOLDS = (0.85, 0.90)
DEFAULT_MAX_CLICKS = 20
TABLE_CLICKS = (1, 3, 5)  # mIoU@k columns of the table, besides mIoU@max_clicks


class ClickCurves(Job):
    """The IoU-per-click curve of every object of a mask-folder set or a COCO file."""

    def __init__(self, dataset: Union[MaskFolders, CocoInstances], decoding: Decoding, max_clicks: int,
                 batch_size: int, max_images: Optional[int] = None) -> None:
        self.dataset, self.decoding, self.max_clicks, self.batch_size = dataset, decoding, max_clicks, batch_size
        self.image_ids: List[int] = dataset.image_ids(max_images)
        self.images_dir: Path = dataset.images_dir

    def settings(self) -> dict:
        data = self.dataset
        if isinstance(data, MaskFolders):
            source = {"masks": "folders", "ignore_value": data.ignore_value, "union": data.union,
                      "object_above": data.object_above, "stems": data.stems}
        else:
            source = {"annotations_sha256": data.sha256}
        return {"job": "interactive", "click_rule": RITM_RULE.to_dict(), "select": self.decoding.select,
                "feed_logits": self.decoding.feed_logits, "max_clicks": self.max_clicks, **source}

    def image_path(self, image_id: int) -> Path:
        return self.dataset.image_path(image_id)

    def image_size(self, image_id: int) -> Tuple[int, int]:
        return self.dataset.image_size(image_id)

    def score(self, predictor: SamPredictor, image_id: int, clock: DecoderClock) -> dict:
        if isinstance(self.dataset, MaskFolders):
            objects = [(o.object_id, Target(o.mask, o.ignore, seed=o.object_id)) for o in self.dataset.objects(image_id)]
        else:
            objects = [(i.ann_id, Target(i.mask, seed=i.ann_id)) for i in self.dataset.instances(image_id) if i.mask.any()]
        curves = click_ious(predictor, [t for _, t in objects], RITM_RULE, self.max_clicks, self.decoding, clock,
                            self.batch_size)
        return {"objects": [{"id": object_id, "ious": curve.tolist()} for (object_id, _), curve in zip(objects, curves)]}


def number_of_clicks(curve: Sequence[float], threshold: float, max_clicks: int) -> int:
    """RITM's NoC of one object: the first click (1-based) with IoU >= threshold, else `max_clicks`."""
    reached = np.flatnonzero(np.asarray(curve) >= threshold)
    return int(reached[0]) + 1 if len(reached) else max_clicks


def summarize(records: Sequence[dict], max_clicks: int) -> dict:
    """One model's NoC, NoF and mIoU-per-click from its image records."""
    evaluated = [r for r in records if "objects" in r]
    curves = [o["ious"] for r in evaluated for o in r["objects"]]
    noc: Dict[str, Optional[float]] = {}
    nof: Dict[str, int] = {}
    for threshold in NOC_THRESHOLDS:
        key = f"{round(threshold * 100)}"
        counts = [number_of_clicks(c, threshold, max_clicks) for c in curves]
        noc[key] = float(np.mean(counts)) if counts else None
        nof[key] = sum(c == max_clicks for c in counts)
    per_click = (100.0 * np.mean(np.asarray(curves), axis=0)).tolist() if curves else []
    split = time_split(evaluated)
    return {
        "noc": noc,
        "nof": nof,
        "miou_per_click": per_click,
        "objects": len(curves),
        "images": len(evaluated),
        "skipped_images": [{"file": r["file"], "reason": r["skipped"]} for r in records if "skipped" in r],
        "exif_rotated_images": sum("exif_orientation" in r for r in evaluated),
        "time_split": split,
        "images_per_s": rate(len(evaluated), split["seconds"]),
    }


def markdown_table(models: Sequence[dict], max_clicks: int) -> str:
    """models: dicts with `label` and the keys of `summarize`."""
    clicks = [k for k in TABLE_CLICKS if k < max_clicks] + [max_clicks]
    header = ["model", "NoC@85", "NoC@90", "NoF@85", "NoF@90"] + [f"mIoU@{k}" for k in clicks]
    header += ["objects", "images/s", "time: load/encoder/decoder/scoring"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for model in models:
        curve = model["miou_per_click"]
        cells = [model["label"]]
        cells += ["–" if model["noc"][t] is None else f"{model['noc'][t]:.2f}" for t in ("85", "90")]
        cells += [str(model["nof"][t]) for t in ("85", "90")]
        cells += [f"{curve[k - 1]:.1f}" if curve else "–" for k in clicks]
        cells += [str(model["objects"]), "–" if model["images_per_s"] is None else f"{model['images_per_s']:.2f}"]
        cells.append(time_split_cell(model["time_split"]))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
