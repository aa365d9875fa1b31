"""The evaluation loop: per model, each process takes its share of the images, encodes each image once,
decodes all of its instances in batches, and appends one record per image; rank 0 gathers the records."""

import time
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence

import torch
from segment_anything import SamPredictor
from segment_anything.modeling import Sam
from tqdm import tqdm

from ..build import build_sam
from ..errors import BiglSamError
from ..images import load_image
from ..modeling import BigLittleConfig
from ..modeling.config import check_keep_ratio, get_config
from .coco import CocoInstances
from .decoding import score_instances
from .protocol import Protocol
from .records import RecordLog, run_directory
from .sharding import Shard, gather_to_main

RANDOM_WEIGHTS_SEED = 0  # every process and every rerun builds the same random model


@dataclass(frozen=True)
class ModelSpec:
    """A registry name, its checkpoint (None: random weights), and the keep ratio asked for students."""

    name: str
    checkpoint: Optional[str] = None
    keep_ratio: Optional[float] = None

    def __post_init__(self) -> None:
        get_config(self.name)
        if self.keep_ratio is not None:
            check_keep_ratio(self.keep_ratio, "--keep-ratio")

    @property
    def random_weights(self) -> bool:
        return self.checkpoint is None

    @property
    def effective_keep_ratio(self) -> Optional[float]:
        """The share of tokens a student's P-path sees; None for SAM's own encoders."""
        config = get_config(self.name)
        if not isinstance(config, BigLittleConfig):
            return None
        return config.keep_ratio if self.keep_ratio is None else self.keep_ratio

    def settings(self) -> dict:
        """What identifies this model's results: name, weights file (path, size, time) and keep ratio.
        Called after `load`, which has checked that the file exists."""
        weights = None
        if self.checkpoint is not None:
            path = Path(self.checkpoint).resolve()
            weights = {"path": str(path), "bytes": path.stat().st_size, "mtime_ns": path.stat().st_mtime_ns}
        return {"model": self.name, "weights": weights, "keep_ratio": self.effective_keep_ratio}

    def load(self, device: torch.device) -> Sam:
        if self.random_weights:
            torch.manual_seed(RANDOM_WEIGHTS_SEED)
        model = build_sam(self.name, self.checkpoint)
        if self.effective_keep_ratio is not None:
            model.image_encoder.keep_ratio = self.effective_keep_ratio
        return model.to(device).eval()


@dataclass
class Evaluation:
    """One dataset selection under one protocol, run for any number of models."""

    dataset: CocoInstances
    image_ids: List[int]
    protocol: Protocol
    out_dir: Path
    shard: Shard
    device: torch.device
    batch_size: int = 16

    def run_model(self, spec: ModelSpec) -> Optional[List[dict]]:
        """Records of all selected images, in selection order, on rank 0 (None on other ranks)."""
        # Loaded first, even when all is done: a bad checkpoint then fails on every rank and writes nothing.
        predictor = SamPredictor(spec.load(self.device))
        annotations = str(self.dataset.annotations_path.resolve())
        settings = {**spec.settings(), "protocol": self.protocol.to_dict(), "annotations": annotations}
        log = RecordLog(run_directory(self.out_dir, spec.name, settings), self.shard.rank)
        done = log.read()
        mine = self.shard.take(self.image_ids)
        todo = [i for i in mine if "instances" not in done.get(i, {})]  # skipped images are tried again
        progress = tqdm(todo, desc=f"{spec.name} [rank {self.shard.rank}]", unit="image", leave=False)
        for image_id in progress:
            done[image_id] = self.evaluate_image(predictor, image_id)
            log.append(done[image_id])
        gathered = gather_to_main([done[i] for i in mine], self.shard)
        return None if gathered is None else in_selection_order(gathered, self.image_ids)

    def evaluate_image(self, predictor: SamPredictor, image_id: int) -> dict:
        """One image's record: each instance's id, area and IoU, and where the time went; or why it was skipped."""
        path = self.dataset.image_path(image_id)
        record = {"image_id": image_id, "file": path.name}
        start = time.perf_counter()
        try:
            image = load_image(path)
        except BiglSamError as err:
            return {**record, "skipped": str(err)}
        expected = self.dataset.image_size(image_id)
        if image.shape[:2] != expected:
            found, annotated = ("x".join(map(str, size)) for size in (image.shape[:2], expected))
            return {**record, "skipped": f"{path}: image is {found} (HxW), the annotations say {annotated}"}
        instances = self.dataset.instances(image_id)
        empty = [i.ann_id for i in instances if not i.mask.any()]  # polygons too thin to cover a pixel
        instances = [i for i in instances if i.mask.any()]
        loaded = self._clock()
        predictor.set_image(image)
        encoded = self._clock()
        ious = score_instances(predictor, instances, self.protocol, self.batch_size)
        decoded = self._clock()
        scored = [{"id": i.ann_id, "area": i.area, "iou": iou} for i, iou in zip(instances, ious)]
        return {
            **record,
            "instances": scored,
            "empty_masks": empty,
            "load_s": loaded - start,
            "encode_s": encoded - loaded,
            "decode_s": decoded - encoded,
        }

    def _clock(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter()


def in_selection_order(records: List[dict], image_ids: Sequence[int]) -> List[dict]:
    """One record per selected image, in selection order; a duplicate or a gap is a bug, not a result."""
    by_id = {record["image_id"]: record for record in records}
    missing = [i for i in image_ids if i not in by_id]
    if len(by_id) != len(records) or missing or len(records) != len(image_ids):
        raise RuntimeError(f"gathered {len(records)} records for {len(image_ids)} images; missing: {missing[:5]}")
    return [by_id[i] for i in image_ids]


def evaluate_models(evaluation: Evaluation, specs: Sequence[ModelSpec]) -> Optional[List[List[dict]]]:
    """Per model, the records of every selected image (rank 0), or None on the other ranks."""
    results = [evaluation.run_model(spec) for spec in specs]
    return results if evaluation.shard.is_main else None
