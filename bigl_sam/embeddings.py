"""Image embeddings stored on disk, and predictors set from them instead of an image.

`bigl-sam embed` writes, per image `NAME` (its file name, suffix included, so `a.jpg` and `a.png` do not
collide):

- `NAME.npy`: the 1 x 256 x 64 x 64 float32 embedding, the form SAM's web demo and ONNX decoder take;
- `NAME.json`: its record, written after the `.npy` (a record means the image is done): the original and
  input sizes (H, W pixels), the model (`model_type`, its registry key), its weights (description, files
  with sha256), the keep ratio (None for SAM's own encoders) and the precision it was computed at.

`set_embedding(predictor, path)` sets a `segment_anything.SamPredictor` (what `bigl_sam.SamPredictor` is)
or a `bigl_sam.onnx.OnnxPredictor` from `NAME.npy` as `set_image` would have, after checking that the
embedding fits the predictor: shape, dtype, finite values, sizes, model and keep ratio. Needs numpy only (torch is imported for a
`SamPredictor` alone), so the ONNX predictor uses it without torch.
"""

import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Tuple, Union

import numpy as np

from .arguments import renamed_keywords
from .errors import BiglSamError
from .fileio import atomic_write, atomic_write_text
from .images import PATCH_SIZE, check_size, resized_shape

PathLike = Union[str, Path]
EMBEDDING_SUFFIX = ".npy"
RECORD_SUFFIX = ".json"
EMBEDDING_DTYPE = np.float32
ONNX_EMBED_CHANNELS = 256  # SAM's decoder width: the channels of every exported encoder's output
RECORD_KEYS = ("image", "original_size", "input_size", "model_type", "keep_ratio")
# Keys records of earlier releases wrote under another name, read as the current one.
FORMER_RECORD_KEYS = {"model": "model_type"}


class EmbeddingError(BiglSamError):
    """A stored embedding that is missing, unreadable, or does not fit the predictor it is set on."""


@dataclass(frozen=True)
class StoredEmbedding:
    features: np.ndarray  # 1 x C x h x w float32 (1 x 256 x 64 x 64 for SAM's 1024-pixel input)
    original_size: Tuple[int, int]  # (H, W) pixels of the image
    input_size: Tuple[int, int]  # (H, W) pixels after resizing the long side to the encoder's input
    record: dict  # everything `bigl-sam embed` recorded beside it


def embedding_path(out_dir: Path, image_name: str) -> Path:
    return Path(out_dir) / f"{image_name}{EMBEDDING_SUFFIX}"


def record_path(out_dir: Path, image_name: str) -> Path:
    return Path(out_dir) / f"{image_name}{RECORD_SUFFIX}"


def save_embedding(out_dir: PathLike, image_name: str, features: np.ndarray, record: dict) -> Path:
    """Writes `NAME.npy` (`features`, 1 x C x h x w float32), then `NAME.json` (`record`, with at least
    `RECORD_KEYS`), each atomically: a record on disk means its embedding is complete. Returns the .npy path."""
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(features, dtype=EMBEDDING_DTYPE), allow_pickle=False)
    path = atomic_write(embedding_path(out_dir, image_name), lambda f: f.write(buffer.getvalue()))
    atomic_write_text(record_path(out_dir, image_name), json.dumps(record, indent=2) + "\n")
    return path


def embedding_complete(path: PathLike) -> bool:
    """Whether the `.npy` at `path` holds all the bytes its header announces (a copy cut short does not);
    reads the header only."""
    try:
        with open(path, "rb") as f:
            read_header = {(1, 0): np.lib.format.read_array_header_1_0,
                           (2, 0): np.lib.format.read_array_header_2_0}.get(np.lib.format.read_magic(f))
            if read_header is None:
                return False
            shape, _, dtype = read_header(f)
            expected = f.tell() + int(np.prod(shape)) * dtype.itemsize
    except (OSError, ValueError, EOFError):
        return False
    return Path(path).stat().st_size == expected


def read_record(path: PathLike) -> dict:
    """The record `NAME.json` beside `NAME.npy` (`path`: either); an `EmbeddingError` if it is missing,
    unreadable or lacks a key of `RECORD_KEYS`."""
    path = _record_of(Path(path))
    if not path.is_file():
        raise EmbeddingError(f"{path}: sizes record not found (bigl-sam embed writes it beside the .npy)")
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise EmbeddingError(f"{path}: not a readable embedding record ({err})") from None
    if isinstance(record, dict):
        for former, key in FORMER_RECORD_KEYS.items():
            if former in record and key not in record:
                record[key] = record.pop(former)
    missing = [key for key in RECORD_KEYS if not isinstance(record, dict) or key not in record]
    if missing:
        raise EmbeddingError(f"{path}: embedding record lacks {', '.join(missing)}")
    return record


