"""`eval interactive`: click-to-segment quality as the interactive-segmentation papers measure it.

Each object gets `max_clicks` (20) clicks from RITM's clicker (`clicker.py`, rule `RITM_RULE`); after each
click the IoU of the chosen mask is recorded. From those curves, following RITM's `compute_noc_metric`
(SamsungLabs/ritm_interactive_segmentation, isegm/inference/utils.py):

- NoC@T: per object, the first click whose IoU >= T (1-based), or `max_clicks` if none does; averaged.
- NoF@T: how many objects have NoC@T == `max_clicks` (RITM's count, so an object that first reaches T at
  the last click counts too).
- mIoU@k: mean IoU after k clicks, x100.

Every object runs all `max_clicks` rounds (RITM stops at its target IoU, which does not change NoC), so one
run gives NoC at every threshold and the whole curve. With `--out`, the mIoU-per-click curves are plotted
there (`plot.py`).
"""

from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
from segment_anything import SamPredictor

from .coco import CocoInstances
from .decoding import DecoderClock, Decoding, Target, click_ious
from .masks import MaskFolders
from .plot import plot_curves
from .protocol import RITM_RULE
from .report import image_counts, number_cell, rate, table, time_split, time_split_cell
from .runner import Job

NOC_THRESHOLDS = (0.85, 0.90)
TABLE_CLICKS = (1, 3, 5)  # mIoU@k columns of the table, besides mIoU@max_clicks
PLOT_FILE = "iou_per_click.png"  # in out_dir


class ClickCurves(Job):
    """The IoU-per-click curve of every object of a mask-folder set or a COCO file; with `out_dir`, the
    models' mean curves plotted there."""

    def __init__(self, dataset: Union[MaskFolders, CocoInstances], decoding: Decoding, max_clicks: int,
                 batch_size: int, max_images: Optional[int] = None, out_dir: Optional[Path] = None) -> None:
        self.dataset, self.decoding, self.max_clicks, self.batch_size = dataset, decoding, max_clicks, batch_size
        self.out_dir = out_dir
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

    def original_size(self, image_id: int) -> Tuple[int, int]:
        return self.dataset.original_size(image_id)

    def score(self, predictor: SamPredictor, image_id: int, clock: DecoderClock) -> dict:
        if isinstance(self.dataset, MaskFolders):
            objects = [(o.object_id, Target(o.mask, o.ignore, seed=o.object_id)) for o in self.dataset.objects(image_id)]
        else:
            objects = [(i.ann_id, Target(i.mask, seed=i.ann_id)) for i in self.dataset.instances(image_id) if i.mask.any()]
        curves = click_ious(predictor, [t for _, t in objects], RITM_RULE, self.max_clicks, self.decoding, clock,
                            self.batch_size)
        return {"objects": [{"id": object_id, "ious": curve.tolist()} for (object_id, _), curve in zip(objects, curves)]}

    def summarize(self, model_type: str, records: Sequence[dict], reference: Optional[dict]) -> dict:
        return click_summary(records, self.max_clicks)

    def markdown_table(self, models: Sequence[dict]) -> str:
        return click_table(models, self.max_clicks)

    def report_fields(self, models: Sequence[dict]) -> dict:
        fields = {
            "protocol": {"clicker": "RITM (isegm/inference/clicker.py)", "click_rule": RITM_RULE.to_dict(),
                         "max_clicks": self.max_clicks, "select": self.decoding.select,
                         "feed_logits": self.decoding.feed_logits, "noc_thresholds": list(NOC_THRESHOLDS),
                         "nof": "objects whose NoC equals max_clicks (RITM's count)",
                         "pixels": "as stored (EXIF orientation not applied)"},
            "dataset": self.dataset.report_entry(self.image_ids),
        }
        if self.out_dir is not None:
            curves = [(model["label"], model["miou_per_click"]) for model in models]
            fields["plot"] = str(plot_curves(self.out_dir / PLOT_FILE, curves, "mIoU after each click"))
        return fields


def number_of_clicks(curve: Sequence[float], threshold: float, max_clicks: int) -> int:
    """RITM's NoC of one object: the first click (1-based) with IoU >= threshold, else `max_clicks`."""
    reached = np.flatnonzero(np.asarray(curve) >= threshold)
    return int(reached[0]) + 1 if len(reached) else max_clicks


def click_summary(records: Sequence[dict], max_clicks: int) -> dict:
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
        **image_counts(records, evaluated),
        "time_split": split,
        "images_per_s": rate(len(evaluated), split["seconds"]),
    }


def click_table(models: Sequence[dict], max_clicks: int) -> str:
    """models: dicts with `label` and the keys of `click_summary`."""
    clicks = [k for k in TABLE_CLICKS if k < max_clicks] + [max_clicks]
    header = ["model", "NoC@85", "NoC@90", "NoF@85", "NoF@90"] + [f"mIoU@{k}" for k in clicks]
    header += ["objects", "images/s", "time: load/encoder/decoder/scoring"]
    rows = []
    for model in models:
        curve = model["miou_per_click"]
        cells = [model["label"]] + [number_cell(model["noc"][t], 2) for t in ("85", "90")]
        cells += [str(model["nof"][t]) for t in ("85", "90")]
        cells += [f"{curve[k - 1]:.1f}" if curve else "–" for k in clicks]
        cells += [str(model["objects"]), number_cell(model["images_per_s"], 2), time_split_cell(model["time_split"])]
        rows.append(cells)
    return table(header, rows)
