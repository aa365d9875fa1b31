"""`OnnxPredictor`: SAM's `SamPredictor` API on onnxruntime and numpy, for deployments without torch.

It needs onnxruntime, numpy and Pillow only: an image is resized, normalised and padded exactly as
`SamPredictor` does it (`bigl_sam.images.sam_input_array`), prompts are mapped to the 1024-pixel frame the
same way, and SAM's ONNX decoder convention is followed (a box is two points labelled 2 and 3; without a
box a padding point labelled -1 is appended, as SAM's prompt encoder does).
"""

from pathlib import Path
from typing import Optional, Sequence, Tuple, Union

import numpy as np

from ..errors import BiglSamError, PromptError, check_keep_ratio, first_line
from ..images import PIXEL_MEAN, PIXEL_STD, check_size, resized_shape, sam_input_array
from .interface import (
    ANYLABELING_FORMAT,
    DECODER_FILE,
    DECODER_INPUTS,
    DEFAULT_KEEP_RATIO_KEY,
    EMBEDDING_OUTPUT,
    ENCODER_FILE,
    IMAGE_INPUT,
    KEEP_RATIO_INPUT,
    RECORD_FILE,
)
from .record import REEXPORT, check_export_ids, read_export_record

PathLike = Union[str, Path]
MASK_THRESHOLD = 0.0  # SAM's `Sam.mask_threshold`
LOW_RES_SIDE = 256  # side of SAM's low-resolution mask logits (mask_input and low_res_masks)
# Point labels SAM's ONNX decoder knows (`SamOnnxModel._embed_points`): -1 padding ("not a point"),
# 0 background, 1 foreground, 2 and 3 a box's top-left and bottom-right corners.
ONNX_LABELS = (-1, 0, 1, 2, 3)


def open_session(path: PathLike, providers: Optional[Sequence[str]] = None, threads: Optional[int] = None):
    """An onnxruntime session for `path`, or one `BiglSamError` line if the file is missing or unreadable."""
    import onnxruntime as ort

    path = Path(path)
    if not path.is_file():
        raise BiglSamError(f"{path}: ONNX file not found")
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    options.log_severity_level = 3  # errors only; the exception below says what went wrong
    try:
        return ort.InferenceSession(str(path), options, providers=list(providers or ["CPUExecutionProvider"]))
    except Exception as err:  # onnxruntime raises its own pybind types for every kind of bad file
        raise BiglSamError(f"{path}: not a readable ONNX model, truncated or corrupt ({first_line(err)})") from None


def check_decoder_session(session, path: Path) -> dict:
    """{input name: shape} of `session` (the file `path`) if it has SAM's ONNX decoder inputs, else one
    `BiglSamError` line."""
    found = {i.name: i.shape for i in session.get_inputs()}
    if sorted(found) != sorted(DECODER_INPUTS):
        raise BiglSamError(f"{path}: not a SAM ONNX decoder (inputs {list(found)}, expected {list(DECODER_INPUTS)})")
    return found


def prompt_array(value, name: str) -> np.ndarray:
    """`value` as a float64 array, or a `PromptError` naming `name` if it is not all finite numbers."""
    try:
        array = np.asarray(value)
    except ValueError:  # ragged nesting
        raise PromptError(f"{name} must be an array of numbers, got {value!r:.80}") from None
    if array.dtype.kind not in "iuf":
        raise PromptError(f"{name} must be numbers, got {array.dtype} values ({value!r:.80})")
    array = array.astype(np.float64)
    bad = int(array.size - np.isfinite(array).sum())
    if bad:
        raise PromptError(f"{name} must be finite, got {bad} NaN or infinite value(s)")
    return array


