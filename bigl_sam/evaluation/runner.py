"""The evaluation loop shared by every job: per model, each process takes its share of the images, reads each
image as stored, encodes it once, lets the job decode and score all of its prompts, and appends one record
per image; rank 0 gathers the records.

A job (`instances.CocoMiou`, `edgesam.EdgeSamMiou`, `interactive.ClickCurves`, `detections.DetectionMasks`)
says which images, what identifies its results (`settings`), how an image is encoded (`encode`; SAM's own
preprocessing unless it says otherwise) and how one encoded image is scored (`score`); then, from the
records, each model's numbers (`summarize`), the table of all models (`markdown_table`) and what the report
says beside them (`report_fields`).
"""

import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from segment_anything import SamPredictor
from tqdm import tqdm

from ..distributed import Process, autocast, gather_to_main, take_unfinished, torch_dtype
from ..errors import BiglSamError
from ..fingerprint import changed_line, image_fingerprint
from ..images import UPRIGHT, load_image, orientation_tag
from ..pretrained import ModelSpec
from .decoding import DecoderClock
from .records import SETTINGS_FILE, RecordLog, run_directory


class Job:
    """What the runner and the report need from a job; see the module docstring. out_dir: where the job
    writes its extra files (masks, plots; None: it writes none)."""

    image_ids: List[int]
    images_dir: Path
    out_dir: Optional[Path] = None
    # True when a record depends on which other images the process scored before it (then the number of
    # processes is part of the run's settings).
    results_depend_on_sharding = False

    def settings(self) -> dict:
        raise NotImplementedError

    def image_path(self, image_id: int) -> Path:
        raise NotImplementedError

    def original_size(self, image_id: int) -> Tuple[int, int]:
        """(height, width) the image must have."""
        raise NotImplementedError

    def resume(self, mine: Sequence[int], done: Dict[int, dict]) -> None:
        """Called before each model's run with this process's images, in order, and their records so far."""

    def encode(self, predictor: SamPredictor, image: np.ndarray) -> None:
        """Sets the H x W x 3 uint8 image in `predictor`."""
        predictor.set_image(image)

    def needs_image(self, image_id: int) -> bool:
        """False when the image has nothing to prompt (it is then neither read nor encoded)."""
        return True

    def score(self, predictor: SamPredictor, image_id: int, clock: DecoderClock) -> dict:
        """The job's fields of the image's record, from the encoded image in `predictor`."""
        raise NotImplementedError

    def summarize(self, model_type: str, records: Sequence[dict], reference: Optional[dict]) -> dict:
        """One model's numbers from the records of every selected image (in selection order); `reference`:
        the first model's summary (None for the first model itself)."""
        raise NotImplementedError

    def markdown_table(self, models: Sequence[dict]) -> str:
        """One row per model; models: dicts with `label` and the keys of `summarize`, the reference first."""
        raise NotImplementedError

    def report_fields(self, models: Sequence[dict]) -> dict:
        """What results.json says beside the models: the protocol and the dataset at least."""
        raise NotImplementedError


