"""Export a SAM or big.LITTLE model to ONNX (torch.export-based exporter), then check it in onnxruntime.

- encoder.onnx: `image` (1 x 3 x 1024 x 1024, SAM-preprocessed) -> `image_embeddings` (1 x 256 x 64 x 64).
  A big.LITTLE encoder also takes `keep_ratio` (a float32 scalar): the dial stays a runtime input. The
  routing plan is computed in the graph (`routing.plan_routing_in_graph`): the image's extent read off
  the zero padding (an all-zero image: the whole square), the P-path budget ceil(keep x image tokens), every
  token at keep >= 1; the budget K is the graph's one data-dependent size (each router's ONNX TopK ranking
  cut at K, gathers and scatters of K tokens, one attention call over K queries in global layers). Unlike
  PyTorch, windowed layers project keys and values for every window, not only for those overlapping the
  image: same embeddings, a little more work on padded images.
- decoder.onnx: segment_anything's own `SamOnnxModel` (prompt encoder, mask decoder, upscaling), all four
  masks returned, the number of points dynamic: SAM's ONNX decoder interface, unchanged.
- export.json, the export record: what was exported from which checkpoint, with which versions, and the check's results.

The check runs both files in onnxruntime on a generated image and a few prompts and compares them with
PyTorch; beyond the tolerances below the export fails (the previous export stays; the new files are kept
beside it for inspection).
"""

import json
import logging
import os
import platform
import shutil
import uuid
import warnings
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
from segment_anything.modeling import Sam
from segment_anything.utils.onnx import SamOnnxModel

from ..errors import BiglSamError, check_keep_ratio
from ..fileio import atomic_folder, atomic_save, atomic_write_text
from ..images import sam_input_array
from .. import modeling
from .interface import (
    ANYLABELING_CONFIG_FILE,
    DECODER_FILE,
    DECODER_INPUTS,
    DECODER_OUTPUTS,
    DEFAULT_KEEP_RATIO_KEY,
    DEFAULT_OPSET,
    EMBEDDING_OUTPUT,
    ENCODER_FILE,
    EXPORT_ID_KEY,
    IMAGE_INPUT,
    KEEP_RATIO_INPUT,
    OPSETS,
    RECORD_FILE,
)
from .record import file_records
from .predictor import open_session

# What an export folder may hold (a model over 2 GB keeps its weights in NAME.onnx.data).
EXPORT_FILES = {ENCODER_FILE, DECODER_FILE, RECORD_FILE, ANYLABELING_CONFIG_FILE, f"{ENCODER_FILE}.data",
                f"{DECODER_FILE}.data"}
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
    waiting=None,
) -> dict:
    """Writes encoder.onnx, decoder.onnx and the export record (export.json) into `out`; returns the record.

    The three files are written and checked in a new folder beside `out`, which then replaces `out` as a
    whole (`fileio.atomic_folder`): a kill at any moment leaves the previous export or the new one, and a
    second export to the same `out` waits for the first.

    Args:
        check_ratios: keep ratios the check runs the encoder at (big.LITTLE only; default: the model's
            own and 1.0).
        checkpoint: {"path", "sha256"} of the weights, or None for untrained weights.
        progress: a callable taking one line of text (tqdm.write while a bar is up), or None.
        waiting: called (no arguments) when another export to `out` runs and this one waits for it.
    Raises:
        BiglSamError: for an opset outside `OPSETS`, an `out` that is a file or holds other files, and
            when onnxruntime and PyTorch differ beyond the tolerances (`out` is then unchanged; the new
            files are kept in `OUT.failed` for inspection).
    """
    say = progress or (lambda line: None)
    out = Path(out)
    check_opset(opset)
    check_out(out)
    is_student = modeling.is_student(model)
    ratios = _check_ratios(model, check_ratios) if is_student else []
    export_id = uuid.uuid4().hex
    with atomic_folder(out, waiting) as folder:
        say(f"exporting the {model.config.name} image encoder to {out / ENCODER_FILE}")
        export_encoder(model.image_encoder, folder / ENCODER_FILE, opset, export_id)
        say(f"exporting SAM's prompt encoder and mask decoder to {out / DECODER_FILE}")
        export_decoder(model, folder / DECODER_FILE, opset, export_id)
        say("checking both files in onnxruntime against PyTorch")
        check = check_export(model, folder, ratios)
        record = {
            "model": model.config.name,
            "checkpoint": checkpoint,
            "keep_ratio": (
                {"input": KEEP_RATIO_INPUT, "default": model.image_encoder.keep_ratio, "checked_at": ratios}
                if is_student
                else None
            ),
            **record_entries(folder, export_id, opset, check),
        }
        write_record(out, folder, record)
    return record


