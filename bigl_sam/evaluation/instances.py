"""`eval coco` (mIoU): every scored COCO instance of an image prompted from its ground truth (box, point or
clicks, by the protocol preset) and its mask scored by IoU."""

from pathlib import Path
from typing import List, Optional, Tuple

import numpy as np
from segment_anything import SamPredictor

from .coco import MIN_AREA, CocoInstances
from .decoding import DecoderClock, Decoding, Target, box_ious, click_ious
from .protocol import Protocol
from .runner import Job


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

    def image_size(self, image_id: int) -> Tuple[int, int]:
        return self.dataset.image_size(image_id)

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
