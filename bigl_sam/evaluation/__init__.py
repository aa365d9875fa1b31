"""Evaluation of SAM and big.LITTLE encoders under published protocols: COCO mIoU (`eval coco`), COCO AP from
detector boxes (`eval coco --boxes`) and interactive segmentation NoC (`eval interactive`).

`protocol.py` holds the presets and the metric, `clicker.py` the simulated user, `coco.py` and `masks.py` read
the datasets, `decoding.py` decodes all prompts of one encoded image in batches, `runner.py` encodes each
image once and keeps resumable per-image records; `instances.py` (with `edgesam.py`), `detections.py` and
`interactive.py` are the jobs, each with its report (`report.py` has what the reports share); `coco_jobs.py`
and `interactive_jobs.py` declare the options of `eval coco` and `eval interactive` and build their jobs,
registered in `cli.py`.
"""

from .clicker import Click, Clicker, ClickRule, interior_point
from .protocol import PRESETS, Protocol, mask_iou, size_buckets

__all__ = ["Click", "Clicker", "ClickRule", "PRESETS", "Protocol", "interior_point", "mask_iou", "size_buckets"]
