"""COCO mIoU evaluation of SAM and big.LITTLE encoders under one fixed prompting protocol.

The protocol is in `protocol.py` (docs/evaluation.md spells it out); `coco.py` reads the annotations,
`runner.py` encodes each image once and decodes all of its instances in batches, `report.py` turns the
per-image records into the table.
"""

from .protocol import Protocol, interior_point, mask_iou, next_click, size_bucket

__all__ = ["Protocol", "interior_point", "mask_iou", "next_click", "size_bucket"]
