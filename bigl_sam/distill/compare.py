"""`bigl-sam distill compare`: how far students are from their teacher on held-out images, without labels.

For each image, the teacher (a SAM-layout file) and each student at each keep ratio go through
`SamPredictor` exactly as a user runs them; measured per (student, keep ratio), averaged over images:
- `rel_error`: ||student - teacher|| / ||teacher|| of the 256 x 64 x 64 embeddings, over the full grid;
- `box_iou`, `point_iou`: IoU of the student's mask and the teacher's for the same prompt (single-mask
  output), over fixed prompts: the 4 quadrant boxes and the centre half-box of the image, and a 3 x 3 grid of
  single positive points.
`removed` is the share of the baseline's error at the same keep ratio that a student removed: the baseline
is the first `--student` (so `--student bigl_b_t --student RUN/final.pth`, before and after training, reads
as one table), or the first student of an earlier run's JSON (`--baseline`).
"""

import json
import math
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
from segment_anything import SamPredictor
from tqdm import tqdm

from ..checkpoint import ModelReader, atomic_save, read_checkpoint
from ..distributed import autocast
from ..errors import BiglSamError
from ..evaluation.protocol import mask_iou
from ..fileio import atomic_write_text
from ..images import load_image
from ..modeling.config import check_keep_ratio
from .cache import list_images
from ..training.sampler import split_holdout
from .student import build_student
from .teacher import load_sam_teacher

GRID_POINTS = 3  # a GRID_POINTS x GRID_POINTS grid of point prompts per image


def prompts(height: int, width: int) -> Dict[str, List[np.ndarray]]:
    """Fixed prompts in image pixels: "box" (x0, y0, x1, y1) and "point" (x, y)."""
    w, h = width, height
    boxes = [(0, 0, w / 2, h / 2), (w / 2, 0, w, h / 2), (0, h / 2, w / 2, h), (w / 2, h / 2, w, h),
             (w / 4, h / 4, 3 * w / 4, 3 * h / 4)]
    cells = [(i + 0.5) / GRID_POINTS for i in range(GRID_POINTS)]
    points = [(x * w, y * h) for y in cells for x in cells]
    return {"box": [np.array(b, dtype=np.float32) for b in boxes], "point": [np.array(p, dtype=np.float32) for p in points]}


@torch.no_grad()
def outputs(predictor: SamPredictor, image: np.ndarray, keep_ratio=None, dtype: str = "float32") -> dict:
    """Embedding (1 x C x G x G, float32) and one mask per fixed prompt (H x W bool) of one model on one
    image; `dtype` bfloat16 runs encoder and decoder under autocast (as `eval --dtype`)."""
    encoder = predictor.model.image_encoder
    if keep_ratio is not None:
        encoder.keep_ratio = keep_ratio
    with autocast(predictor.device, dtype):
        return _outputs(predictor, image)


def _outputs(predictor: SamPredictor, image: np.ndarray) -> dict:
    predictor.set_image(image)
    masks = {}
    for kind, items in prompts(*image.shape[:2]).items():
        masks[kind] = []
        for item in items:
            if kind == "box":
                mask, _, _ = predictor.predict(box=item, multimask_output=False)
            else:
                mask, _, _ = predictor.predict(point_coords=item[None], point_labels=np.ones(1), multimask_output=False)
            masks[kind].append(torch.from_numpy(mask[0]))
    return {"embedding": predictor.features.float(), "masks": masks}


