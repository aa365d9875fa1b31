"""Export a SAM or big.LITTLE model to ONNX (torch.export-based exporter), then check it in onnxruntime.

- encoder.onnx: `image` (1 x 3 x 1024 x 1024, SAM-preprocessed) -> `image_embeddings` (1 x 256 x 64 x 64).
  A big.LITTLE encoder also takes `keep_ratio` (a float32 scalar): the dial stays a runtime input. The
  routing plan is computed in the graph (`routing.plan_routing_in_graph`): the image's extent read off
  the zero padding, the P-path budget ceil(keep x image tokens), every token at keep >= 1; the budget K is
  the graph's one data-dependent size (ONNX TopK with a computed k, gathers and scatters of K tokens, one
  attention call over K queries in global layers). Unlike PyTorch, windowed layers project keys and
  values for every window, not only for those overlapping the image: same embeddings, a little more work
  on padded images.
- decoder.onnx: segment_anything's own `SamOnnxModel` (prompt encoder, mask decoder, upscaling), all four
  masks returned, the number of points dynamic: SAM's ONNX decoder interface, unchanged.
- export.json: what was exported from which checkpoint, with which versions, and the check's results.

The check runs both files in onnxruntime on a generated image and a few prompts and compares them with
PyTorch; beyond the tolerances below the export fails (the files stay for inspection).
"""

import json
import logging
import os
import platform
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
from segment_anything.modeling import Sam
from segment_anything.utils.onnx import SamOnnxModel

from ..errors import BiglSamError, check_keep_ratio
from ..fileio import atomic_write_text
from ..images import sam_input_array
from ..modeling import BigLittleConfig, BigLittleImageEncoder
from .interface import (
    DECODER_FILE,
    DECODER_INPUTS,
    DECODER_OUTPUTS,
    DEFAULT_KEEP_RATIO_KEY,
    EMBEDDING_OUTPUT,
    ENCODER_FILE,
    IMAGE_INPUT,
    KEEP_RATIO_INPUT,
    MANIFEST_FILE,
)
from .predictor import open_session

DEFAULT_OPSET = 18
MAX_POINTS = 64  # upper bound of the decoder's dynamic number of points (SAM's interface has no other)
# Max abs difference onnxruntime vs PyTorch allowed at export (float32 both; measured differences are
# 1e-5 to 1e-4 on embeddings of magnitude ~1 and on mask logits of magnitude ~10).
EMBEDDING_TOLERANCE = 1e-3
DECODER_TOLERANCE = 1e-2
CHECK_IMAGE_HW = (600, 800)  # the generated check image: landscape, so the encoder input has padding


class KeepRatioEncoder(torch.nn.Module):
    """A big.LITTLE encoder with the keep ratio as a tensor input, as ONNX needs it (the encoder then plans
    its routing in the graph)."""

    def __init__(self, encoder: torch.nn.Module) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(self, image: torch.Tensor, keep_ratio: torch.Tensor) -> torch.Tensor:
        """image: 1 x 3 x S x S; keep_ratio: float32 scalar -> 1 x 256 x 64 x 64."""
        return self.encoder.forward_with_routing(image, keep_ratio)[0]


def export_onnx(
    model: Sam,
    out: Path,
    opset: int = DEFAULT_OPSET,
    check_ratios: Optional[Sequence[float]] = None,
    checkpoint: Optional[dict] = None,
    progress=None,
) -> dict:
    """Writes encoder.onnx, decoder.onnx and export.json into `out`; returns export.json's content.

    Args:
        check_ratios: keep ratios the check runs the encoder at (big.LITTLE only; default: the model's
            own and 1.0).
        checkpoint: {"path", "sha256"} of the weights, or None for untrained weights.
        progress: a callable taking one line of text (tqdm.write while a bar is up), or None.
    Raises:
        BiglSamError: when onnxruntime and PyTorch differ beyond the tolerances.
    """
    say = progress or (lambda line: None)
    out = Path(out)
    is_student = isinstance(model.config, BigLittleConfig)
    ratios = _check_ratios(model, check_ratios) if is_student else []
    say(f"exporting the {model.config.name} image encoder to {out / ENCODER_FILE}")
    export_encoder(model.image_encoder, out / ENCODER_FILE, opset)
    say(f"exporting SAM's prompt encoder and mask decoder to {out / DECODER_FILE}")
    export_decoder(model, out / DECODER_FILE, opset)
    say("checking both files in onnxruntime against PyTorch")
    check = check_export(model, out, ratios)
    manifest = {
        "model": model.config.name,
        "checkpoint": checkpoint,
        "keep_ratio": (
            {"input": KEEP_RATIO_INPUT, "default": model.image_encoder.keep_ratio, "checked_at": ratios}
            if is_student
            else None
        ),
        "files": {"encoder": ENCODER_FILE, "decoder": DECODER_FILE},
        "opset": opset,
        "versions": _versions(),
        "check": check,
    }
    return write_manifest(out, manifest)


