"""The bench table and its JSON: one row per model, keep ratio, input and eager/compiled, with ratios to
the baselines measured on the same input in the same run and the same mode (eager or compiled)."""

import platform
from dataclasses import asdict, dataclass
from typing import Dict, List, Optional, Tuple

import torch

from .encoders import sam_vit_of
from .measure import Case, row_label


@dataclass
class Row:
    model_type: str  # a registry key, or a peer's name (`peers.PEERS`)
    keep_ratio: Optional[float]
    input: str
    compiled: bool
    params_m: float
    gmacs: float  # per image
    latency_ms: float  # median of latencies_ms, for the whole batch
    latencies_ms: List[float]
    compile_s: Optional[float] = None
    vs_sam_gmacs: Optional[float] = None
    vs_sam_latency: Optional[float] = None
    vs_dense_latency: Optional[float] = None
    backend: str = "torch"  # or "onnxruntime", "onnxruntime int8"
    max_abs_diff: Optional[float] = None  # int8 rows: embeddings vs the float32 onnxruntime row
    gmacs_per_s: Optional[float] = None  # achieved: GMACs of the batch over its median latency
    of_matmul: Optional[float] = None  # gmacs_per_s over the same-run matmul speed in the row's dtype

    @property
    def label(self) -> str:
        return row_label(self.model_type, self.keep_ratio, self.compiled, self.backend)


def rows_from(cases: List[Case], params_m: Dict[str, float]) -> List[Row]:
    """Rows of the cases that ran; a compiled case has the MACs of its eager twin (same computation)."""
    macs = {(c.model_type, c.keep_ratio, c.input, c.backend): c.macs for c in cases if not c.compiled}
    rows = [
        Row(c.model_type, c.keep_ratio, c.input, c.compiled, round(params_m[c.model_type], 2),
            round(macs[c.model_type, c.keep_ratio, c.input, c.backend] / 1e9, 3), c.latency_ms, c.latencies_ms,
            c.compile_s, backend=c.backend, max_abs_diff=c.max_abs_diff)
        for c in cases
        if c.compile_error is None
    ]
    add_ratios(rows)
    return rows


def add_ratios(rows: List[Row]) -> None:
    """Fills each big.LITTLE row's ratios to its SAM ViT and to its own dense path (keep ratio 1.0), each
    measured on the same input in the same mode and backend, where the run has them."""
    Key = Tuple[str, str, bool, str]
    sam_rows: Dict[Key, Row] = {
        (r.model_type, r.input, r.compiled, r.backend): r for r in rows if r.keep_ratio is None
    }
    dense_rows: Dict[Key, Row] = {
        (r.model_type, r.input, r.compiled, r.backend): r for r in rows if r.keep_ratio == 1.0
    }
    for row in rows:
        if row.keep_ratio is None:
            continue
        sam = sam_rows.get((sam_vit_of(row.model_type), row.input, row.compiled, row.backend))
        if sam is not None:
            row.vs_sam_gmacs = row.gmacs / sam.gmacs
            row.vs_sam_latency = row.latency_ms / sam.latency_ms
        dense = dense_rows.get((row.model_type, row.input, row.compiled, row.backend))
        if dense is not None:
            row.vs_dense_latency = row.latency_ms / dense.latency_ms


def add_throughput(rows: List[Row], matmul: dict, batch: int, dtype: str) -> None:
    """Fills each row's achieved GMAC/s and its share of the matmul reference (`measure.matmul_speed`) in
    the dtype it computes in: `dtype` for torch rows, float32 for onnxruntime, none for int8."""
    for row in rows:
        row.gmacs_per_s = row.gmacs * batch / (row.latency_ms / 1e3)
        row_dtype = {"torch": dtype, "onnxruntime": "float32"}.get(row.backend)
        if row_dtype in matmul["gmacs_per_s"]:
            row.of_matmul = row.gmacs_per_s / matmul["gmacs_per_s"][row_dtype]