def compare(
    teacher_checkpoint: str,
    students: Sequence[str],
    images: Path,
    holdout: int,
    keep_ratios: Sequence[float],
    encoder_checkpoint: Optional[str] = None,
    seed: int = 0,
    baseline: Optional[List[dict]] = None,
    teacher_outputs: Optional[Path] = None,
    dtype: str = "float32",
) -> List[dict]:
    """One row per (student, keep ratio): rel_error, box_iou, point_iou (means over the images), removed.
    Students given by name are built as `distill train --seed SEED` builds them. `teacher_outputs`: a file
    that keeps the teacher's embeddings and masks (written on the first run, read on the next ones). `dtype`:
    teacher and students run in float32, or under bfloat16 autocast."""
    for ratio in keep_ratios:
        check_keep_ratio(ratio, "--keep-ratio")
    listed = list_images(images)
    image_ids = [listed[i] for i in split_holdout(listed, holdout)[1]]
    read = ModelReader()  # the teacher's file is also the students' P-path and decoder: read once
    targets = _teacher_outputs(teacher_checkpoint, images, image_ids, teacher_outputs, read, dtype)
    encoder_checkpoint = encoder_checkpoint or teacher_checkpoint
    models = [SamPredictor(build_student(name, encoder_checkpoint, teacher_checkpoint, seed, read))
              for name in students]
    del read  # the weights it read now live in the models
    sums: Dict[tuple, Dict[str, float]] = {}
    for image_id, target in zip(tqdm(image_ids, desc="students", unit="img"), targets):
        image = load_image(images / image_id)
        for spec, predictor in zip(students, models):
            for ratio in keep_ratios:
                got = outputs(predictor, image, ratio, dtype)
                error = (got["embedding"] - target["embedding"]).norm() / target["embedding"].norm()
                row = sums.setdefault((spec, ratio), {"rel_error": 0.0, "box_iou": 0.0, "point_iou": 0.0})
                row["rel_error"] += error.item() / len(image_ids)
                for kind in ("box", "point"):
                    ious = mask_iou(torch.stack(got["masks"][kind]), torch.stack(target["masks"][kind]))
                    row[f"{kind}_iou"] += ious.mean().item() / len(image_ids)
    reference = {ratio: sums[students[0], ratio]["rel_error"] for ratio in keep_ratios}
    if baseline:
        reference = {row["keep_ratio"]: row["rel_error"] for row in baseline if row["student"] == baseline[0]["student"]}
    rows = []
    for (spec, ratio), values in sums.items():
        first = reference.get(ratio)
        removed = 1 - values["rel_error"] / first if first else None  # None: no baseline at this keep ratio
        rows.append({"student": spec, "keep_ratio": ratio, **values, "removed": removed, "images": len(image_ids)})
    return rows


def _teacher_outputs(
    teacher_checkpoint: str, images: Path, image_ids: List[str], path: Optional[Path], read: ModelReader, dtype: str
) -> List[dict]:
    """The teacher's `outputs` for each image, from `path` when it holds those of the same teacher file,
    images and dtype, else computed (and saved to `path` if given)."""
    paths = [str((images / i).resolve()) for i in image_ids]
    key = {"teacher": str(Path(teacher_checkpoint).resolve()), "images": paths, "dtype": dtype}
    if path is not None and Path(path).is_file():
        saved = read_checkpoint(path)
        if saved.get("key") != key:
            raise BiglSamError(f"--teacher-outputs {path}: made for another teacher file, other images or --dtype")
        return saved["outputs"]
    teacher = SamPredictor(load_sam_teacher(read(teacher_checkpoint)))
    targets = [outputs(teacher, load_image(images / i), dtype=dtype) for i in tqdm(image_ids, desc="teacher", unit="img")]
    if path is not None:
        atomic_save({"key": key, "outputs": targets}, path)
    return targets


def table(rows: List[dict]) -> str:
    """Markdown table of `compare`'s rows."""
    lines = ["| student | keep | rel. error | error removed | mask IoU (box) | mask IoU (point) |",
             "| --- | --- | --- | --- | --- | --- |"]
    for row in rows:
        removed = "-" if row["removed"] is None else f"{row['removed']:.1%}"
        lines.append(f"| {row['student']} | {row['keep_ratio']:g} | {row['rel_error']:.4f} | {removed} | "
                     f"{row['box_iou']:.3f} | {row['point_iou']:.3f} |")
    return "\n".join(lines)


def write_json(rows: List[dict], path: Path) -> None:
    atomic_write_text(path, json.dumps(rows, indent=2) + "\n")


def read_json(path: Path) -> List[dict]:
    """Rows an earlier `distill compare --json` wrote; any other file is one error line."""
    try:
        rows = json.loads(Path(path).read_text())
    except (OSError, ValueError) as err:
        raise BiglSamError(f"--baseline {path}: not the JSON of distill compare ({err})") from None
    if not isinstance(rows, list) or not rows or not all(_is_row(row) for row in rows):
        raise BiglSamError(f"--baseline {path}: not the JSON of distill compare (needs a list of rows, each with "
                           f"a student name and the numbers keep_ratio and rel_error)")
    return rows


def _is_row(row) -> bool:
    def number(value) -> bool:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)

    return isinstance(row, dict) and isinstance(row.get("student"), str) and all(
        number(row.get(key)) for key in ("keep_ratio", "rel_error"))