def write_manifest(out: Path, manifest: dict) -> dict:
    """Writes export.json (`manifest`, with its "check") into `out`, then raises if the check failed."""
    atomic_write_text(out / MANIFEST_FILE, json.dumps(manifest, indent=2) + "\n")
    check = manifest["check"]
    if not check["passed"]:
        raise BiglSamError(f"export check failed: {check['failures'][0]} (files kept in {out} for inspection)")
    return manifest


def export_encoder(encoder: torch.nn.Module, path: Path, opset: int = DEFAULT_OPSET) -> None:
    """Writes an image encoder (SAM's `ImageEncoderViT` or a `BigLittleImageEncoder`, the latter with its
    keep-ratio input and its default in the metadata)."""
    image = torch.zeros(1, 3, encoder.img_size, encoder.img_size)
    image[..., : encoder.img_size // 2, :] = 1.0  # padding below, as a real image has
    if isinstance(encoder, BigLittleImageEncoder):
        module, args = KeepRatioEncoder(encoder), (image, torch.tensor(encoder.keep_ratio))
        names, metadata = [IMAGE_INPUT, KEEP_RATIO_INPUT], {DEFAULT_KEEP_RATIO_KEY: repr(encoder.keep_ratio)}
    else:
        module, args, names, metadata = encoder, (image,), [IMAGE_INPUT], {}
    with torch.no_grad():
        program = _export(module.eval(), args, names, [EMBEDDING_OUTPUT], opset, strict=False)
    program.model.metadata_props.update(metadata)
    _save(program, path)


def export_decoder(model: Sam, path: Path, opset: int = DEFAULT_OPSET) -> None:
    """Writes SAM's `SamOnnxModel` with all four masks and a dynamic number of points."""
    decoder = SamOnnxModel(model, return_single_mask=False).eval()
    args = _decoder_inputs(torch.zeros(1, 256, 64, 64), np.zeros((2, 2)), np.array([1.0, -1.0]), None, (600, 800))
    points = torch.export.Dim("num_points", min=1, max=MAX_POINTS)
    dynamic = {name: None for name in DECODER_INPUTS}
    dynamic["point_coords"], dynamic["point_labels"] = {1: points}, {1: points}
    # strict: SamOnnxModel crops the masks with int(tensor), which only the strict tracer records.
    program = _export(decoder, args, list(DECODER_INPUTS), list(DECODER_OUTPUTS), opset, strict=True, dynamic=dynamic)
    _save(program, path)


def _export(module, args, input_names, output_names, opset, strict: bool, dynamic=None):
    # onnx_ir warns about every empty attribute list the translator writes, and the exporter about a dim
    # name given twice (points and labels share num_points): nothing a user can act on.
    logging.getLogger("onnx_ir").setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*axis name.*will not be used")
            exported = torch.export.export(module, tuple(args), dynamic_shapes=dynamic, strict=strict)
            return torch.onnx.export(
                exported, tuple(args), input_names=input_names, output_names=output_names, opset_version=opset,
                dynamo=True, verbose=False, dynamic_shapes=dynamic,
            )
    except Exception as err:  # torch.export and the ONNX translator raise many kinds; one line for the user
        first = next((line for line in str(err).splitlines() if line.strip()), type(err).__name__)
        raise BiglSamError(f"ONNX export of {type(module).__name__} failed: {first.strip()}") from err


def _save(program, path: Path) -> None:
    """Writes the model without ever leaving half a file at `path`.

    onnx writes a model over 2 GB as two files (graph, and weights in `path.name + ".data"`), so the
    export is saved in a temp folder beside `path` and renamed into place, weights first.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}."))
    try:
        program.save(str(tmp / path.name))
        for part in sorted(tmp.iterdir(), key=lambda p: p.name == path.name):
            os.replace(part, path.with_name(part.name))
    except OSError as err:
        raise BiglSamError(f"{path}: could not write the ONNX file ({err.strerror})") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _check_ratios(model: Sam, ratios: Optional[Sequence[float]]) -> List[float]:
    ratios = [model.image_encoder.keep_ratio, 1.0] if ratios is None else list(ratios)
    return sorted({check_keep_ratio(r, "--keep-ratio") for r in ratios})


def check_image() -> np.ndarray:
    """The generated check image: CHECK_IMAGE_HW, smooth gradients with a few flat rectangles."""
    h, w = CHECK_IMAGE_HW
    rows, cols = np.mgrid[0:h, 0:w]
    image = np.stack([rows * 255 // h, cols * 255 // w, (rows + cols) * 255 // (h + w)], axis=-1)
    for i, (y, x) in enumerate([(50, 80), (300, 500), (420, 120)]):
        image[y : y + 120, x : x + 160] = (60 * i, 255 - 70 * i, 40 + 90 * i)
    return image.astype(np.uint8)


CHECK_PROMPTS = {  # in the 1024 frame of the check image; (points, labels, box, use the previous mask)
    "points": (np.array([[180.0, 140.0], [700.0, 500.0]]), np.array([1.0, 0.0]), None, False),
    "box": (None, None, np.array([90.0, 60.0, 360.0, 250.0]), False),
    "points+box": (np.array([[620.0, 420.0]]), np.array([1.0]), np.array([500.0, 380.0, 900.0, 600.0]), False),
    "mask_input": (np.array([[180.0, 140.0]]), np.array([1.0]), None, True),
}


def check_export(model: Sam, folder: Path, ratios: Sequence[float]) -> dict:
    """Max abs differences onnxruntime vs PyTorch for the encoder (per keep ratio) and the decoder (per
    prompt kind), and whether all are within the tolerances."""
    encoder = open_session(folder / ENCODER_FILE)
    decoder = open_session(folder / DECODER_FILE)
    x, _ = sam_input_array(check_image(), model.pixel_mean.flatten().tolist(), model.pixel_std.flatten().tolist(),
                           model.image_encoder.img_size)
    x = x[None]
    diffs: Dict[str, float] = {}
    failures = []
    with torch.no_grad():
        for ratio in ratios or [None]:
            feeds = {IMAGE_INPUT: x}
            kwargs = {}
            if ratio is not None:
                feeds[KEEP_RATIO_INPUT] = np.array(ratio, np.float32)
                kwargs["keep_ratio"] = ratio
            expected = model.image_encoder(torch.from_numpy(x), **kwargs)
            got = encoder.run([EMBEDDING_OUTPUT], feeds)[0]
            key = "encoder" if ratio is None else f"encoder@{ratio:g}"
            diffs[key] = _max_abs(got, expected)
            if diffs[key] > EMBEDDING_TOLERANCE:
                failures.append(f"{key}: embeddings differ by {diffs[key]:.3g} (tolerance {EMBEDDING_TOLERANCE:g})")
        check_decoder(model, decoder, expected, diffs, failures)  # the last ratio's embeddings (1.0 for students)
    return check_report(diffs, failures)


def check_decoder(model: Sam, decoder, features: torch.Tensor, diffs: Dict[str, float], failures: List[str]) -> None:
    """Adds the max abs difference onnxruntime (`decoder`, a session) vs PyTorch per prompt kind of
    `CHECK_PROMPTS` on `features` (1 x 256 x 64 x 64) to `diffs`, and a line per kind beyond the tolerance
    to `failures`."""
    torch_decoder = SamOnnxModel(model, return_single_mask=False).eval()
    previous = None
    with torch.no_grad():
        for kind, (points, labels, box, use_mask) in CHECK_PROMPTS.items():
            args = _decoder_inputs(features, points, labels, box, CHECK_IMAGE_HW, previous if use_mask else None)
            expected_outputs = torch_decoder(*args)
            got_outputs = decoder.run(list(DECODER_OUTPUTS), {n: a.numpy() for n, a in zip(DECODER_INPUTS, args)})
            diffs[f"decoder:{kind}"] = max(_max_abs(g, e) for g, e in zip(got_outputs, expected_outputs))
            if diffs[f"decoder:{kind}"] > DECODER_TOLERANCE:
                failures.append(f"decoder with {kind}: outputs differ by {diffs[f'decoder:{kind}']:.3g} "
                                f"(tolerance {DECODER_TOLERANCE:g})")
            previous = expected_outputs[2][:, :1]


def check_report(diffs: Dict[str, float], failures: List[str]) -> dict:
    """export.json's "check" entry."""
    return {
        "max_abs_diff": {k: float(f"{v:.3g}") for k, v in diffs.items()},
        "tolerance": {"embeddings": EMBEDDING_TOLERANCE, "decoder": DECODER_TOLERANCE},
        "input": f"generated {CHECK_IMAGE_HW[0]}x{CHECK_IMAGE_HW[1]} image; prompts: {', '.join(CHECK_PROMPTS)}",
        "passed": not failures,
        "failures": failures,
    }


def _decoder_inputs(features, points, labels, box, image_hw, mask=None):
    """SamOnnxModel's inputs for points and/or a box given in the 1024 frame (SAM's ONNX convention:
    box corners labelled 2 and 3; without a box a padding point labelled -1)."""
    coords = [] if points is None else [np.asarray(points, np.float32)]
    tags = [] if labels is None else [np.asarray(labels, np.float32)]
    if box is not None:
        coords.append(np.asarray(box, np.float32).reshape(2, 2))
        tags.append(np.array([2.0, 3.0], np.float32))
    else:
        coords.append(np.zeros((1, 2), np.float32))
        tags.append(np.array([-1.0], np.float32))
    return (
        torch.as_tensor(features, dtype=torch.float32),
        torch.from_numpy(np.concatenate(coords))[None],
        torch.from_numpy(np.concatenate(tags))[None],
        torch.zeros(1, 1, 256, 256) if mask is None else mask,
        torch.tensor([0.0 if mask is None else 1.0]),
        torch.tensor(image_hw, dtype=torch.float32),
    )


def _max_abs(got: np.ndarray, expected: torch.Tensor) -> float:
    expected = expected.numpy()
    if got.shape != expected.shape:
        return float("inf")
    return float(np.abs(got.astype(np.float64) - expected).max())


def _versions() -> dict:
    import onnx
    import onnxruntime

    return {
        "torch": torch.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
        "python": platform.python_version(),
    }
