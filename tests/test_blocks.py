"""The big.LITTLE block against SAM's own ViT block, on small random weights."""

import math

import pytest
import torch
from segment_anything.modeling.image_encoder import Block as SamBlock

from bigl_sam.modeling.blocks import BigLittleBlock, Block
from bigl_sam.modeling.routing import plan_routing

from conftest import randomize_

DIM, HEADS, GRID = 32, 2, 64


def sam_block(window_size: int) -> SamBlock:
    field = (window_size, window_size) if window_size else (GRID, GRID)
    block = SamBlock(
        DIM, HEADS, use_rel_pos=True, window_size=window_size, input_size=field,
        norm_layer=lambda d: torch.nn.LayerNorm(d, eps=1e-6),
    )
    return randomize_(block, seed=window_size)


def student_of(sam: SamBlock, window_size: int) -> BigLittleBlock:
    block = BigLittleBlock(
        DIM, HEADS, 4.0, window_size, GRID, little_dim=16, little_heads=1, little_mlp_ratio=4.0, little_window_size=14
    )
    result = block.load_state_dict(sam.state_dict(), strict=False)
    assert not result.unexpected_keys
    assert all(k.startswith(("router.", "little.")) for k in result.missing_keys)
    return block


def square_plan(batch: int, keep_ratio: float):
    """Every token an image token (no padding)."""
    return plan_routing([(GRID, GRID)] * batch, keep_ratio, (GRID, GRID), "cpu")


@pytest.fixture(params=[14, 0], ids=["windowed", "global"])
def pair(request):
    sam = sam_block(request.param)
    return sam, student_of(sam, request.param), request.param


@torch.no_grad()
def test_sdpa_block_equals_sam_block(pair):
    sam, _, window_size = pair
    ours = Block(DIM, HEADS, 4.0, window_size, GRID)
    ours.load_state_dict(sam.state_dict())
    x = torch.randn(2, GRID, GRID, DIM)
    torch.testing.assert_close(ours(x), sam(x), atol=2e-5, rtol=1e-4)


@torch.no_grad()
def test_keep_all_equals_sam(pair):
    sam, student, _ = pair
    x = torch.randn(2, GRID, GRID, DIM)
    out, index = student(x, None)
    assert index is None
    torch.testing.assert_close(out, sam(x), atol=2e-5, rtol=1e-4)


@torch.no_grad()
def test_routed_tokens_match_sam_and_others_stay(pair):
    """Semi-cross attention: a selected token sees every key of its field, so its update is SAM's."""
    sam, student, _ = pair
    x = torch.randn(2, GRID, GRID, DIM)
    out, index = student(x, square_plan(2, 0.3))
    assert index.shape == (2, math.ceil(0.3 * GRID * GRID))
    selected = torch.zeros(2, GRID * GRID, dtype=torch.bool).scatter_(1, index, True)
    out, ref, x = (t.reshape(2, -1, DIM) for t in (out, sam(x), x))
    torch.testing.assert_close(out[selected], ref[selected], atol=2e-5, rtol=1e-4)
    assert torch.equal(out[~selected], x[~selected])


@torch.no_grad()
def test_routed_attention_with_every_token_in_any_order_equals_dense(pair):
    _, student, window_size = pair
    normed = student.norm1(torch.randn(2, GRID, GRID, DIM))
    order = torch.stack([torch.randperm(GRID * GRID) for _ in range(2)])
    routed = student.attn.routed(normed, order, window_size)
    dense = student.attn(normed, window_size).reshape(2, -1, DIM)
    torch.testing.assert_close(routed, torch.gather(dense, 1, order[..., None].expand(-1, -1, DIM)))


@torch.no_grad()
def test_tokens_crowded_into_one_window():
    """Worst case for the window packing: all selected tokens in one window, the rest empty."""
    sam = sam_block(14)
    student = student_of(sam, 14)
    normed = student.norm1(torch.randn(1, GRID, GRID, DIM))
    rows, cols = torch.meshgrid(torch.arange(14, 28), torch.arange(56, 64), indexing="ij")
    index = (rows * GRID + cols).flatten()[None]
    routed = student.attn.routed(normed, index, 14)
    dense = student.attn(normed, 14).reshape(1, -1, DIM)
    torch.testing.assert_close(routed, dense[:, index[0]])


def test_router_gets_gradient_through_hard_top_k():
    student = student_of(sam_block(14), 14)
    x = torch.randn(1, GRID, GRID, DIM)
    out, _ = student(x, square_plan(1, 0.25))
    out.square().mean().backward()
    assert student.router.weight.grad is not None
    assert student.router.weight.grad.abs().sum() > 0


def test_forward_is_the_same_in_train_and_eval():
    student = student_of(sam_block(0), 0)
    student.little.scale.data.fill_(0.5)
    x = torch.randn(1, GRID, GRID, DIM)
    with torch.no_grad():
        train_out, train_index = student.train()(x, square_plan(1, 0.4))
        eval_out, eval_index = student.eval()(x, square_plan(1, 0.4))
    assert torch.equal(train_index, eval_index)
    assert torch.equal(train_out, eval_out)


@torch.no_grad()
def test_little_path_updates_every_token_once_it_is_scaled_in():
    sam = sam_block(14)
    student = student_of(sam, 14)
    x = torch.randn(1, GRID, GRID, DIM)
    before, index = student(x, square_plan(1, 0.25))
    student.little.scale.fill_(1.0)
    after, _ = student(x, square_plan(1, 0.25))
    changed = (after - before).abs().amax(dim=-1).flatten()
    assert (changed > 0).all()
