"""`bigl-sam bench` on the tiny architectures: the table, the JSON, and MACs that SDPA really costs."""

import json

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from bigl_sam.bench import CPU_SDPA_FLOPS
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
