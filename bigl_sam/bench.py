"""`bigl-sam bench`: parameters, GMACs and latency of image encoders, measured in one run.

Every big.LITTLE row is compared with two baselines measured in the same run: the SAM ViT its P-path
comes from, as SAM ships it (`vs SAM`), and its own dense path at keep ratio 1.0 (`vs dense`). The first
tells a user what switching buys; the second separates what routing saves from what the SDPA kernel saves.
`lat/MAC` is the latency ratio divided by the GMACs ratio (vs SAM): 1.0 means every MAC saved became time
saved.
"""

import argparse
import json
import platform
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Dict, List, Optional

import torch
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

from .build import build_model
from .demo.inference import Encoding, compile_decoder, decode_click
from .distributed import pick_device
from .modeling import BigLittleConfig, get_config
from .modeling.config import check_keep_ratio

DEFAULT_MODELS = "vit_b,vit_l,vit_h,bigl_b_t,bigl_l_s,bigl_h_b"
# torch's FLOP counter knows SDPA's CUDA kernels but not the CPU one.
CPU_SDPA_FLOPS = {
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: (
        lambda q, k, v, *args, out_shape=None, **kwargs: sdpa_flop_count(q, k, v)
    )
}


@dataclass
class Row:
    model: str
    keep_ratio: Optional[float]
    params_m: float
    gmacs: float
    latency_ms: float
    latencies_ms: List[float]
    vs_sam_gmacs: Optional[float] = None
    vs_sam_latency: Optional[float] = None
    vs_dense_latency: Optional[float] = None

    @property
    def label(self) -> str:
        return self.model if self.keep_ratio is None else f"{self.model} @{self.keep_ratio:g}"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--models", default=DEFAULT_MODELS, help="comma-separated model names")
    parser.add_argument(
        "--keep-ratio",
        default="default,1.0",
        help="comma-separated keep ratios for big.LITTLE rows; 'default' is the config's own (0.25)",
    )
    parser.add_argument("--runs", type=int, default=5, help="timed runs per row (median reported)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed runs per row (the first counts MACs)")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--clicks", type=int, default=20, help="decoder runs for the per-click row (0: skip)")
    parser.add_argument(
        "--compile-decoder", action="store_true", help="also time clicks with the demo's compiled mask decoder"
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the rows and settings here")


def run(args: argparse.Namespace) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    names = [n.strip() for n in args.models.split(",") if n.strip()]
    rows = [row for name in names for row in bench_model(name, args, device)]
    add_ratios(rows)
    clicks = bench_clicks(args.clicks, args.compile_decoder) if args.clicks > 0 else {}
    print(format_table(rows, clicks, args, device))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(_report(rows, clicks, args, device), indent=2) + "\n")
    return 0


def bench_model(name: str, args: argparse.Namespace, device: torch.device) -> List[Row]:
    config = get_config(name)
    encoder = build_model(config).image_encoder.to(device)
    params = sum(p.numel() for p in encoder.parameters()) / 1e6
    image = torch.randn(args.batch, 3, encoder.img_size, encoder.img_size, device=device)
    if not isinstance(config, BigLittleConfig):
        return [_measure(name, None, params, lambda: encoder(image), args, device)]
    ratios = _keep_ratios(args.keep_ratio, config.keep_ratio)
    return [_measure(name, r, params, lambda r=r: encoder(image, keep_ratio=r), args, device) for r in ratios]


def _keep_ratios(spec: str, default: float) -> List[float]:
    ratios = []
    for part in spec.split(","):
        value = default if part.strip() == "default" else check_keep_ratio(float(part), "--keep-ratio")
        if value not in ratios:
            ratios.append(value)
    return ratios


