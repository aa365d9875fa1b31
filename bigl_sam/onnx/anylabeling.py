"""`bigl-sam export onnx --format anylabeling`: a folder AnyLabeling loads with "Load custom model".

AnyLabeling (and samexporter, by the same author) run SAM through `SegmentAnythingONNX`, which feeds the
encoder one input: the photo resized (AnyLabeling: into a 684 x 1024 canvas; samexporter: the long side to
1024) as an H x W x 3 float32 array of 0-255 RGB values, and SAM's ONNX decoder. So the folder holds:

- encoder.onnx: `image` (H x W x 3, H and W dynamic up to 1024) -> `image_embeddings` (1 x 256 x 64 x 64),
  with SAM's normalisation and zero padding inside the graph and a student's keep ratio fixed at export
  (in the metadata as for the bigl-sam format; a one-input caller has no way to feed a dial);
- decoder.onnx: SAM's ONNX decoder as SAM's own export writes it with `return_single_mask`: one mask, for one
  click the best-scored of SAM's three multimask outputs (AnyLabeling shows `masks[0][0]`);
- config.yaml: what AnyLabeling reads (`type: segment_anything`, names, the two paths, sizes);
- export.json: the export record, as for the bigl-sam format, with the format and the fixed keep ratio.

`open_anylabeling` reads such a folder as AnyLabeling does (config.yaml, then the two files it names) and
refuses an incomplete one in one line; `bigl-sam export onnx --format anylabeling --check --out DIR` runs it.
"""

import json
import uuid
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from segment_anything.modeling import Sam

from ..errors import BiglSamError, check_keep_ratio
from ..fileio import atomic_folder, atomic_write_text
from ..images import IMG_SIZE, resized_shape, sam_input_array
from .. import modeling
from .export import (
    EMBEDDING_TOLERANCE,
    _export,
    _id_metadata,
    _max_abs,
    _save,
    check_decoder,
    check_image,
    check_opset,
    check_out,
    check_report,
    export_decoder,
    record_entries,
    write_record,
)
from .interface import ANYLABELING_CONFIG_FILE as CONFIG_FILE
from .interface import ANYLABELING_FORMAT
from .interface import DECODER_FILE, DEFAULT_KEEP_RATIO_KEY, DEFAULT_OPSET, EMBEDDING_OUTPUT
from .interface import ENCODER_FILE, RECORD_FILE
from .predictor import check_decoder_session, open_session
from .record import check_export_ids, read_export_record

RGB_INPUT = "image"  # H x W x 3 float32, RGB 0-255, the photo resized to fit S x S
CANVAS_HW = (684, 1024)  # AnyLabeling's input_size: every photo is resized into it (pixels)
MAX_SIDE_PIXELS = IMG_SIZE  # the encoder's input: H and W up to this
# The keys AnyLabeling's `segment_anything` model reads from config.yaml; a config without one fails to load.
CONFIG_KEYS = ("type", "name", "display_name", "encoder_model_path", "decoder_model_path", "input_size",
               "max_width", "max_height")
MODEL_TYPE = "segment_anything"
REEXPORT_ANYLABELING = "export it again (`bigl-sam export onnx --format anylabeling`)"


class RgbImageEncoder(torch.nn.Module):
    """image: H x W x 3 float32 RGB 0-255 (H, W <= S) -> 1 x 256 x 64 x 64, as `SamPredictor` encodes it:
    normalised with the model's mean and std, zero-padded at the bottom and right to S x S, then encoded
    (a student at `keep_ratio`)."""

    def __init__(self, model: Sam, keep_ratio: Optional[float]) -> None:
        super().__init__()
        self.encoder = model.image_encoder
        self.register_buffer("pixel_mean", model.pixel_mean.flatten().clone())
        self.register_buffer("pixel_std", model.pixel_std.flatten().clone())
        self.keep_ratio = keep_ratio

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        side = self.encoder.img_size
        x = ((image - self.pixel_mean) / self.pixel_std).permute(2, 0, 1)[None]
        x = F.pad(x, (0, side - image.shape[1], 0, side - image.shape[0]))
        if modeling.is_student(self.encoder):
            return self.encoder.forward_with_routing(x, torch.tensor(self.keep_ratio))[0]
        return self.encoder(x)