class OnnxPredictor:
    """`set_image` once, then `predict` per prompt, as with `segment_anything.SamPredictor`.

    Args:
        encoder: path of encoder.onnx (a big.LITTLE student's, with its keep-ratio input, or SAM's own).
        decoder: path of decoder.onnx (SAM's `SamOnnxModel` interface, all four masks returned).
        keep_ratio: the encoder's dial; None uses the default stored in encoder.onnx.
        providers: onnxruntime execution providers (default: CPU).
        threads: onnxruntime intra-op threads (default: onnxruntime's).
    """

    def __init__(
        self,
        encoder: PathLike,
        decoder: PathLike,
        keep_ratio: Optional[float] = None,
        providers: Optional[Sequence[str]] = None,
        threads: Optional[int] = None,
    ) -> None:
        self.encoder = open_session(encoder, providers, threads)
        self.decoder = open_session(decoder, providers, threads)
        self._check_interfaces(Path(encoder), Path(decoder))
        self.img_size = int(self.encoder.get_inputs()[0].shape[-1])
        self.has_keep_ratio = KEEP_RATIO_INPUT in {i.name for i in self.encoder.get_inputs()}
        self._keep_ratio: Optional[float] = None
        if self.has_keep_ratio:
            stored = self.encoder.get_modelmeta().custom_metadata_map.get(DEFAULT_KEEP_RATIO_KEY)
            self.keep_ratio = keep_ratio if keep_ratio is not None else float(stored or 1.0)
        elif keep_ratio is not None:
            self.keep_ratio = keep_ratio  # raises: this encoder has no dial
        self.reset_image()

    @classmethod
    def from_folder(cls, folder: PathLike, check_hashes: bool = False, **kwargs) -> "OnnxPredictor":
        """The encoder.onnx and decoder.onnx that `bigl-sam export onnx --out FOLDER` wrote, once checked
        against the export record beside them (export.json, `record.read_export_record`: sizes, export id,
        keep-ratio input; with `check_hashes`, each file's sha256 too, as `--check` does)."""
        folder = Path(folder)
        record = read_export_record(folder, hashes=check_hashes)
        if record.get("format") == ANYLABELING_FORMAT:
            raise BiglSamError(f"{folder}: an export for AnyLabeling (its encoder takes the resized RGB image); "
                               f"OnnxPredictor takes the default format: `bigl-sam export onnx` without --format")
        predictor = cls(folder / ENCODER_FILE, folder / DECODER_FILE, **kwargs)
        check_export_ids(predictor.encoder, predictor.decoder, folder / ENCODER_FILE, folder / DECODER_FILE,
                         record["export_id"])
        student = record.get("keep_ratio") is not None
        if predictor.has_keep_ratio != student:
            raise BiglSamError(f"{folder / RECORD_FILE}: describes an encoder {'with' if student else 'without'} a "
                               f"keep-ratio input, unlike {folder / ENCODER_FILE}; {REEXPORT}")
        return predictor

    @property
    def keep_ratio(self) -> Optional[float]:
        """Share of image tokens the P-path takes, in (0, 1]; None for SAM's own encoders."""
        return self._keep_ratio

    @keep_ratio.setter
    def keep_ratio(self, value: float) -> None:
        if not self.has_keep_ratio:
            raise BiglSamError("this encoder.onnx has no keep-ratio input (a SAM ViT encoder); it has no dial")
        self._keep_ratio = check_keep_ratio(value)

    def reset_image(self) -> None:
        self.features: Optional[np.ndarray] = None
        self.original_size: Optional[Tuple[int, int]] = None
        self.input_size: Optional[Tuple[int, int]] = None
        self.is_image_set = False

    def set_image(self, image: np.ndarray, image_format: str = "RGB") -> None:
        """Runs the encoder on an H x W x 3 uint8 image (`image_format` "RGB" or "BGR"); one at most 150
        megapixels and not thinner than 1:64, as `load_image` takes them (`images.check_size`)."""
        image = np.asarray(image)
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8 or min(image.shape[:2]) < 1:
            raise BiglSamError(f"image must be an H x W x 3 uint8 array, got shape {image.shape} of {image.dtype}")
        check_size(image.shape[0], image.shape[1], "image")
        if image_format not in ("RGB", "BGR"):
            raise BiglSamError(f"image_format must be 'RGB' or 'BGR', got {image_format!r}")
        if image_format == "BGR":
            image = image[..., ::-1]
        x, input_size = sam_input_array(np.ascontiguousarray(image), PIXEL_MEAN, PIXEL_STD, self.img_size)
        self.features = self.embed(x[None])
        self.original_size = image.shape[:2]
        self.input_size = input_size
        self.is_image_set = True

    def embed(self, x: np.ndarray) -> np.ndarray:
        """x: 1 x 3 x S x S preprocessed image -> 1 x 256 x 64 x 64 embeddings, at `self.keep_ratio`."""
        feeds = {IMAGE_INPUT: np.ascontiguousarray(x, dtype=np.float32)}
        if self.has_keep_ratio:
            feeds[KEEP_RATIO_INPUT] = np.array(self.keep_ratio, dtype=np.float32)
        return self.encoder.run([EMBEDDING_OUTPUT], feeds)[0]

    def get_image_embedding(self) -> np.ndarray:
        self._require_image()
        return self.features

    def predict(
        self,
        point_coords: Optional[np.ndarray] = None,
        point_labels: Optional[np.ndarray] = None,
        box: Optional[np.ndarray] = None,
        mask_input: Optional[np.ndarray] = None,
        multimask_output: bool = True,
        return_logits: bool = False,
    ) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Masks for the prompts, as `SamPredictor.predict` returns them.

        Args:
            point_coords: N x 2 (x, y) pixels of the original image; point_labels: N, 1 foreground, 0 background
                (or SAM's ONNX labels -1, 2, 3: padding, box corners).
            box: 4, (x0, y0, x1, y1) pixels of the original image.
            mask_input: 1 x 256 x 256 low-resolution logits from a previous prediction.
        Returns:
            masks C x H x W (bool, or logits with `return_logits`), scores C, low-res logits C x 256 x 256;
            C = 3 with `multimask_output`, else 1.
        """
        self._require_image()
        coords, labels = self._sparse_prompts(point_coords, point_labels, box)
        if mask_input is None:
            mask = np.zeros((1, 1, LOW_RES_SIDE, LOW_RES_SIDE), np.float32)
            has_mask = np.zeros(1, np.float32)
        else:
            mask = prompt_array(mask_input, "mask_input")
            if mask.shape != (1, LOW_RES_SIDE, LOW_RES_SIDE):
                raise PromptError(f"mask_input must be 1 x {LOW_RES_SIDE} x {LOW_RES_SIDE}, got {mask.shape}")
            mask, has_mask = mask[None].astype(np.float32), np.ones(1, np.float32)
        values = (
            self.features, coords[None], labels[None], mask, has_mask, np.array(self.original_size, np.float32)
        )
        masks, scores, low_res = self.decoder.run(None, dict(zip(DECODER_INPUTS, values)))
        chosen = slice(1, None) if multimask_output else slice(0, 1)
        masks, scores, low_res = masks[0, chosen], scores[0, chosen], low_res[0, chosen]
        return (masks if return_logits else masks > MASK_THRESHOLD), scores, low_res

    def _sparse_prompts(self, point_coords, point_labels, box) -> Tuple[np.ndarray, np.ndarray]:
        """Points and box corners in the 1024 frame (N x 2 float32) and their labels (N float32); a
        `PromptError` for prompts that are not finite numbers of the right shapes, for labels SAM's ONNX
        decoder does not know, and for no point and no box."""
        coords, labels = [], []
        if (point_coords is None) != (point_labels is None):
            raise PromptError("point_coords and point_labels must be given together")
        if point_coords is not None:
            points = prompt_array(point_coords, "point_coords")
            point_labels = prompt_array(point_labels, "point_labels")
            if points.ndim != 2 or points.shape[1] != 2 or point_labels.shape != (points.shape[0],):
                raise PromptError(
                    f"point_coords must be N x 2 and point_labels N, got {points.shape} and {point_labels.shape}"
                )
            unknown = sorted(set(point_labels[~np.isin(point_labels, ONNX_LABELS)].tolist()))
            if unknown:
                raise PromptError(f"point_labels must be {', '.join(map(str, ONNX_LABELS))} (SAM's ONNX decoder: "
                                  f"padding, background, foreground, box corners), got {unknown[:5]}")
            coords.append(self.apply_coords(points))
            labels.append(point_labels)
        if box is not None:
            corners = prompt_array(box, "box")
            if corners.size != 4:
                raise PromptError(f"box must be 4 numbers (x0, y0, x1, y1), got shape {corners.shape}")
            coords.append(self.apply_coords(corners.reshape(2, 2)))
            labels.append(np.array([2.0, 3.0]))
        elif coords and len(coords[0]):
            coords.append(np.zeros((1, 2)))  # SAM's padding point: no box, so one "not a point" token
            labels.append(np.array([-1.0]))
        else:
            raise PromptError("predict needs at least one point (point_coords with point_labels) or a box")
        return np.concatenate(coords).astype(np.float32), np.concatenate(labels).astype(np.float32)

    def apply_coords(self, coords: np.ndarray) -> np.ndarray:
        """N x 2 (x, y) in the original image -> the resized frame (SAM's `ResizeLongestSide.apply_coords`)."""
        old_h, old_w = self.original_size
        new_h, new_w = resized_shape(old_h, old_w, self.img_size)
        coords = np.array(coords, np.float64)
        coords[..., 0] = coords[..., 0] * (new_w / old_w)
        coords[..., 1] = coords[..., 1] * (new_h / old_h)
        return coords

    def _require_image(self) -> None:
        if not self.is_image_set:
            raise BiglSamError("no image set: call set_image(image) before predict")

    def _check_interfaces(self, encoder: Path, decoder: Path) -> None:
        """Names and embedding shapes the two models must share, and their export ids (when both have one)."""
        inputs = {i.name: i.shape for i in self.encoder.get_inputs()}
        outputs = {o.name: o.shape for o in self.encoder.get_outputs()}
        if list(inputs)[:1] != [IMAGE_INPUT] or len(inputs[IMAGE_INPUT]) != 4 or EMBEDDING_OUTPUT not in outputs:
            raise BiglSamError(f"{encoder}: not a bigl-sam encoder export (inputs {inputs}, outputs {list(outputs)})")
        found = check_decoder_session(self.decoder, decoder)
        if outputs[EMBEDDING_OUTPUT] != found[EMBEDDING_OUTPUT]:
            raise BiglSamError(f"{encoder} gives {EMBEDDING_OUTPUT} of shape {outputs[EMBEDDING_OUTPUT]}, {decoder} takes "
                               f"{found[EMBEDDING_OUTPUT]}: the models of two different SAMs")
        check_export_ids(self.encoder, self.decoder, encoder, decoder)
