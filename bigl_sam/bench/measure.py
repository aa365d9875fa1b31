"""Measuring cases in interleaved rounds: every case is warmed up (the first eager call counts its MACs,
the first compiled call compiles; each is the first of its warm-up runs), then round 1 runs each case
once in order, round 2 again, and so on. A change of machine load during the run then hits every row
alike; each row reports its median.
"""

import statistics
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count
from tqdm import tqdm

from ..errors import first_line

# torch's FLOP counter knows SDPA's CUDA kernels but not the CPU one.
CPU_SDPA_FLOPS = {
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: (
        lambda q, k, v, *args, out_shape=None, **kwargs: sdpa_flop_count(q, k, v)
    )
}

# The machine's limit each row is set against: a matmul of ViT-B's MLP over the P-path tokens of a 1024 x 1024
# input at keep 0.25 (M x K x N), timed in float32 and bfloat16 in the same run as the rows.
REFERENCE_MATMUL = (1024, 768, 3072)
REFERENCE_SECONDS = 2.0  # timed calls per dtype go on until this much time has passed (at most 5)


@dataclass
class Case:
    """One row's work: `forward()` runs the encoder once on its input (batch images)."""

    model_type: str  # a registry key, or a peer's name (`peers.PEERS`)
    keep_ratio: Optional[float]
    input: str  # the input's label
    compiled: bool
    forward: Callable[[], object]
    # The PyTorch call MACs are counted on, when it is not `forward` itself: the float32 forward (MACs do
    # not depend on the dtype, and torch's FLOP counter trips over the mixed dtypes autocast leaves in SAM's
    # relative-position einsum), or for onnxruntime rows the encoder computing what its ONNX graph does.
    counted_forward: Optional[Callable[[], object]] = None
    backend: str = "torch"  # or "onnxruntime", "onnxruntime int8"
    # int8 rows: the float32 onnxruntime forward whose embeddings they are compared with (max abs diff).
    reference: Optional[Callable[[], np.ndarray]] = None
    macs: Optional[float] = None  # per image, counted on the first eager call
    compile_s: Optional[float] = None  # the first compiled call (compile + one run), not in latencies_ms
    compile_error: Optional[str] = None  # why compiling failed; the case is then not timed
    latencies_ms: List[float] = field(default_factory=list)
    max_abs_diff: Optional[float] = None  # int8 rows: embeddings vs `reference`, on this row's input

    @property
    def label(self) -> str:
        return row_label(self.model_type, self.keep_ratio, self.compiled, self.backend)

    @property
    def latency_ms(self) -> float:
        return statistics.median(self.latencies_ms)


def row_label(model_type: str, keep_ratio: Optional[float], compiled: bool, backend: str = "torch") -> str:
    """'bigl_b_t @0.25 compiled', 'vit_b', 'bigl_b_t @0.25 [onnxruntime int8]'."""
    name = model_type if keep_ratio is None else f"{model_type} @{keep_ratio:g}"
    name = f"{name} compiled" if compiled else name
    return name if backend == "torch" else f"{name} [{backend}]"


@torch.inference_mode()
def measure(cases: List[Case], runs: int, warmup: int, batch: int, device: torch.device) -> None:
    """Fills every case's MACs (eager cases), compile time (compiled ones) and `runs` latencies."""
    for case in cases:
        _first_call(case, batch, device)
    live = [case for case in cases if case.compile_error is None]
    for _ in range(warmup - 1):
        for case in live:
            case.forward()
    with tqdm(total=runs * len(live), desc="bench rounds", unit="run") as progress:
        for _ in range(runs):
            for case in live:
                case.latencies_ms.append(_timed_ms(case.forward, device))
                progress.update()


def _first_call(case: Case, batch: int, device: torch.device) -> None:
    if not case.compiled:
        with FlopCounterMode(display=False, custom_mapping=CPU_SDPA_FLOPS) as counter:
            out = (case.counted_forward or case.forward)()
        if case.counted_forward is not None:
            out = case.forward()  # the first warm-up run of what is timed
        case.macs = counter.get_total_flops() / 2 / batch
        diff = ""
        if case.reference is not None:
            case.max_abs_diff = float(np.abs(out - case.reference()).max())
            diff = f", max abs diff {case.max_abs_diff:.3g} to float32"
        tqdm.write(f"  {case.label} on {case.input}: {case.macs / 1e9:.1f} GMACs{diff}")
        return
    try:
        case.compile_s = _timed_ms(case.forward, device) / 1e3
    except Exception as err:  # inductor's failures have many types (no compiler, unsupported op, ...)
        case.compile_error = first_line(err, with_type=True)
        tqdm.write(f"  {case.label} on {case.input}: torch.compile failed ({case.compile_error}); row skipped")
        return
    tqdm.write(f"  {case.label} on {case.input}: compiled in {case.compile_s:.1f} s (first call)")


def _timed_ms(forward: Callable[[], object], device: torch.device) -> float:
    _sync(device)
    start = time.perf_counter()
    forward()
    _sync(device)
    return (time.perf_counter() - start) * 1e3


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.inference_mode()
def matmul_speed(device: torch.device, dtypes: Dict[str, torch.dtype]) -> dict:
    """{"shape": "MxKxN", "gmacs_per_s": {dtype name: GMAC/s}} of REFERENCE_MATMUL: per dtype one warm-up
    call, then the best of up to 5 timed calls (the machine's speed, not its load)."""
    m, k, n = REFERENCE_MATMUL
    speeds = {}
    for name, dtype in dtypes.items():
        a, b = torch.randn(m, k, device=device, dtype=dtype), torch.randn(k, n, device=device, dtype=dtype)
        a @ b
        times_ms: List[float] = []
        while len(times_ms) < 5 and sum(times_ms) < REFERENCE_SECONDS * 1e3:
            times_ms.append(_timed_ms(lambda: a @ b, device))
        speeds[name] = m * k * n / (min(times_ms) / 1e3) / 1e9
    return {"shape": f"{m}x{k}x{n}", "gmacs_per_s": speeds}