def export_anylabeling(
    model: Sam,
    out: Path,
    keep_ratio: Optional[float] = None,
    opset: int = DEFAULT_OPSET,
    checkpoint: Optional[dict] = None,
    progress=None,
    waiting=None,
) -> dict:
    """Writes encoder.onnx, decoder.onnx, config.yaml and export.json into `out` as `export_onnx` does (built and
    checked beside `out`, then swapped in whole); returns the export record.

    Args:
        keep_ratio: a student's keep ratio, fixed in the graph (default: the model's); must be None for SAM's
            own encoders.
        checkpoint: {"path", "sha256"} of the weights, or None for untrained weights.
        progress: a callable taking one line of text, or None; waiting: as for `export_onnx`.
    Raises:
        BiglSamError: for a keep ratio given to SAM's own encoder, and whatever `export_onnx` refuses (opset,
            `out`, a failed check: `out` unchanged, the new files in `OUT.failed`).
    """
    say = progress or (lambda line: None)
    out = Path(out)
    is_student = modeling.is_student(model)
    modeling.check_keep_ratio_applies(model, keep_ratio, model.config.name)
    if is_student:
        keep_ratio = check_keep_ratio(model.image_encoder.keep_ratio if keep_ratio is None else keep_ratio, "--keep-ratio")
    check_opset(opset)
    check_out(out)
    export_id = uuid.uuid4().hex
    with atomic_folder(out, waiting) as folder:
        say(f"exporting the {model.config.name} image encoder (RGB input, preprocessing inside) to {out / ENCODER_FILE}")
        export_rgb_encoder(model, keep_ratio, folder / ENCODER_FILE, opset, export_id)
        say(f"exporting SAM's prompt encoder and mask decoder to {out / DECODER_FILE}")
        export_decoder(model, folder / DECODER_FILE, opset, export_id, single_mask=True)
        atomic_write_text(folder / CONFIG_FILE, config_yaml(model.config.name, keep_ratio))
        say("checking both files in onnxruntime against PyTorch")
        _, encoder, decoder = open_anylabeling(folder)
        check = check_anylabeling(model, keep_ratio, encoder, decoder)
        record = {
            "model": model.config.name,
            "format": ANYLABELING_FORMAT,
            "checkpoint": checkpoint,
            "keep_ratio": {"fixed": keep_ratio} if is_student else None,
            "encoder_input": f"{RGB_INPUT}: H x W x 3 float32 RGB 0-255, H and W up to {model.image_encoder.img_size}",
            **record_entries(folder, export_id, opset, check),
        }
        write_record(out, folder, record)
    return record