@dataclass
class Evaluation:
    """One job run for any number of models. dtype: float32, or bfloat16 autocast for encoder and decoder."""

    job: Job
    out_dir: Path
    process: Process
    dtype: str = "float32"
    settings: List[dict] = field(default_factory=list)  # per model run, what `ModelSpec.settings` said

    def __post_init__(self) -> None:
        torch_dtype(self.dtype)  # an unknown name is one error line

    def run_model(self, spec: ModelSpec) -> Optional[List[dict]]:
        """Records of all selected images, in selection order, on rank 0 (None on other ranks)."""
        # Loaded first, even when all is done: a bad checkpoint then fails on every rank and writes nothing.
        model = spec.load(self.process.device)
        predictor = SamPredictor(model)
        settings = {**spec.settings(model), **self.job.settings(), "dtype": self.dtype}
        if self.job.results_depend_on_sharding:
            settings["world_size"] = self.process.world_size
        self.settings.append(settings)
        earlier = _runs(self.out_dir, spec.model_type)
        run_dir = run_directory(self.out_dir, spec.model_type, settings)
        if self.process.is_main and earlier and all(found != settings for _, found in earlier):
            latest, found = earlier[-1]
            tqdm.write(f"{spec.model_type}: a new run in {run_dir}, as {latest} was made with other settings "
                       f"({changed_line(found, settings)})", file=sys.stderr)
        log = RecordLog(run_dir, self.process.rank)
        done = log.read()
        changed = [i for i in self.process.take(self.job.image_ids)
                   if _finished(done.get(i)) and self._image_changed(done[i])]
        if changed:
            tqdm.write(f"{spec.model_type} [rank {self.process.rank}]: {len(changed)} images changed since they were "
                       f"scored (e.g. {done[changed[0]]['file']}): scoring them again", file=sys.stderr)
        for image_id in changed:
            del done[image_id]
        mine, todo = take_unfinished(self.job.image_ids, self.process, lambda i: _finished(done.get(i)),
                                     spec.model_type, run_dir)  # skipped images are tried again
        self.job.resume(mine, done)
        progress = tqdm(todo, desc=f"{spec.model_type} [rank {self.process.rank}]", unit="image", leave=False)
        for image_id in progress:
            done[image_id] = self.evaluate_image(predictor, image_id)
            log.append(done[image_id])
            if "skipped" in done[image_id]:
                tqdm.write(f"skipped {done[image_id]['file']}: {done[image_id]['skipped']}", file=sys.stderr)
        gathered = gather_to_main([done[i] for i in mine], self.process)
        return None if gathered is None else in_selection_order(gathered, self.job.image_ids)

    def evaluate_image(self, predictor: SamPredictor, image_id: int) -> dict:
        """One image's record: the job's fields, the EXIF orientation tag when it is not upright, and where the
        time went (load, encoder, decoder, the rest of scoring); or why it was skipped."""
        path = self.job.image_path(image_id)
        record = {"image_id": image_id, "file": path.name}
        if not self.job.needs_image(image_id):
            return {**record, **self.job.score(predictor, image_id, DecoderClock(self.process.device)),
                    "load_s": 0.0, "encode_s": 0.0, "decode_s": 0.0, "score_s": 0.0}
        start = time.perf_counter()
        try:
            image = load_image(path, exif=False)  # pixels as stored, as the annotations are
        except BiglSamError as err:
            return {**record, "skipped": str(err)}
        expected = self.job.original_size(image_id)
        if image.shape[:2] != tuple(expected):
            found, annotated = ("x".join(map(str, size)) for size in (image.shape[:2], expected))
            return {**record, "skipped": f"{path}: image is {found} (HxW), the annotations say {annotated}"}
        orientation = orientation_tag(path)
        if orientation != UPRIGHT:
            record["exif_orientation"] = orientation
        record["image_fingerprint"] = image_fingerprint(path)
        loaded = self._clock()
        with autocast(self.process.device, self.dtype):
            self.job.encode(predictor, image)
            encoded = self._clock()
            clock = DecoderClock(self.process.device)
            fields = self.job.score(predictor, image_id, clock)
        scored = self._clock()
        return {**record, **fields, "load_s": loaded - start, "encode_s": encoded - loaded,
                "decode_s": clock.seconds, "score_s": scored - encoded - clock.seconds}

    def _image_changed(self, record: dict) -> bool:
        """Whether the image file of a finished record is not the one it was scored on (replaced under the
        same name); records without a fingerprint (nothing read) or of a vanished file are kept."""
        path = self.job.image_path(record["image_id"])
        if "image_fingerprint" not in record or not path.is_file():
            return False
        return record["image_fingerprint"] != image_fingerprint(path)

    def _clock(self) -> float:
        if self.process.device.type == "cuda":
            torch.cuda.synchronize(self.process.device)
        return time.perf_counter()


def score_in_memory(job: Job, predictor: SamPredictor, device: torch.device, dtype: str = "float32",
                    label: str = "") -> dict:
    """`job`'s summary of `predictor` on every selected image, in this process, with no records written
    (held-out scores during training, trivial baselines): each image scored as `Evaluation` scores it."""
    evaluation = Evaluation(job, out_dir=None, process=Process(0, 1, device), dtype=dtype)
    records = [evaluation.evaluate_image(predictor, image_id) for image_id in job.image_ids]
    return job.summarize(label, records, None)


def _runs(out_dir: Path, model_name: str) -> List[Tuple[Path, dict]]:
    """The runs of `model_name` in `out_dir` with their settings, the most recently started last."""
    runs = []
    for _, path in sorted((p.stat().st_mtime_ns, p) for p in Path(out_dir).glob(f"runs/{model_name}-*/{SETTINGS_FILE}")):
        try:
            runs.append((path.parent, json.loads(path.read_text())))
        except (OSError, ValueError):
            continue
    return runs


def _finished(record: Optional[dict]) -> bool:
    return record is not None and "skipped" not in record


def in_selection_order(records: List[dict], image_ids: Sequence[int]) -> List[dict]:
    """One record per selected image, in selection order; a duplicate or a gap is a bug, not a result."""
    by_id = {record["image_id"]: record for record in records}
    missing = [i for i in image_ids if i not in by_id]
    if len(by_id) != len(records) or missing or len(records) != len(image_ids):
        raise RuntimeError(f"gathered {len(records)} records for {len(image_ids)} images; missing: {missing[:5]}")
    return [by_id[i] for i in image_ids]


def evaluate_models(evaluation: Evaluation, specs: Sequence[ModelSpec]) -> Optional[List[List[dict]]]:
    """Per model, the records of every selected image (rank 0), or None on the other ranks. On rank 0, a
    `BiglSamError` when not one image could be read for any model (the records stay on disk)."""
    results = [evaluation.run_model(spec) for spec in specs]
    if not evaluation.process.is_main:
        return None
    skipped = [r for records in results for r in records if "skipped" in r]
    if len(skipped) == sum(len(records) for records in results):
        example = evaluation.job.image_path(skipped[0]["image_id"])
        raise BiglSamError(f"no image could be scored: looked in {evaluation.job.images_dir}, e.g. {example} "
                           f"({skipped[0]['skipped']})")
    return results