def record_entries(folder: Path, export_id: str, opset: int, check: dict) -> dict:
    """The entries of the export record every format has: the export's id, its files, opset, versions and check."""
    return {"export_id": export_id, "files": file_records(folder), "opset": opset, "versions": _versions(),
            "check": check}


def write_record(out: Path, folder: Path, record: dict) -> None:
    """Writes the export record `record` (export.json, with its "check") into `folder`, the new export of `out` being built;
    if the check failed, moves `folder` to `OUT.failed` and raises (`out` is then unchanged)."""
    atomic_write_text(folder / RECORD_FILE, json.dumps(record, indent=2) + "\n")
    check = record["check"]
    if not check["passed"]:
        real = Path(os.path.realpath(out))
        failed = real.with_name(f"{real.name}.failed")
        shutil.rmtree(failed, ignore_errors=True)
        os.rename(folder, failed)
        raise BiglSamError(f"export check failed: {check['failures'][0]} ({out} is unchanged; the new files "
                           f"are in {failed} for inspection)")


def check_opset(opset) -> None:
    """One error line for an opset the exporter cannot write these graphs at."""
    if isinstance(opset, bool) or not isinstance(opset, int) or opset not in OPSETS:
        raise BiglSamError(f"--opset must be {OPSETS.start} to {OPSETS.stop - 1} (the opsets torch's exporter "
                           f"writes these models at, and onnxruntime runs), got {opset!r}")


def check_out(out: Path) -> None:
    """`out` must be a new folder, an empty one, or an earlier export (replaced as a whole, so a folder
    holding anything else is refused rather than emptied)."""
    if out.exists() and not out.is_dir():
        raise BiglSamError(f"{out}: is a file; give a folder for the export (new, empty, or an earlier export)")
    if out.is_dir():
        others = sorted(p.name for p in out.iterdir() if p.name not in EXPORT_FILES)
        if others:
            raise BiglSamError(f"{out}: holds {len(others)} file(s) of no export (e.g. {others[0]}); an export "
                               f"replaces its folder as a whole: give a new or empty folder, or an earlier export's")


