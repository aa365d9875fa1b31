"""`bigl-sam bench` on the tiny architectures: the table, the JSON, and MACs that SDPA really costs."""

import json

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from bigl_sam.bench.measure import CPU_SDPA_FLOPS
from bigl_sam.cli import main


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
    rows = {(r["model"], r["keep_ratio"]): r for r in json.loads(out.read_text())["rows"]}
    sam, routed, dense = rows["vit_test", None], rows["bigl_test", 0.25], rows["bigl_test", 1.0]
    assert routed["gmacs"] < dense["gmacs"]
    assert dense["vs_dense_latency"] == 1.0
    assert routed["vs_sam_gmacs"] == routed["gmacs"] / sam["gmacs"]


def test_bench_rejects_unknown_model(capsys):
    assert main(["bench", "--models", "vit_x", "--runs", "1", "--clicks", "0"]) == 2
    assert "unknown model 'vit_x'" in capsys.readouterr().err


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


def test_bench_names_a_missing_image(tmp_path, capsys):
    missing = tmp_path / "nope.jpg"
    assert f"{missing}: image file not found" in _bench_error(capsys, "--runs", "1", "--image", str(missing))


def test_bench_rejects_malformed_size(capsys):
    for size in ("640", "640x", "x480", "640x0", "axb", "640*480"):
        assert f"--size {size!r}" in _bench_error(capsys, "--runs", "1", "--size", size)


def test_bench_rejects_non_numeric_keep_ratio(capsys):
    assert "--keep-ratio 'half'" in _bench_error(capsys, "--runs", "1", "--keep-ratio", "half")