def export_rgb_encoder(
    model: Sam, keep_ratio: Optional[float], path: Path, opset: int = DEFAULT_OPSET, export_id: Optional[str] = None
) -> None:
    side = model.image_encoder.img_size
    image = torch.zeros(*CANVAS_HW, 3)
    image[: CANVAS_HW[0] // 2] = 255.0  # not a constant image, as a photo is not
    height, width = torch.export.Dim("height", min=2, max=side), torch.export.Dim("width", min=2, max=side)
    module = RgbImageEncoder(model, keep_ratio).eval()
    with torch.no_grad():
        program = _export(module, (image,), [RGB_INPUT], [EMBEDDING_OUTPUT], opset, strict=False,
                          dynamic={"image": {0: height, 1: width}})
    program.model.metadata_props.update(_id_metadata(export_id))
    if keep_ratio is not None:
        program.model.metadata_props[DEFAULT_KEEP_RATIO_KEY] = repr(keep_ratio)
    _save(program, path)


def check_anylabeling(model: Sam, keep_ratio: Optional[float], encoder, decoder) -> dict:
    """The encoder (a session) on the check image resized as samexporter feeds it (long side to S) and as
    AnyLabeling feeds it (into its 684 x 1024 canvas), against PyTorch on the same pixels; then the decoder."""
    side = model.image_encoder.img_size
    image = check_image()
    h, w = resized_shape(*image.shape[:2], side)
    canvas = np.zeros((*CANVAS_HW, 3), np.uint8)
    scale = min(CANVAS_HW[0] / image.shape[0], CANVAS_HW[1] / image.shape[1])
    fitted = Image.fromarray(image).resize((round(image.shape[1] * scale), round(image.shape[0] * scale)))
    canvas[: fitted.height, : fitted.width] = np.asarray(fitted)
    inputs = {"long side": np.asarray(Image.fromarray(image).resize((w, h), Image.BILINEAR)), "canvas": canvas}
    diffs: Dict[str, float] = {}
    failures: List[str] = []
    kwargs = {} if keep_ratio is None else {"keep_ratio": keep_ratio}
    with torch.no_grad():
        for kind, pixels in inputs.items():
            x, _ = sam_input_array(pixels, model.pixel_mean.flatten().tolist(), model.pixel_std.flatten().tolist(), side)
            expected = model.image_encoder(torch.from_numpy(x)[None], **kwargs)
            got = encoder.run([EMBEDDING_OUTPUT], {RGB_INPUT: pixels.astype(np.float32)})[0]
            diffs[f"encoder:{kind}"] = _max_abs(got, expected)
            if diffs[f"encoder:{kind}"] > EMBEDDING_TOLERANCE:
                failures.append(f"encoder on the {kind} input: embeddings differ by {diffs[f'encoder:{kind}']:.3g} "
                                f"(tolerance {EMBEDDING_TOLERANCE:g})")
        check_decoder(model, decoder, expected, diffs, failures, single_mask=True)
    return check_report(diffs, failures)


def config_yaml(model_name: str, keep_ratio: Optional[float]) -> str:
    """AnyLabeling's model config: every key its `segment_anything` model reads, paths beside the file."""
    suffix = "" if keep_ratio is None else f"_keep{keep_ratio:g}"
    shown = f"{model_name} (bigl-sam" + ("" if keep_ratio is None else f", keep ratio {keep_ratio:g}") + ")"
    values = {
        "type": "segment_anything",
        "name": f"{model_name}{suffix}-bigl-sam",
        "display_name": shown,
        "encoder_model_path": ENCODER_FILE,
        "decoder_model_path": DECODER_FILE,
        "input_size": CANVAS_HW[1],
        "max_width": CANVAS_HW[1],
        "max_height": CANVAS_HW[0],
    }
    return "".join(f"{key}: {json.dumps(value)}\n" for key, value in values.items())  # JSON scalars are YAML


def open_anylabeling(folder: Path, check_hashes: bool = False) -> Tuple[dict, object, object]:
    """config.yaml of `folder` and onnxruntime sessions of the encoder and decoder it names, read as AnyLabeling
    reads them (the paths relative to the config's folder); with the export record when export.json is there
    (files of another export, or truncated, are refused as `OnnxPredictor.from_folder` refuses them; with
    `check_hashes`, files whose sha256 differs from the record's too). config.yaml may be edited (names,
    sizes): its values are checked, not its bytes.

    Raises:
        BiglSamError: one line naming the problem: no folder or no config.yaml, a config.yaml that is not a
            YAML mapping, lacks a key of `CONFIG_KEYS` or is not of type segment_anything, an encoder or
            decoder file it names that is missing, unreadable, or not of the interface AnyLabeling runs, a
            name that is not a non-empty string, a size that is not a whole number of pixels in 1..1024.
    """
    import yaml  # the onnx extra's (gradio's too); only this reader needs it

    folder = Path(folder)
    if not folder.is_dir():
        raise BiglSamError(f"{folder}: AnyLabeling export folder not found")
    path = folder / CONFIG_FILE
    if not path.is_file():
        raise BiglSamError(f"{path}: not found; AnyLabeling's \"Load custom model\" reads it; {REEXPORT_ANYLABELING}")
    try:
        config = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
        reason = " ".join(str(err).split())
        raise BiglSamError(f"{path}: not readable YAML ({reason})") from None
    if not isinstance(config, dict):
        raise BiglSamError(f"{path}: not a mapping of AnyLabeling's keys ({', '.join(CONFIG_KEYS)})")
    missing = [key for key in CONFIG_KEYS if key not in config]
    if missing:
        raise BiglSamError(f"{path}: lacks {', '.join(missing)}, which AnyLabeling requires; {REEXPORT_ANYLABELING}")
    if config["type"] != MODEL_TYPE:
        raise BiglSamError(f"{path}: type is {config['type']!r}; AnyLabeling runs this folder only as {MODEL_TYPE}")
    for key in ("name", "display_name", "encoder_model_path", "decoder_model_path"):
        if not isinstance(config[key], str) or not config[key].strip():
            raise BiglSamError(f"{path}: {key} is {config[key]!r}, expected a non-empty string")
    for key in ("input_size", "max_width", "max_height"):
        value = config[key]
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_SIDE_PIXELS:
            raise BiglSamError(f"{path}: {key} is {value!r}, expected pixels from 1 to {MAX_SIDE_PIXELS} (the "
                               f"encoder's largest side)")
    files = {}
    for key in ("encoder_model_path", "decoder_model_path"):
        file = folder / str(config[key])
        if not file.is_file():
            raise BiglSamError(f"{file}: not found ({CONFIG_FILE} names it as {key}); {REEXPORT_ANYLABELING}")
        files[key] = file
    encoder, decoder = open_session(files["encoder_model_path"]), open_session(files["decoder_model_path"])
    inputs = encoder.get_inputs()
    if len(inputs) != 1 or len(inputs[0].shape) != 3:
        found = ", ".join(f"{i.name} {i.shape}" for i in inputs)
        raise BiglSamError(f"{files['encoder_model_path']}: takes {found}; AnyLabeling feeds one H x W x 3 RGB "
                           f"image ({REEXPORT_ANYLABELING})")
    check_decoder_session(decoder, files["decoder_model_path"])
    if (folder / RECORD_FILE).is_file():
        record = read_export_record(folder, hashes=check_hashes)
        check_export_ids(encoder, decoder, files["encoder_model_path"], files["decoder_model_path"], record["export_id"])
    return config, encoder, decoder
