"""`bigl-sam export onnx`: encoder.onnx, decoder.onnx and export.json for onnxruntime deployments; with
`--check`, the checks a loader of the folder at --out makes, exporting nothing."""

import argparse
import sys
from pathlib import Path

from tqdm import tqdm

from ..errors import BiglSamError, keep_ratio_list
from .extra import require_onnx_extra
from .interface import ANYLABELING_FORMAT, DEFAULT_OPSET, OPSETS


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("format", choices=["onnx"], help="the export format")
    parser.add_argument("--model", default=None, help="model name, e.g. bigl_b_t or vit_b (required unless --check)")
    parser.add_argument(
        "--checkpoint", type=Path, default=None,
        help="weights for --model (default: the weights rule every command follows: a student file in the weights "
             "folder, else SAM's official files there, else random weights, said so)"
    )
    parser.add_argument("--out", type=Path, required=True, help="folder for encoder.onnx, decoder.onnx, export.json")
    parser.add_argument("--format", dest="layout", choices=["bigl-sam", ANYLABELING_FORMAT], default="bigl-sam",
                        help="anylabeling: an encoder taking the resized RGB image (preprocessing inside, the keep "
                             "ratio fixed) and a config.yaml, for AnyLabeling's \"Load custom model\" (docs/labeling.md)")
    parser.add_argument(
        "--opset", type=int, default=None, help=f"ONNX opset, {OPSETS.start} to {OPSETS.stop - 1} (default: {DEFAULT_OPSET})"
    )
    parser.add_argument(
        "--keep-ratio",
        default=None,
        help="comma-separated keep ratios the export check runs the encoder at (default: the model's and 1.0); "
        "the keep ratio stays an input of encoder.onnx. With --format anylabeling: the one keep ratio fixed in "
        "the encoder (default: the model's)",
    )
    parser.add_argument("--check", action="store_true",
                        help="export nothing: load the export at --out as its user does (OnnxPredictor.from_folder; "
                             "with --format anylabeling: config.yaml and the two files it names) and say what is wrong")


def run(args: argparse.Namespace) -> int:
    require_onnx_extra("bigl-sam export onnx")
    if args.check:
        return check(args)
    if args.model is None:
        raise BiglSamError("--model is required (or --check, to check an earlier export)")
    from ..modeling import check_keep_ratio_applies
    from ..pretrained import choose_weights, load_chosen, weights_lines
    from .export import check_opset, check_out, export_onnx

    ratios = None if args.keep_ratio is None else keep_ratio_list(args.keep_ratio)
    opset = DEFAULT_OPSET if args.opset is None else args.opset
    check_opset(opset)
    check_out(args.out)
    choice = choose_weights(args.model, args.checkpoint)  # the weights rule every command follows
    model = load_chosen(choice)
    check_keep_ratio_applies(model, args.keep_ratio, args.model)
    print(weights_lines([choice]), file=sys.stderr)
    checkpoint = _weights_record(choice)
    with tqdm(total=3, desc=f"export {args.model}", unit="step") as bar:
        started = []

        def step(line: str) -> None:  # called as each of the three steps starts
            bar.update(1 if started else 0)
            started.append(line)
            tqdm.write(line)

        def waiting() -> None:
            tqdm.write(f"waiting for another export to {args.out} to finish")

        if args.layout == ANYLABELING_FORMAT:
            from .anylabeling import export_anylabeling

            if ratios is not None and len(ratios) != 1:
                raise BiglSamError(f"--keep-ratio with --format anylabeling is the one ratio fixed in the encoder, "
                                   f"got {args.keep_ratio!r}")
            ratio = None if ratios is None else ratios[0]
            record = export_anylabeling(
                model, args.out, ratio, opset=opset, checkpoint=checkpoint, progress=step, waiting=waiting
            )
        else:
            record = export_onnx(
                model, args.out, opset=opset, check_ratios=ratios, checkpoint=checkpoint, progress=step, waiting=waiting
            )
        bar.update(1)
    if choice.random:
        print(f"note: {args.model} was exported with untrained random weights ({choice.describe()})")
    diffs = ", ".join(f"{k} {v:.2g}" for k, v in record["check"]["max_abs_diff"].items())
    config = ", config.yaml" if args.layout == ANYLABELING_FORMAT else ""
    print(f"wrote {args.out}: encoder.onnx, decoder.onnx{config}, export.json; max abs difference to PyTorch: {diffs}")
    return 0


def check(args: argparse.Namespace) -> int:
    """`--check`: the folder at --out loaded as its user loads it; one error line for what is wrong."""
    given = [flag for flag, value in (("--model", args.model), ("--checkpoint", args.checkpoint),
                                      ("--keep-ratio", args.keep_ratio), ("--opset", args.opset)) if value is not None]
    if given:
        raise BiglSamError(f"--check reads the export at --out and exports nothing: leave out {', '.join(given)}")
    if args.layout == ANYLABELING_FORMAT:
        from .anylabeling import open_anylabeling

        config = open_anylabeling(args.out, check_hashes=True)[0]
        print(f"{args.out}: loads as AnyLabeling loads it ({config['display_name']}: {config['encoder_model_path']}, "
              f"{config['decoder_model_path']})")
    else:
        from .predictor import OnnxPredictor

        OnnxPredictor.from_folder(args.out, check_hashes=True)
        print(f"{args.out}: loads in OnnxPredictor (encoder.onnx, decoder.onnx, export.json agree, sha256 included)")
    return 0


def _weights_record(choice):
    """export.json's `checkpoint`: {"path", "sha256"} of the weights (`fingerprint.weights_fingerprint`: a
    file's sha256, or a transformers folder's), a list of them for a student built from two official files,
    None for random weights."""
    from ..fingerprint import weights_fingerprint

    entries = [{"path": str(path), "sha256": weights_fingerprint(path)} for path in dict.fromkeys(choice.files)]
    return None if not entries else entries[0] if len(entries) == 1 else entries