@renamed_keywords(model="model_type")
def load_embedding(
    path: PathLike,
    shape: Optional[Tuple[int, ...]] = None,
    model_type: Optional[str] = None,
    keep_ratio: Optional[float] = None,
    img_size: Optional[int] = None,
) -> StoredEmbedding:
    """`NAME.npy` and its record (`path`: either file), checked: float32, of `shape` if given, computed by
    the registry key `model_type` if given, at `keep_ratio` if given, its sizes consistent with an `img_size`-pixel input if given.
    Anything else is an `EmbeddingError` naming the file and what differs."""
    path = Path(path)
    array_path = path.with_suffix(EMBEDDING_SUFFIX) if path.suffix == RECORD_SUFFIX else path
    record = read_record(array_path)
    if model_type is not None and record["model_type"] != model_type:
        raise EmbeddingError(
            f"{array_path}: is an embedding of {record['model_type']}, this predictor runs {model_type}"
        )
    if keep_ratio is not None and record["keep_ratio"] != keep_ratio:
        raise EmbeddingError(
            f"{array_path}: was computed at keep ratio {record['keep_ratio']}, this predictor runs at {keep_ratio}"
        )
    original_size, input_size = _size(record, "original_size", array_path), _size(record, "input_size", array_path)
    if img_size is not None and resized_shape(*original_size, img_size) != input_size:
        raise EmbeddingError(
            f"{array_path}: input_size {list(input_size)} is not original_size {list(original_size)} resized to "
            f"{img_size} pixels"
        )
    features = _read_array(array_path)
    if features.dtype != EMBEDDING_DTYPE:
        raise EmbeddingError(f"{array_path}: embedding is {features.dtype}, expected float32")
    if shape is not None and features.shape != tuple(shape):
        expected, found = (" x ".join(map(str, s)) for s in (shape, features.shape))
        raise EmbeddingError(f"{array_path}: embedding is {found}, this predictor takes {expected}")
    if not np.isfinite(features).all():
        raise EmbeddingError(f"{array_path}: embedding holds NaN or infinite values ({np.count_nonzero(~np.isfinite(features))} "
                             "of them); compute it again with bigl-sam embed")
    return StoredEmbedding(features, original_size, input_size, record)


@renamed_keywords(model="model_type")
def set_embedding(predictor, path: PathLike, model_type: Optional[str] = None) -> StoredEmbedding:
    """Sets `predictor` (a `SamPredictor` or an `OnnxPredictor`) from the stored embedding at `path` (`NAME.npy`
    or `NAME.json`), so that `predict` then gives what it gives after `set_image` on that image.

    Checked against the predictor: shape, dtype, the keep ratio it runs at (students), and the model's
    registry key: `model_type` if given, else for a `SamPredictor` its model's. Returns what was loaded.
    """
    from .onnx.predictor import OnnxPredictor

    if isinstance(predictor, OnnxPredictor):
        side = predictor.img_size // PATCH_SIZE
        stored = load_embedding(path, (1, ONNX_EMBED_CHANNELS, side, side), model_type, predictor.keep_ratio,
                                predictor.img_size)
        predictor.reset_image()
        predictor.features = stored.features
    else:
        import torch

        from .modeling.config import keep_ratio_of

        sam = predictor.model
        config = getattr(sam, "config", None)
        model_type = model_type if model_type is not None else getattr(config, "name", None)
        if model_type is None:
            raise EmbeddingError(f"{path}: this predictor's model has no registry key (a segment_anything Sam), so "
                                 "the embedding's model cannot be checked: give set_embedding(..., model_type='vit_h'), "
                                 "its key, or build it with bigl_sam")
        shape = (1, sam.prompt_encoder.embed_dim, *sam.prompt_encoder.image_embedding_size)
        ratio = keep_ratio_of(sam)
        stored = load_embedding(path, shape, model_type, ratio, sam.image_encoder.img_size)
        predictor.reset_image()
        predictor.features = torch.from_numpy(stored.features).to(predictor.device)
    predictor.original_size = stored.original_size
    predictor.input_size = stored.input_size
    predictor.is_image_set = True
    return stored


def _record_of(path: Path) -> Path:
    return path if path.suffix == RECORD_SUFFIX else path.with_suffix(RECORD_SUFFIX)


def _size(record: dict, key: str, path: Path) -> Tuple[int, int]:
    value = record[key]
    if not (isinstance(value, list) and len(value) == 2
            and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value)):
        raise EmbeddingError(f"{_record_of(path)}: {key} must be [height, width] in pixels, got {value!r}")
    try:
        check_size(value[0], value[1], f"{_record_of(path)}: {key}")
    except BiglSamError as err:
        raise EmbeddingError(str(err)) from None
    return value[0], value[1]


def _read_array(path: Path) -> np.ndarray:
    if not path.is_file():
        raise EmbeddingError(f"{path}: embedding file not found")
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as err:
        raise EmbeddingError(f"{path}: not a readable .npy embedding ({err})") from None
