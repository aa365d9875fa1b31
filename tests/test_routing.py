"""Padding-aware, NaN-free, compile-ready routing (tiny random students; real sizes live in `bench`)."""

import math

import numpy as np
import pytest
import torch
import torch._dynamo
from torch.utils.flop_counter import FlopCounterMode
from segment_anything.modeling.image_encoder import Block as SamBlock

from bigl_sam import build_model
from bigl_sam.bench.measure import CPU_SDPA_FLOPS
from bigl_sam.images import sam_input
from bigl_sam.modeling import get_config, routing_map
from bigl_sam.modeling.attention import Attention
from bigl_sam.modeling.blocks import BigLittleBlock
from bigl_sam.modeling.config import BigLittleConfig
from bigl_sam.modeling.routing import (
    plan_routing, router_log_scores, score_gate, token_extent, token_extent_mask, token_extents,
)

from conftest import SMALL_IMG_SIZE, randomize_, small_test_configs, tie_every_score_

GRID = 64


@pytest.fixture(scope="module")
def student():
    model = randomize_(build_model(get_config("bigl_test")), seed=3)
    for block in model.image_encoder.blocks:
        block.little.scale.data.fill_(0.3)  # let the E-path change tokens, as after training
    return model


def photo_input(model, width: int, height: int, seed: int = 0) -> torch.Tensor:
    """A random photo of that size, preprocessed exactly as `SamPredictor.set_image` does: 1 x 3 x 1024 x 1024."""
    image = np.random.default_rng(seed).integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    x, _ = sam_input(image, model.pixel_mean, model.pixel_std, 1024)
    return x[None]


def test_extent_is_read_off_sam_padding(student):
    # 640 x 480 -> 1024 x 768 pixels -> 64 x 48 tokens; 640 x 427 -> 1024 x 683 -> 43 rows (the last one partial).
    x = torch.cat([photo_input(student, 640, 480), photo_input(student, 640, 427), photo_input(student, 300, 900)])
    assert token_extents(x, 16) == [(48, 64), (43, 64), (64, 22)]
    assert token_extents(x, 16, input_size=[(768, 1024), (683, 1024), (1024, 342)]) == [(48, 64), (43, 64), (64, 22)]


def test_token_extent_counts_a_partial_token_for_ints_and_tensors():
    sizes, tokens = [(768, 1024), (683, 1024), (1, 17)], [(48, 64), (43, 64), (1, 2)]
    assert [token_extent(size, 16) for size in sizes] == tokens
    assert token_extent(torch.tensor(sizes), 16).tolist() == [list(t) for t in tokens]


def test_token_extent_mask_is_the_top_left_block_of_the_grid():
    mask = token_extent_mask(torch.tensor([[2, 3], [4, 4]]), (4, 5))
    assert mask.shape == (2, 4, 5) and mask.dtype == torch.bool
    assert mask[0, :2, :3].all() and mask[0].sum() == 6
    assert mask[1, :, :4].all() and not mask[1, :, 4].any()


