"""`bigl-sam bench` on the tiny architectures: inputs as SamPredictor makes them, interleaved rounds,
compiled rows, bf16, the demo click, the table, the JSON, and MACs that SDPA really costs."""

import dataclasses
import errno
import json
import tempfile
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.flop_counter import FlopCounterMode

from bigl_sam import SamPredictor, build_model
from bigl_sam.bench import clicks, inputs
from bigl_sam.bench import measure as bench_measure
from bigl_sam.bench.cases import _forward
from bigl_sam.bench.measure import CPU_SDPA_FLOPS, Case, matmul_speed, measure
from bigl_sam.bench.report import Row, add_ratios, add_throughput
from bigl_sam.cli import main
from bigl_sam.modeling import get_config

CPU = torch.device("cpu")


def test_cpu_sdpa_is_counted():
    q, k = torch.randn(2, 3, 10, 8), torch.randn(2, 3, 20, 8)
    with FlopCounterMode(display=False, custom_mapping=CPU_SDPA_FLOPS) as counter:
        F.scaled_dot_product_attention(q, k, k, attn_mask=torch.zeros(2, 3, 10, 20))
    assert counter.get_total_flops() == 2 * (2 * 2 * 3 * 10 * 20 * 8)  # two matmuls, 2 FLOPs per MAC


def test_bench_rows_and_json(tmp_path, capsys):
    out = tmp_path / "bench.json"
    code = main(["bench", "--models", "vit_test,bigl_test", "--keep-ratio", "0.25,1.0", "--runs", "1",
                 "--clicks", "1", "--json", str(out)])
    assert code == 0
    table = capsys.readouterr().out
    assert "| bigl_test @0.25 |" in table and "| bigl_test @1 |" in table and "one demo click" in table
    rows = {(r["model_type"], r["keep_ratio"]): r for r in json.loads(out.read_text())["rows"]}
    sam, routed, dense = rows["vit_test", None], rows["bigl_test", 0.25], rows["bigl_test", 1.0]
    assert routed["gmacs"] < dense["gmacs"]
    assert dense["vs_dense_latency"] == 1.0
    assert routed["vs_sam_gmacs"] == routed["gmacs"] / sam["gmacs"]
    matmul = json.loads(out.read_text())["settings"]["matmul"]["gmacs_per_s"]
    assert routed["gmacs_per_s"] == pytest.approx(routed["gmacs"] / (routed["latency_ms"] / 1e3))
    assert routed["of_matmul"] == pytest.approx(routed["gmacs_per_s"] / matmul["float32"])
    assert "| GMAC/s | of matmul |" in table and "matmul's speed in the same run (float32 " in table


def test_bench_rejects_unknown_model(capsys):
    assert main(["bench", "--models", "vit_x", "--runs", "1", "--clicks", "0"]) == 2
    err = capsys.readouterr().err
    assert "unknown model 'vit_x'" in err and "mobilesam" in err and len(err.strip().splitlines()) == 1


def test_size_input_is_what_sam_predictor_feeds_the_encoder():
    model = build_model(get_config("vit_test"))
    photo = inputs.bench_inputs([], ["640x480"])[0]
    seen = []
    model.image_encoder.register_forward_pre_hook(lambda module, args: seen.append(args[0]))
    SamPredictor(model).set_image(photo.image)
    x = inputs.encoder_input(photo, model.pixel_mean.flatten(), model.pixel_std.flatten(), 1024, batch=2)
    assert photo.image.shape == (480, 640, 3) and x.shape == (2, 3, 1024, 1024)
    torch.testing.assert_close(x[1:], seen[0])
    assert (x[:, :, 768:, :] == 0).all()  # SAM's zero padding below the 1024 x 768 resized photo
    assert (x[:, :, :768, :] != 0).all()  # and no pixel of the photo normalises to an exact zero


def test_inputs_column_names_each_input(tmp_path, capsys):
    Image.fromarray(np.full((425, 640, 3), 90, np.uint8)).save(tmp_path / "cat.png")
    out = tmp_path / "bench.json"
    code = main(["bench", "--models", "vit_test,bigl_test", "--keep-ratio", "0.25", "--runs", "1", "--clicks",
                 "0", "--image", str(tmp_path / "cat.png"), "--size", "640x360", "--size", "640X360",
                 "--json", str(out)])
    assert code == 0
    table = capsys.readouterr().out
    photo = f"{tmp_path / 'cat.png'} (640x425)"
    assert f"| vit_test | {photo} |" in table and "| bigl_test @0.25 | 640x360 |" in table
    report = json.loads(out.read_text())
    assert report["settings"]["inputs"] == [photo, "640x360"]
    assert [(r["model_type"], r["input"]) for r in report["rows"]] == [
        ("vit_test", photo), ("bigl_test", photo), ("vit_test", "640x360"), ("bigl_test", "640x360")
    ]


