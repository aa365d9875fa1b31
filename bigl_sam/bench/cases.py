"""The cases of a bench run: per input, model and keep ratio, the calls that are timed (`measure.Case`),
each as `SamPredictor` makes it."""

import argparse
from typing import List, Optional

import torch
from tqdm import tqdm

from ..distributed import DTYPES, autocast
from .encoders import BenchEncoder
from .inputs import BenchInput, encoder_input
from .measure import Case
from .peers import PEERS


def bench_cases(
    encoders: List[BenchEncoder], inputs: List[BenchInput], args: argparse.Namespace, device: torch.device
) -> List[Case]:
    """Per input, per model, per keep ratio: the eager case, then (with --compile) the compiled one, then
    (with --backend onnxruntime) the onnxruntime one and its int8 twin (--quantize int8); the torch rows
    only with --backend torch. Peers have no onnxruntime rows."""
    dtype = DTYPES[args.dtype]
    compiled = {e.model_type: torch.compile(e.module) for e in encoders} if args.compile else {}
    exported = {}
    if "onnxruntime" in args.backends:
        from ..onnx.runtime import encoder_runners

        for encoder in encoders:
            if encoder.model_type not in PEERS:
                tqdm.write(f"  exporting {encoder.model_type} to ONNX for onnxruntime")
                exported[encoder.model_type] = encoder_runners(encoder.module, args.quantize, args.threads)
    cases = []
    for item in inputs:
        for encoder in encoders:
            x = encoder_input(item, encoder.pixel_mean, encoder.pixel_std, encoder.img_size, args.batch).to(device)
            for ratio in encoder.keep_ratios:
                if "torch" in args.backends:
                    float32 = None if dtype == torch.float32 else _forward(encoder.module, x, ratio, torch.float32)
                    eager = _forward(encoder.module, x, ratio, dtype)
                    cases.append(Case(encoder.model_type, ratio, item.label, False, eager, float32))
                    if args.compile:
                        forward = _forward(compiled[encoder.model_type], x, ratio, dtype)
                        cases.append(Case(encoder.model_type, ratio, item.label, True, forward))
                if encoder.model_type in exported:
                    cases += _onnxruntime_cases(encoder, exported[encoder.model_type], x, ratio, item.label)
    return cases


def _onnxruntime_cases(encoder: BenchEncoder, runners, x: torch.Tensor, ratio: Optional[float], label: str):
    """The onnxruntime case (and its int8 twin) of one encoder, input and keep ratio. MACs are counted on
    the PyTorch encoder doing what the graph does (a tensor keep ratio: routing planned in the graph)."""
    image = x.cpu().numpy()
    graph_ratio = None if ratio is None else torch.tensor(ratio)
    counted = _forward(encoder.module, x, graph_ratio, torch.float32)
    float32 = runners["onnxruntime"]
    cases = []
    for backend, run_encoder in runners.items():
        reference = None if run_encoder is float32 else (lambda: float32(image, ratio))
        forward = lambda run_encoder=run_encoder: run_encoder(image, ratio)  # noqa: E731
        cases.append(Case(encoder.model_type, ratio, label, False, forward, counted, backend, reference))
    return cases


def _forward(module: torch.nn.Module, x: torch.Tensor, keep_ratio: Optional[float], dtype: torch.dtype):
    """A call of `module` on `x` (under autocast to `dtype` unless float32), as `SamPredictor` makes it."""
    kwargs = {} if keep_ratio is None else {"keep_ratio": keep_ratio}

    def forward():
        with autocast(x.device, dtype):
            return module(x, **kwargs)

    return forward