def test_budget_goes_to_image_tokens_only(student):
    x = photo_input(student, 640, 360)  # 36 of 64 token rows hold the image
    with torch.no_grad():
        _, routing = student.image_encoder.forward_with_routing(x, keep_ratio=0.25)
    budget = math.ceil(0.25 * 36 * 64)
    for index in routing:
        assert index.shape == (1, budget) and (index >= 0).all()
        assert (index // GRID < 36).all(), "a P-path slot went to padding"
    shares = routing_map(routing, (GRID, GRID))[0]
    assert shares[36:].max() == 0
    assert shares[:36].mean().item() == pytest.approx(0.25, abs=1e-3)


def test_explicit_input_size_equals_the_scan(student):
    x = photo_input(student, 640, 480)
    with torch.no_grad():
        scanned = student.image_encoder(x, keep_ratio=0.3)
        given = student.image_encoder(x, keep_ratio=0.3, input_size=(768, 1024))
    assert torch.equal(scanned, given)


def test_batch_of_different_extents_equals_each_image_alone(student):
    """Each image keeps its own budget K_b: the smaller image's spare slots change nothing."""
    images = [photo_input(student, 640, 360, seed=1), photo_input(student, 500, 500, seed=2)]
    encoder = student.image_encoder
    with torch.no_grad():
        batched, routing = encoder.forward_with_routing(torch.cat(images), keep_ratio=0.4)
        alone = [encoder.forward_with_routing(image, keep_ratio=0.4) for image in images]
    for b, (embedding, own_routing) in enumerate(alone):
        torch.testing.assert_close(batched[b : b + 1], embedding, atol=1e-5, rtol=1e-5)
        for layer, own in zip(routing, own_routing):
            used = layer[b][layer[b] >= 0]
            assert torch.equal(used.sort().values, own[0].sort().values)
    assert (routing[0][0] == -1).any(), "the wide image's extra slots must be marked unused for the other one"


@torch.no_grad()
def test_plan_in_the_graph_equals_the_host_plan(student):
    """A tensor keep ratio (the ONNX export's input) plans with tensor ops over the whole grid: same
    budgets, same tokens chosen, same embeddings; at 1.0 every token routes, as the dense path."""
    images = [photo_input(student, 640, 480, seed=1), photo_input(student, 500, 500, seed=2)]
    images.append(photo_input(student, 900, 300, seed=3))
    x = torch.cat(images)
    encoder = student.image_encoder
    with torch.no_grad():
        for ratio in (0.1, 0.25, 0.5):
            expected, expected_routing = encoder.forward_with_routing(x, keep_ratio=ratio)
            got, routing = encoder.forward_with_routing(x, keep_ratio=torch.tensor(ratio))
            assert torch.equal(got, expected), ratio
            assert all(torch.equal(a, b) for a, b in zip(routing, expected_routing)), ratio
        expected = encoder(x, keep_ratio=1.0)
        got, routing = encoder.forward_with_routing(x, keep_ratio=torch.tensor(1.0))
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    assert all(index.shape == (3, GRID * GRID) and (index >= 0).all() for index in routing)


@pytest.mark.parametrize("queries", [1, 5, 64, 200])
def test_even_chunks_of_a_data_dependent_query_count_equal_attend(queries):
    """The ONNX encoder's global layers split K queries into a static number of even chunks."""
    torch.manual_seed(0)
    attention = field_attention()
    q, k, v = torch.randn(2, 2, queries, 32), torch.randn(2, 2, 256, 32), torch.randn(2, 2, 256, 32)
    index = torch.stack([torch.randperm(256)[:queries] for _ in range(2)])
    expected = attention.attend(q, k, v, index // 16, index % 16)
    for chunks in (1, 3, 7):
        got = attention._attend_in_even_chunks(q, k, v, index // 16, index % 16, chunks)
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def field_attention():
    """Attention over a 16 x 16 field, 2 heads of 32, with non-zero relative positions."""
    attention = Attention(64, 2, 16)
    torch.nn.init.normal_(attention.rel_pos_h, std=0.5)
    torch.nn.init.normal_(attention.rel_pos_w, std=0.5)
    return attention


def test_routed_tokens_of_a_padded_image_equal_sam():
    """With the windowed layer cropped to the windows that hold the image, a selected token still gets
    SAM's block output (its window's keys are all there, padding keys included)."""
    sam = randomize_(
        SamBlock(32, 2, use_rel_pos=True, window_size=14, input_size=(14, 14),
                 norm_layer=lambda d: torch.nn.LayerNorm(d, eps=1e-6)), seed=5)  # fmt: skip
    block = BigLittleBlock(32, 2, 4.0, 14, GRID, little_dim=16, little_heads=1, little_mlp_ratio=4.0,
                           little_window_size=8)  # fmt: skip
    block.load_state_dict(sam.state_dict(), strict=False)
    x = torch.randn(1, GRID, GRID, 32)
    plan = plan_routing([(30, 50)], 0.5, (GRID, GRID), "cpu")
    assert plan.token_extent == (30, 50)
    out, index = block(x, plan)
    ref = sam(x).reshape(1, -1, 32)
    torch.testing.assert_close(out.reshape(1, -1, 32)[0, index[0]], ref[0, index[0]], atol=2e-5, rtol=1e-4)


def test_gate_is_one_and_has_the_analytic_gradient():
    logits = torch.randn(2, 50, dtype=torch.float64, requires_grad=True)
    gate = score_gate(router_log_scores(logits, None).double())
    assert torch.equal(gate.detach(), torch.ones_like(gate))
    # d gate_i / d logit_j = [i == j] - s_j, what s_i / stop_gradient(s_i) gives where it is finite.
    weights = torch.randn(2, 50, dtype=torch.float64)
    (grad,) = torch.autograd.grad((gate * weights).sum(), logits)
    s = logits.detach().softmax(-1)
    expected = weights - s * weights.sum(-1, keepdim=True)
    torch.testing.assert_close(grad, expected)


@pytest.mark.parametrize("keep_ratio", [1.0, 0.5, 0.25])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16-autocast"])
def test_extreme_router_weights_stay_finite(keep_ratio, dtype):
    """Sharp router scores underflow in the softmax; s / s.detach() was 0 / 0 = NaN there."""
    block = randomize_(BigLittleBlock(32, 2, 4.0, 14, GRID, little_dim=16, little_heads=1, little_mlp_ratio=4.0,
                                      little_window_size=8), seed=7)  # fmt: skip
    with torch.no_grad():  # std 25 at width 32 gives the logits of std 5 at width 768 (SAM ViT-B)
        block.router.weight.normal_(0, 25.0)
        block.little.scale.fill_(0.5)
    plan = None if keep_ratio == 1.0 else plan_routing([(48, 64)], keep_ratio, (GRID, GRID), "cpu")
    x = torch.randn(1, GRID, GRID, 32) * 3
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype is torch.bfloat16):
        out, _ = block(x, plan)
    out.float().square().mean().backward()
    assert torch.isfinite(out).all()
    assert block.router.weight.grad.abs().sum() > 0
    assert all(torch.isfinite(p.grad).all() for p in block.parameters() if p.grad is not None)


def test_keys_and_values_stay_in_the_autocast_dtype(student):
    """The float32 bias was added after the bfloat16 matmul, doubling K/V memory under autocast."""
    attn = student.image_encoder.blocks[0].attn
    x = torch.randn(1, GRID, GRID, attn.qkv.in_features)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        kv = attn._fields(x, attn.qkv.weight, attn.qkv.bias, 14)
    assert kv.dtype == torch.bfloat16


def test_bfloat16_and_float16_run_end_to_end(student):
    x = photo_input(student, 640, 480)
    half = build_model(get_config("bigl_test"))
    half.load_state_dict(student.state_dict())
    half.half()
    with torch.no_grad():
        reference = student.image_encoder(x, keep_ratio=0.25)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            bf16 = student.image_encoder(x, keep_ratio=0.25)
        fp16 = half.image_encoder(x.half(), keep_ratio=0.25)
    for out in (bf16, fp16):
        assert torch.isfinite(out).all()
        assert (out.float() - reference).abs().mean() < 0.05 * reference.abs().mean()


def test_compile_breaks_the_graph_once_and_matches_eager(student):
    """One host sync per forward (the extent); the layer loop itself is one graph."""
    encoder = student.image_encoder
    x = photo_input(student, 640, 480)
    with torch.no_grad():
        explained = torch._dynamo.explain(encoder)(x, 0.25)
        assert explained.graph_break_count <= 1, [str(r.reason) for r in explained.break_reasons]
        torch._dynamo.reset()
        compiled = torch.compile(encoder, backend="aot_eager")
        torch.testing.assert_close(compiled(x, 0.25), encoder(x, 0.25))


def test_little_path_attention_is_a_config_field():
    windowed = get_config("bigl_b_t")
    assert windowed.little_attn == "window"
    assert {windowed.little_window(i) for i in range(12)} == {windowed.little_window_size}
    paper = BigLittleConfig("paper_b_t", sam_model_type="vit_b", little_dim=192, little_heads=3, little_attn="match")
    assert [paper.little_window(i) for i in (0, 2, 5)] == [14, 0, 0]
    encoder = build_model(paper).image_encoder
    assert encoder.blocks[2].little.block.window_size == 0
    with pytest.raises(ValueError, match="little_attn"):
        BigLittleConfig("bad", sam_model_type="vit_b", little_dim=192, little_heads=3, little_attn="global")



def macs(forward) -> float:
    """Multiply-accumulates of one call, counted as `bigl-sam bench` counts them."""
    with FlopCounterMode(display=False, custom_mapping=CPU_SDPA_FLOPS) as counter:
        forward()
    return counter.get_total_flops() / 2


@pytest.fixture(scope="module")
def small_student():
    """A 256 px bigl_test (16 x 16 tokens: one whole 14 x 14 window and partial ones per side)."""
    model = randomize_(build_model(small_test_configs()[1]), seed=3)
    for block in model.image_encoder.blocks:
        block.little.scale.data.fill_(0.3)
    return model.eval()


def small_input(model, image: np.ndarray) -> torch.Tensor:
    """An H x W x 3 uint8 image preprocessed for the 256 px model: 1 x 3 x 256 x 256."""
    return sam_input(image, model.pixel_mean, model.pixel_std, SMALL_IMG_SIZE)[0][None]


@torch.no_grad()
@pytest.mark.parametrize("keep_ratio", [0.25, 0.5, 1.0])
def test_an_all_zero_input_runs_and_costs_what_a_square_image_costs(small_student, keep_ratio):
    """Warm-up, tracing and FLOP-counting inputs are zeros: with no padding to read, the extent is the whole
    square (it was 0 x 0, and the windowed layers had no window to attend in)."""
    encoder, side = small_student.image_encoder, SMALL_IMG_SIZE // 16
    zeros = torch.zeros(1, 3, SMALL_IMG_SIZE, SMALL_IMG_SIZE)
    square = small_input(small_student, np.random.default_rng(0).integers(0, 256, (300, 300, 3), dtype=np.uint8))
    budget = side * side if keep_ratio == 1.0 else math.ceil(keep_ratio * side * side)
    for keep in (keep_ratio, torch.tensor(keep_ratio)):  # planned on the host, and in the graph (ONNX)
        out, routing = encoder.forward_with_routing(zeros, keep)
        assert out.shape == (1, 256, side, side) and torch.isfinite(out).all()
        assert all(index is None or (index.shape == (1, budget) and (index >= 0).all()) for index in routing)
        assert macs(lambda: encoder.forward_with_routing(zeros, keep)) == macs(
            lambda: encoder.forward_with_routing(square, keep)
        )


def test_an_input_size_without_pixels_is_refused():
    with pytest.raises(ValueError, match="at least 1 x 1"):
        token_extents(torch.zeros(1, 3, 64, 64), 16, input_size=(0, 64))


@torch.no_grad()
def test_tied_router_scores_go_to_the_lower_index_first(small_student):
    """torch.topk ordered ties as it liked, ONNX TopK takes the lower index first; now both do, alone and
    in a batch, planned on the host or in the graph."""
    tied = build_model(small_test_configs()[1])
    tied.load_state_dict(small_student.state_dict())
    encoder = tie_every_score_(tied).eval().image_encoder
    x = small_input(tied, np.full((480, 640, 3), 128, np.uint8))  # 12 x 16 image tokens: raster 0..191
    budget = math.ceil(0.25 * 12 * 16)
    alone, routing = encoder.forward_with_routing(x, keep_ratio=0.25)
    assert all(torch.equal(index[0], torch.arange(budget)) for index in routing)
    other = small_input(tied, np.random.default_rng(4).integers(0, 256, (300, 300, 3), dtype=np.uint8))
    for b, batch in enumerate([torch.cat([x, other]), torch.cat([other, x])]):
        for keep in (0.25, torch.tensor(0.25)):
            batched, batch_routing = encoder.forward_with_routing(batch, keep_ratio=keep)
            torch.testing.assert_close(batched[b : b + 1], alone, atol=1e-5, rtol=1e-5)
            assert all(torch.equal(index[b, :budget], torch.arange(budget)) for index in batch_routing)