def test_padded_inputs_cost_the_router_fewer_macs(tmp_path):
    out = tmp_path / "bench.json"
    assert main(["bench", "--models", "vit_test,bigl_test", "--keep-ratio", "0.25,1.0", "--size", "640x360",
                 "--size", "1024x1024", "--runs", "1", "--clicks", "0", "--json", str(out)]) == 0
    gmacs = {(r["model_type"], r["keep_ratio"], r["input"]): r["gmacs"] for r in json.loads(out.read_text())["rows"]}
    # P-path budget: ceil(0.25 x image tokens); 64 x 36 of the 64 x 64 tokens hold the 1024 x 576 resized photo
    assert gmacs["bigl_test", 0.25, "640x360"] < gmacs["bigl_test", 0.25, "1024x1024"]
    # SAM's own encoder and the dense path compute every token, padding or not
    assert gmacs["vit_test", None, "640x360"] == gmacs["vit_test", None, "1024x1024"]
    assert gmacs["bigl_test", 1.0, "640x360"] == gmacs["bigl_test", 1.0, "1024x1024"]


def test_ratios_compare_rows_of_the_same_input_and_mode():
    def row(model, keep, input, compiled, gmacs, ms):
        return Row(model, keep, input, compiled, 1.0, gmacs, ms, [ms])

    rows = [
        row("vit_test", None, "640x480", False, 10.0, 100.0), row("vit_test", None, "1024x1024", False, 20.0, 400.0),
        row("vit_test", None, "640x480", True, 10.0, 50.0),
        row("bigl_test", 0.25, "640x480", False, 4.0, 60.0), row("bigl_test", 1.0, "640x480", False, 12.0, 120.0),
        row("bigl_test", 0.25, "1024x1024", False, 6.0, 100.0), row("bigl_test", 0.25, "640x480", True, 4.0, 40.0),
    ]
    add_ratios(rows)
    routed, _, square, compiled = rows[3:]
    assert (routed.vs_sam_gmacs, routed.vs_sam_latency, routed.vs_dense_latency) == (0.4, 0.6, 0.5)
    assert (square.vs_sam_gmacs, square.vs_sam_latency, square.vs_dense_latency) == (0.3, 0.25, None)
    assert (compiled.vs_sam_latency, compiled.vs_dense_latency) == (0.8, None)


def test_throughput_is_set_against_the_matmul_of_the_rows_dtype():
    rows = [Row("bigl_test", 0.25, "640x480", False, 1.0, 6.0, 200.0, [200.0]),
            Row("bigl_test", 0.25, "640x480", False, 1.0, 6.0, 100.0, [100.0], backend="onnxruntime"),
            Row("bigl_test", 0.25, "640x480", False, 1.0, 6.0, 50.0, [50.0], backend="onnxruntime int8")]
    add_throughput(rows, {"shape": "64x64x64", "gmacs_per_s": {"float32": 120.0, "bfloat16": 240.0}}, 2, "bfloat16")
    assert [r.gmacs_per_s for r in rows] == [60.0, 120.0, 240.0]  # 2 images of 6 GMACs per latency
    assert [r.of_matmul for r in rows] == [0.25, 1.0, None]  # torch in bfloat16, onnxruntime in float32


def test_matmul_reference_times_each_dtype():
    speeds = matmul_speed(CPU, {"float32": torch.float32, "bfloat16": torch.bfloat16})
    assert speeds["shape"] == "64x64x64" and set(speeds["gmacs_per_s"]) == {"float32", "bfloat16"}
    assert all(speed > 0 for speed in speeds["gmacs_per_s"].values())


def _recording_case(name, log, compiled=False, clock=None):
    """A case that logs its calls; with `clock` ([seconds]), each call moves it: 500 ms the first (a compile),
    2 ms each later one."""
    calls = []

    def forward():
        log.append(name)
        calls.append(name)
        if clock is not None:
            clock[0] += 0.5 if len(calls) == 1 else 0.002
        return torch.ones(2, 3) @ torch.ones(3, 4)

    return Case(name, None, "640x480", compiled, forward)


def test_rows_run_in_interleaved_rounds():
    log = []
    cases = [_recording_case(name, log) for name in "ABC"]
    measure(cases, runs=3, warmup=2, batch=2, device=CPU)
    assert log == list("ABC") * (2 + 3)  # warm-up rounds (the first counts MACs), then timed rounds
    assert [len(c.latencies_ms) for c in cases] == [3, 3, 3]
    assert cases[0].macs == 2 * 3 * 4 / 2  # the matmul's MACs, per image of the batch of 2