def format_table(rows: List[Row], failed: List[Case], clicks: Dict[str, float], settings: dict) -> str:
    header = (
        "| model | input | params (M) | GMACs | GMACs vs SAM | latency (ms) | latency vs SAM | lat/MAC | vs dense "
        "| GMAC/s | of matmul |"
    )
    quantized = any(r.max_abs_diff is not None for r in rows)
    if quantized:
        header += " int8 max abs diff |"
    lines = [header, "|" + "---|" * (12 if quantized else 11)]
    for r in rows:
        lat_per_mac = r.vs_sam_latency / r.vs_sam_gmacs if r.vs_sam_gmacs else None
        cells = [
            r.label, r.input, f"{r.params_m:.1f}", f"{r.gmacs:.1f}", _ratio(r.vs_sam_gmacs), f"{r.latency_ms:.0f}",
            _ratio(r.vs_sam_latency), _ratio(lat_per_mac), _ratio(r.vs_dense_latency),
            "" if r.gmacs_per_s is None else f"{r.gmacs_per_s:.1f}", "" if r.of_matmul is None else f"{r.of_matmul:.0%}",
        ]
        if quantized:
            cells.append("" if r.max_abs_diff is None else f"{r.max_abs_diff:.3g}")
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", settings_line(settings)]
    compiled = [f"{r.label} on {r.input} {r.compile_s:.1f} s" for r in rows if r.compiled]
    if compiled:
        lines.append("torch.compile, first call of each compiled row (compile + one run, not in its latency): "
                     + ", ".join(compiled))
    lines += [f"{c.label} on {c.input}: torch.compile failed ({c.compile_error})" for c in failed]
    if clicks:
        lines.append(click_line(clicks))
    return "\n".join(lines)


def click_line(clicks: Dict[str, float]) -> str:
    line = (
        f"one demo click on CPU (prompt encoder, mask decoder, upsampling; 640x480): first after start-up "
        f"{clicks['eager_first_ms']:.1f} ms, later clicks {clicks['eager_ms']:.1f} ms median"
    )
    if "compile_error" in clicks:
        line += f"; compiled decoder: torch.compile failed ({clicks['compile_error']})"
    if "compiled_ms" in clicks:
        line += (
            f"; compiled decoder (compiled at start-up in {clicks['compile_s']:.0f} s): first click "
            f"{clicks['compiled_first_ms']:.1f} ms, later clicks {clicks['compiled_ms']:.1f} ms median"
        )
    return line


def _ratio(value: Optional[float]) -> str:
    return "" if value is None else f"{value:.2f}"


def settings(args, device: torch.device, inputs: List[str], matmul: dict) -> dict:
    return {
        "device": str(device),
        "device_name": _device_name(device),
        "threads": torch.get_num_threads(),
        "batch": args.batch,
        "dtype": args.dtype,
        "runs": args.runs,
        "warmup": args.warmup,
        "inputs": inputs,
        "backends": list(args.backends),
        "torch": torch.__version__,
        "onnxruntime": _onnxruntime_version() if "onnxruntime" in args.backends else None,
        "matmul": matmul,
    }


def settings_line(s: dict) -> str:
    return (
        f"device {s['device']} ({s['device_name']}), {s['threads']} threads, batch {s['batch']}, {s['dtype']}, "
        f"median of {s['runs']} interleaved rounds after {s['warmup']} warm-up, torch {s['torch']}"
        + (f", onnxruntime {s['onnxruntime']} (CPU)" if s["onnxruntime"] else "")
        + f"; `of matmul`: share of a {s['matmul']['shape']} matmul's speed in the same run ("
        + ", ".join(f"{dtype} {speed:.1f} GMAC/s" for dtype, speed in s["matmul"]["gmacs_per_s"].items()) + ")"
    )


def _onnxruntime_version() -> str:
    import onnxruntime

    return onnxruntime.__version__


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return platform.processor() or platform.machine()


def report(rows: List[Row], failed: List[Case], clicks: Dict[str, float], settings: dict) -> dict:
    return {
        "settings": settings,
        "rows": [asdict(r) for r in rows],
        "compile_failures": [
            {"model_type": c.model_type, "keep_ratio": c.keep_ratio, "input": c.input, "error": c.compile_error}
            for c in failed
        ],
        "demo_click": clicks,
    }
