"""`bigl-sam bench`: parameters, GMACs and latency of image encoders, measured in one run.

Every big.LITTLE row is compared with two baselines measured on the same input, in the same run and mode
(eager or compiled): the SAM ViT its P-path comes from, as SAM ships it (`vs SAM`), and its own dense path
at keep ratio 1.0 (`vs dense`). The first tells a user what switching buys; the second separates what
routing saves from what the SDPA kernel saves. `lat/MAC` is the latency ratio divided by the GMACs ratio
(vs SAM): 1.0 means every MAC saved became time saved.
"""

import argparse
import json
from pathlib import Path
from typing import List

from ..errors import BiglSamError, UnknownModelError, keep_ratio_list
from ..fileio import atomic_write_text, check_writable
from ..modeling.config import get_config
from ..onnx.extra import ONNX_INSTALL, require_onnx_extra
from ..options import add_dtype_option
from .inputs import DEFAULT_SIZE, bench_inputs
from .peers import PEERS, PEERS_INSTALL

DEFAULT_MODELS = "vit_b,vit_l,vit_h,bigl_b_t,bigl_l_s,bigl_h_b"
BACKENDS = ("torch", "onnxruntime")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--models", default=DEFAULT_MODELS,
        help=f"comma-separated model names; also the peers {', '.join(PEERS)} (random weights, image encoder "
             f"only; needs {PEERS_INSTALL}). All are held in memory at once (rows run in interleaved rounds)",
    )
    parser.add_argument(
        "--keep-ratio",
        default="default,1.0",
        help="comma-separated keep ratios for big.LITTLE rows; 'default' is the config's own (0.25)",
    )
    parser.add_argument(
        "--image", type=Path, action="append", default=[],
        help="a photo to run on, preprocessed as SamPredictor.set_image does (resize, normalise, zero-pad); "
             "repeatable",
    )
    parser.add_argument(
        "--size", action="append", default=[],
        help=f"WIDTHxHEIGHT of a synthetic photo to run on, e.g. 640x480 (padded like a real one); repeatable. "
             f"Without --image and --size: {DEFAULT_SIZE}",
    )
    parser.add_argument("--runs", type=int, default=5, help="interleaved timed rounds (median per row reported)")
    parser.add_argument("--warmup", type=int, default=1,
                        help="untimed runs per row before the rounds (the first counts MACs, or compiles)")
    parser.add_argument("--batch", type=int, default=1, help="images per forward (GMACs are per image)")
    parser.add_argument("--device", default="cpu", metavar="DEVICE", help="cpu, cuda or cuda:N")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    add_dtype_option(parser, "the encoders")
    parser.add_argument("--compile", action="store_true",
                        help="also time each encoder compiled by torch.compile (compile time reported apart)")
    parser.add_argument("--clicks", type=int, default=20,
                        help="clicks timed after the first one for the demo-click line (0: skip it)")
    parser.add_argument(
        "--compile-decoder", action="store_true",
        help="also time clicks with the demo's compiled mask decoder (first click after start-up apart)",
    )
    parser.add_argument(
        "--backend", default="torch",
        help=f"comma-separated: {', '.join(BACKENDS)}. onnxruntime exports each SAM and big.LITTLE encoder "
             f"first (keep ratio as an input; needs {ONNX_INSTALL}) and times it in the same rounds, on the CPU, "
             f"float32, batch 1",
    )
    parser.add_argument(
        "--quantize", choices=["int8"], default=None,
        help="with onnxruntime: also time its dynamic int8 quantisation of each encoder, with its max abs "
             "embedding difference to the float32 export",
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the rows and settings to this file")


def run(args: argparse.Namespace) -> int:
    import torch  # the measuring modules load here, not at the top: --help does without torch

    from ..distributed import DTYPES, note_bfloat16, pick_device
    from .cases import bench_cases
    from .clicks import bench_clicks
    from .encoders import build_encoder
    from .measure import matmul_speed, measure
    from .report import add_throughput, format_table, report, rows_from, settings

    check_arguments(args)
    names = model_names(args.models)
    inputs = bench_inputs(args.image, args.size)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    note_bfloat16(device, args.dtype)
    encoders = [build_encoder(model_type, args.keep_ratio, device) for model_type in names]
    cases = bench_cases(encoders, inputs, args, device)
    measure(cases, args.runs, args.warmup, args.batch, device)
    matmul = matmul_speed(device, DTYPES)
    rows = rows_from(cases, {e.model_type: e.params_m for e in encoders})
    add_throughput(rows, matmul, args.batch, args.dtype)
    failed = [case for case in cases if case.compile_error is not None]
    clicks = bench_clicks(args.clicks, args.compile_decoder) if args.clicks > 0 else {}
    run_settings = settings(args, device, [item.label for item in inputs], matmul)
    print(format_table(rows, failed, clicks, run_settings))
    if args.json:
        atomic_write_text(args.json, json.dumps(report(rows, failed, clicks, run_settings), indent=2) + "\n")
    return 0


def model_names(spec: str) -> List[str]:
    """'vit_b, bigl_b_t' -> ['vit_b', 'bigl_b_t'], every name checked before anything is built."""
    names = list(dict.fromkeys(n.strip() for n in spec.split(",") if n.strip()))
    if not names:
        raise BiglSamError("--models names no model")
    for name in names:
        if name not in PEERS:
            try:
                get_config(name)
            except UnknownModelError as err:
                raise UnknownModelError(f"{err}; peers ({PEERS_INSTALL}): {', '.join(PEERS)}") from None
    return names


def check_arguments(args: argparse.Namespace) -> None:
    """Every number and the output path, before any model is built or anything measured."""
    for option, value in (("--runs", args.runs), ("--warmup", args.warmup), ("--batch", args.batch)):
        if value < 1:
            raise BiglSamError(f"{option} must be at least 1, got {value}")
    if args.threads is not None and args.threads < 1:
        raise BiglSamError(f"--threads must be at least 1, got {args.threads}")
    if args.clicks < 0:
        raise BiglSamError(f"--clicks must be 0 (skip) or more, got {args.clicks}")
    keep_ratio_list(args.keep_ratio, default=1.0)
    args.backends = backends(args)
    if args.json is not None:
        check_writable(args.json, "--json")


def backends(args: argparse.Namespace) -> List[str]:
    """--backend as a list, with what onnxruntime rows need: the onnx extra, the CPU, float32, batch 1."""
    names = list(dict.fromkeys(b.strip() for b in args.backend.split(",") if b.strip()))
    if not names or any(b not in BACKENDS for b in names):
        raise BiglSamError(f"--backend must be a comma-separated choice of {', '.join(BACKENDS)}, got {args.backend!r}")
    if "onnxruntime" not in names:
        if args.quantize:
            raise BiglSamError("--quantize int8 quantises the onnxruntime encoder: add --backend onnxruntime")
        return names
    require_onnx_extra("--backend onnxruntime")
    peers = [name for name in model_names(args.models) if name in PEERS]
    if "torch" not in names:
        if peers:
            raise BiglSamError(f"--backend onnxruntime: the peers ({', '.join(peers)}) are timed in PyTorch only; "
                               f"use --backend torch,onnxruntime to time them beside the onnxruntime rows")
        if args.compile:
            raise BiglSamError("--compile compiles the PyTorch encoders, and --backend onnxruntime times none; "
                               "use --backend torch,onnxruntime --compile")
    elif peers:
        print(f"note: the peers ({', '.join(peers)}) have no onnxruntime rows; they are timed in PyTorch only")
    if args.batch != 1:
        raise BiglSamError(
            f"--backend onnxruntime times batch 1 (encoder.onnx takes one image), got --batch {args.batch}"
        )
    if args.dtype != "float32":
        raise BiglSamError(f"--backend onnxruntime runs the float32 export; --dtype {args.dtype} would compare "
                           f"unlike rows (run it apart)")
    if args.device != "cpu":
        raise BiglSamError(f"--backend onnxruntime runs on the CPU; --device {args.device} would compare unlike "
                           f"rows (run it apart)")
    return names