def test_compile_time_is_kept_out_of_the_latency(monkeypatch):
    """On a clock that moves only when the case runs (so the numbers are exact on any machine): the first
    call's 500 ms is the compile time, and no timed run includes it."""
    log, clock = [], [0.0]
    monkeypatch.setattr(bench_measure, "time", SimpleNamespace(perf_counter=lambda: clock[0]))
    compiled = _recording_case("A", log, compiled=True, clock=clock)
    measure([compiled], runs=2, warmup=1, batch=1, device=CPU)
    assert compiled.compile_s == pytest.approx(0.5) and compiled.latencies_ms == pytest.approx([2.0, 2.0])
    assert len(log) == 3


def test_bench_compiled_rows_beside_eager_ones(monkeypatch, tmp_path, capsys):
    compiles = []

    def fake_compile(module, **kwargs):  # inductor takes minutes here; the bench's bookkeeping is tested
        compiles.append(type(module).__name__)
        return module

    monkeypatch.setattr(torch, "compile", fake_compile)
    out = tmp_path / "bench.json"
    assert main(["bench", "--models", "vit_test,bigl_test", "--keep-ratio", "0.25", "--runs", "1", "--clicks",
                 "0", "--compile", "--json", str(out)]) == 0
    table = capsys.readouterr().out
    assert compiles == ["ImageEncoderViT", "BigLittleImageEncoder"]
    assert "| vit_test compiled | 1024x1024 |" in table and "| bigl_test @0.25 compiled | 1024x1024 |" in table
    assert "torch.compile, first call of each compiled row" in table
    rows = {(r["model_type"], r["compiled"]): r for r in json.loads(out.read_text())["rows"]}
    eager, compiled = rows["bigl_test", False], rows["bigl_test", True]
    assert compiled["gmacs"] == eager["gmacs"] and compiled["compile_s"] > 0 and eager["compile_s"] is None
    assert compiled["vs_sam_latency"] == compiled["latency_ms"] / rows["vit_test", True]["latency_ms"]


def test_failed_compile_is_one_line_and_the_run_goes_on(monkeypatch, capsys):
    def broken_compile(module, **kwargs):
        def fails(*args, **kw):
            raise RuntimeError("no C++ compiler found\nlong inductor traceback")
        return fails

    monkeypatch.setattr(torch, "compile", broken_compile)
    assert main(["bench", "--models", "vit_test", "--runs", "1", "--clicks", "0", "--compile"]) == 0
    out = capsys.readouterr().out
    assert "| vit_test | 1024x1024 |" in out and "| vit_test compiled |" not in out
    assert "vit_test compiled on 1024x1024: torch.compile failed (RuntimeError: no C++ compiler found)" in out
    assert "long inductor traceback" not in out