def export_encoder(
    encoder: torch.nn.Module, path: Path, opset: int = DEFAULT_OPSET, export_id: Optional[str] = None
) -> None:
    """Writes an image encoder (SAM's `ImageEncoderViT` or a `BigLittleImageEncoder`, the latter with its
    keep-ratio input and its default in the metadata; `export_id` in the metadata if given)."""
    image = torch.zeros(1, 3, encoder.img_size, encoder.img_size)
    image[..., : encoder.img_size // 2, :] = 1.0  # padding below, as a real image has
    if modeling.is_student(encoder):
        module, args = KeepRatioEncoder(encoder), (image, torch.tensor(encoder.keep_ratio))
        names, metadata = [IMAGE_INPUT, KEEP_RATIO_INPUT], {DEFAULT_KEEP_RATIO_KEY: repr(encoder.keep_ratio)}
    else:
        module, args, names, metadata = encoder, (image,), [IMAGE_INPUT], {}
    with torch.no_grad():
        program = _export(module.eval(), args, names, [EMBEDDING_OUTPUT], opset, strict=False)
    program.model.metadata_props.update(metadata)
    program.model.metadata_props.update(_id_metadata(export_id))
    _save(program, path)


class SingleMaskDecoder(torch.nn.Module):
    """`SamOnnxModel(model, return_single_mask=True)` as an exportable graph: the same one mask (for one point
    and the padding point the best-scored multimask output, for more points the single-mask output), chosen
    from the number of points as a tensor (SAM's own choice multiplies by the traced size as a Python
    number, which torch's ONNX translator cannot write) and gathered from all four full-size masks."""

    SINGLE_MASK_BONUS = 1000.0  # SAM's weight that lets the point count pick single-mask vs multimask output
    MULTIMASK_BELOW_POINTS = 2.5  # SAM's: up to 2 points (one click and the padding point) take the multimask

    def __init__(self, model: Sam) -> None:
        super().__init__()
        self.decoder = SamOnnxModel(model, return_single_mask=False)

    def forward(self, image_embeddings, point_coords, point_labels, mask_input, has_mask_input, orig_im_size):
        """SAM's ONNX decoder inputs -> masks B x 1 x H x W, iou_predictions B x 1, low_res_masks B x 1 x 256 x 256."""
        masks, scores, low_res = self.decoder(
            image_embeddings, point_coords, point_labels, mask_input, has_mask_input, orig_im_size
        )
        points = torch.ones_like(point_labels).sum(dim=1, keepdim=True)  # B x 1, the points as a tensor
        single_mask_output = torch.zeros_like(scores)
        single_mask_output[:, 0] = 1.0
        bonus = (points - self.MULTIMASK_BELOW_POINTS) * self.SINGLE_MASK_BONUS * single_mask_output
        best = (scores + bonus).argmax(dim=1, keepdim=True)  # B x 1
        pick = lambda t: t.gather(1, best.view(-1, 1, *[1] * (t.dim() - 2)).expand(-1, 1, *t.shape[2:]))  # noqa: E731
        return pick(masks), scores.gather(1, best), pick(low_res)


def export_decoder(
    model: Sam, path: Path, opset: int = DEFAULT_OPSET, export_id: Optional[str] = None, single_mask: bool = False
) -> None:
    """Writes SAM's `SamOnnxModel` with a dynamic number of points (`export_id` in the metadata if given):
    all four masks, or with `single_mask` the one SAM's own export (`return_single_mask`) picks, what
    AnyLabeling shows (`masks[0][0]`): for one click the best-scored of the three multimask outputs, for
    more prompts the single-mask output."""
    decoder = (SingleMaskDecoder(model) if single_mask else SamOnnxModel(model, return_single_mask=False)).eval()
    args = _decoder_inputs(torch.zeros(1, 256, 64, 64), np.zeros((2, 2)), np.array([1.0, -1.0]), None, (600, 800))
    points = torch.export.Dim("num_points", min=1, max=MAX_POINTS)
    dynamic = {name: None for name in DECODER_INPUTS}
    dynamic["point_coords"], dynamic["point_labels"] = {1: points}, {1: points}
    # strict: SamOnnxModel crops the masks with int(tensor), which only the strict tracer records.
    program = _export(decoder, args, list(DECODER_INPUTS), list(DECODER_OUTPUTS), opset, strict=True, dynamic=dynamic)
    program.model.metadata_props.update(_id_metadata(export_id))
    _save(program, path)


def _id_metadata(export_id: Optional[str]) -> Dict[str, str]:
    return {} if export_id is None else {EXPORT_ID_KEY: export_id}


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
                dynamo=True, verbose=False, dynamic_shapes=dynamic, custom_translation_table=_translations(),
            )
    except Exception as err:  # torch.export and the ONNX translator raise many kinds; one line for the user
        first = next((line for line in str(err).splitlines() if line.strip()), type(err).__name__)
        raise BiglSamError(f"ONNX export of {type(module).__name__} failed: {first.strip()}") from err


def _translations() -> dict:
    """ONNX for the aten ops torch's translator lacks: the router's stable sort (`routing.top_slots`).

    ONNX TopK over the whole axis sorts, and among equal values puts the lower index first in either
    direction: exactly a stable sort, so onnxruntime breaks tied router scores as PyTorch does.
    """
    from onnxscript import opset18 as op

    def stable_sort(self, stable=None, dim: int = -1, descending: bool = False):
        length = op.Reshape(op.Gather(op.Shape(self), op.Constant(value_int=dim), axis=0), op.Constant(value_ints=[1]))
        return op.TopK(self, length, axis=dim, largest=int(descending), sorted=1)

    return {torch.ops.aten.sort.stable: stable_sort}


def _save(program, path: Path) -> None:
    """Writes the model without ever leaving half a file at `path` (a model over 2 GB is two files: the graph,
    and its weights in `path.name + ".data"`)."""
    atomic_save(path, lambda target: program.save(str(target)))


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


def check_decoder(
    model: Sam, decoder, features: torch.Tensor, diffs: Dict[str, float], failures: List[str], single_mask: bool = False
) -> None:
    """Adds the max abs difference onnxruntime (`decoder`, a session, exported with `single_mask` as
    `export_decoder`'s) vs PyTorch per prompt kind of `CHECK_PROMPTS` on `features` (1 x 256 x 64 x 64) to
    `diffs`, and a line per kind beyond the tolerance to `failures`."""
    torch_decoder = SamOnnxModel(model, return_single_mask=single_mask).eval()
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
    """The export record's "check" entry."""
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