@torch.inference_mode()
def _measure(name, keep_ratio, params, forward, args, device) -> Row:
    with FlopCounterMode(display=False, custom_mapping=CPU_SDPA_FLOPS) as counter:
        forward()
    for _ in range(args.warmup - 1):
        forward()
    times = []
    for _ in range(args.runs):
        _sync(device)
        start = time.perf_counter()
        forward()
        _sync(device)
        times.append((time.perf_counter() - start) * 1e3)
    macs = counter.get_total_flops() / 2 / args.batch
    row = Row(name, keep_ratio, round(params, 2), round(macs / 1e9, 1), statistics.median(times), times)
    print(f"  measured {row.label}: {row.gmacs} GMACs, median {row.latency_ms:.0f} ms", flush=True)
    return row


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def add_ratios(rows: List[Row]) -> None:
    """Fills each big.LITTLE row's ratios to its SAM ViT and to its own dense path, where measured."""
    sam_rows: Dict[str, Row] = {r.model: r for r in rows if r.keep_ratio is None}
    dense_rows: Dict[str, Row] = {r.model: r for r in rows if r.keep_ratio == 1.0}
    for row in rows:
        if row.keep_ratio is None:
            continue
        sam = sam_rows.get(get_config(row.model).init_from)
        if sam is not None:
            row.vs_sam_gmacs = row.gmacs / sam.gmacs
            row.vs_sam_latency = row.latency_ms / sam.latency_ms
        dense = dense_rows.get(row.model)
        if dense is not None:
            row.vs_dense_latency = row.latency_ms / dense.latency_ms


def bench_clicks(runs: int, compiled: bool) -> Dict[str, float]:
    """One demo click on a 640 x 480 image, on the CPU: prompt encoder, mask decoder (multimask) and
    upsampling of the masks to the image, on a fixed embedding (every model shares this decoder).
    Median ms eager, and with `compiled` also with the demo's compiled decoder and the compile's seconds."""
    model = build_model(get_config("vit_test"))
    features = torch.randn(1, 256, 64, 64)
    encoding = Encoding(features, (480, 640), (768, 1024), routing=None, keep_ratio=None, seconds=0.0)

    def median_ms() -> float:
        times = [decode_click(model, encoding, [(320.0, 240.0)], [1]).seconds for _ in range(runs + 1)]
        return statistics.median(times[1:]) * 1e3

    result = {"eager_ms": median_ms()}
    if compiled:
        result["compile_s"] = compile_decoder(model)
        result["compiled_ms"] = median_ms()
    return result


def format_table(rows: List[Row], clicks: Dict[str, float], args, device: torch.device) -> str:
    header = "| model | params (M) | GMACs | GMACs vs SAM | latency (ms) | latency vs SAM | lat/MAC | vs dense |"
    lines = [header, "|" + "---|" * 8]
    for r in rows:
        lat_per_mac = r.vs_sam_latency / r.vs_sam_gmacs if r.vs_sam_gmacs else None
        cells = [
            r.label, f"{r.params_m:.1f}", f"{r.gmacs:.1f}", _ratio(r.vs_sam_gmacs), f"{r.latency_ms:.0f}",
            _ratio(r.vs_sam_latency), _ratio(lat_per_mac), _ratio(r.vs_dense_latency),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    lines.append(_settings_line(args, device))
    if clicks:
        line = f"one demo click on CPU (prompt encoder, mask decoder, upsampling; 640x480): {clicks['eager_ms']:.1f} ms"
        if "compiled_ms" in clicks:
            line += f"; compiled decoder {clicks['compiled_ms']:.1f} ms (compiled in {clicks['compile_s']:.0f} s)"
        lines.append(line + ", median")
    return "\n".join(lines)


def _ratio(value: Optional[float]) -> str:
    return "" if value is None else f"{value:.2f}"


def _settings_line(args, device: torch.device) -> str:
    return (
        f"device {device} ({_device_name(device)}), {torch.get_num_threads()} threads, batch {args.batch}, "
        f"median of {args.runs} runs after {args.warmup} warm-up, torch {torch.__version__}"
    )


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return platform.processor() or platform.machine()


def _report(rows: List[Row], clicks: Dict[str, float], args, device: torch.device) -> dict:
    return {
        "settings": _settings_line(args, device),
        "rows": [asdict(r) for r in rows],
        "demo_click": clicks,
    }