def test_bfloat16_runs_under_autocast_and_is_recorded(tmp_path, capsys):
    encoder = build_model(get_config("bigl_test")).image_encoder
    x = torch.randn(1, 3, 1024, 1024)
    seen = []
    encoder.patch_embed.register_forward_hook(lambda module, args, out: seen.append(out.dtype))
    with torch.inference_mode():
        _forward(encoder, x, 0.25, torch.bfloat16)()
    assert seen == [torch.bfloat16]
    out = tmp_path / "bench.json"
    assert main(["bench", "--models", "vit_test,bigl_test", "--keep-ratio", "0.25", "--runs", "1", "--clicks", "0",
                 "--dtype", "bfloat16", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["settings"]["dtype"] == "bfloat16" and "bfloat16" in capsys.readouterr().out
    assert all(r["gmacs"] > 0 for r in report["rows"])


def test_first_click_after_start_up_is_reported_apart(monkeypatch, tmp_path):
    """Real clicks give every number; the first click of the compiled decoder is the one after the start-up
    compile, on a freshly encoded photo, and is reported apart from the median of the later ones."""
    out = tmp_path / "bench.json"
    events = []
    real_decode = clicks.decode_click

    def fake_compile(model):
        events.append(("compile", id(model)))
        return 2.0

    def timed_decode(model, encoding, points, labels):
        prediction = real_decode(model, encoding, points, labels)
        first = not any(event == ("click", id(model)) for event in events)
        events.append(("click", id(model)))
        seconds = 9.0 if first and ("compile", id(model)) in events else 0.04
        return dataclasses.replace(prediction, seconds=seconds)

    monkeypatch.setattr(clicks, "compile_decoder", fake_compile)
    monkeypatch.setattr(clicks, "decode_click", timed_decode)
    assert main(["bench", "--models", "vit_test", "--runs", "1", "--clicks", "3", "--compile-decoder",
                 "--json", str(out)]) == 0
    click = json.loads(out.read_text())["demo_click"]
    assert click == {"eager_first_ms": 40.0, "eager_ms": 40.0, "compile_s": 2.0, "compiled_first_ms": 9000.0,
                     "compiled_ms": 40.0}
    compiled_model = events[4][1]
    assert events[4:] == [("compile", compiled_model)] + [("click", compiled_model)] * 4


def test_demo_click_line_from_real_clicks(tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert main(["bench", "--models", "vit_test", "--runs", "1", "--clicks", "2", "--json", str(out)]) == 0
    click = json.loads(out.read_text())["demo_click"]
    assert set(click) == {"eager_first_ms", "eager_ms"} and min(click.values()) > 0
    assert "one demo click on CPU" in capsys.readouterr().out


@pytest.mark.parametrize("peer, package", [("mobilesam", "mobilesam_lite"), ("efficientvit_sam_l0", "efficientsam")])
def test_peer_without_the_extra_is_one_line(monkeypatch, capsys, peer, package):
    monkeypatch.setitem(__import__("sys").modules, package, None)
    assert main(["bench", "--models", f"vit_test,{peer}", "--runs", "1", "--clicks", "0"]) == 2
    err = capsys.readouterr().err
    assert f"--models {peer}: needs the optional peer packages" in err and 'pip install -e ".[peers]"' in err
    assert len(err.strip().splitlines()) == 1


def test_cli_usage(capsys):
    assert main([]) == 0
    assert "bench" in capsys.readouterr().out
    assert main(["frobnicate"]) == 2


def _bench_error(capsys, *argv) -> str:
    """Runs `bigl-sam bench` on the tiny model with `argv`; asserts exit 2, one error line, nothing measured."""
    code = main(["bench", "--models", "vit_test", "--clicks", "0", *argv])
    out, err = capsys.readouterr()
    assert code == 2
    assert len(err.strip().splitlines()) == 1, err
    assert "measured" not in out
    return err


def test_bench_rejects_zero_runs(capsys):
    assert "--runs must be at least 1, got 0" in _bench_error(capsys, "--runs", "0")


def test_bench_rejects_zero_or_negative_batch(capsys):
    assert "--batch must be at least 1, got 0" in _bench_error(capsys, "--batch", "0")
    assert "--batch must be at least 1, got -2" in _bench_error(capsys, "--batch", "-2")


def test_bench_refuses_json_folder_before_measuring(tmp_path, capsys):
    err = _bench_error(capsys, "--runs", "1", "--json", str(tmp_path))
    assert f"--json {tmp_path}: is a folder" in err


def test_bench_refuses_a_json_it_cannot_write_before_measuring(monkeypatch, tmp_path, capsys):
    def read_only(*args, **kwargs):  # chmod does not stop root (these tests may run as root)
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(tempfile, "mkstemp", read_only)
    err = _bench_error(capsys, "--runs", "1", "--json", str(tmp_path / "bench.json"))
    assert f"--json {tmp_path / 'bench.json'}: cannot write in {tmp_path} (Read-only file system)" in err


def test_bench_names_a_missing_image(tmp_path, capsys):
    missing = tmp_path / "nope.jpg"
    assert f"{missing}: image file not found" in _bench_error(capsys, "--runs", "1", "--image", str(missing))


def test_bench_rejects_malformed_size(capsys):
    for size in ("640", "640x", "x480", "640x0", "axb", "640*480", "10000x3", "20000x20000"):
        assert f"--size {size!r}" in _bench_error(capsys, "--runs", "1", "--size", size)


def test_bench_rejects_non_numeric_keep_ratio(capsys):
    assert "--keep-ratio 'half'" in _bench_error(capsys, "--runs", "1", "--keep-ratio", "half")


@pytest.mark.slow
def test_peer_rows_beside_ours(tmp_path):
    pytest.importorskip("mobilesam_lite", reason='peers extra not installed (pip install -e ".[peers]")')
    pytest.importorskip("efficientsam", reason='peers extra not installed (pip install -e ".[peers]")')
    out = tmp_path / "bench.json"
    assert main(["bench", "--models", "vit_test,mobilesam,efficientvit_sam_l0", "--size", "640x480", "--runs", "1",
                 "--clicks", "0", "--json", str(out)]) == 0
    rows = {r["model_type"]: r for r in json.loads(out.read_text())["rows"]}
    assert set(rows) == {"vit_test", "mobilesam", "efficientvit_sam_l0"}
    assert rows["mobilesam"]["params_m"] < 10 < rows["efficientvit_sam_l0"]["params_m"]  # TinyViT-5M; L0 30.7 M
    assert all(r["gmacs"] > 0 and r["keep_ratio"] is None and r["vs_sam_gmacs"] is None for r in rows.values())
