"""Row 6 of the study: EViT-style token pruning of SAM's ViT, exact at keep 1.0, matched to a student's MACs."""

import pytest
import torch

from bigl_sam.build import build_model
from bigl_sam.modeling import get_config
from bigl_sam.study.pruning import (
    PrunedImageEncoder,
    choose_keep_rate,
    count_gmacs,
    evit_layers,
    reorganize,
)
from conftest import seeded_model


@pytest.fixture(scope="module")
def vit_and_input():
    vit = seeded_model("vit_test", 3).image_encoder
    generator = torch.Generator().manual_seed(0)
    return vit, torch.randn(2, 3, vit.img_size, vit.img_size, generator=generator)


@pytest.fixture(scope="module")
def dense(vit_and_input):
    vit, x = vit_and_input
    with torch.no_grad():
        return vit(x)


def test_keep_1_is_sam_exactly(vit_and_input, dense):
    vit, x = vit_and_input
    with torch.no_grad():
        assert torch.equal(PrunedImageEncoder(vit, 1.0)(x), dense)


def test_pruned_layers_that_drop_nothing_compute_sam(vit_and_input, dense):
    """A keep rate just under 1 keeps every token (ceil): the pruned path's own attention, windowed (with
    SAM's window padding on vit_test's 64 x 64 grid) and global, then computes what SAM's blocks do."""
    vit, x = vit_and_input
    with torch.no_grad():
        out = PrunedImageEncoder(vit, 0.99999, prune_layers=[0, 1])(x)
    assert torch.allclose(out, dense, atol=1e-4, rtol=1e-4)


def test_pruning_changes_the_output_and_keeps_the_shape(vit_and_input, dense):
    vit, x = vit_and_input
    with torch.no_grad():
        out = PrunedImageEncoder(vit, 0.3, prune_layers=[0])(x)
    assert out.shape == dense.shape and torch.isfinite(out).all()
    assert not torch.allclose(out, dense, atol=1e-3)


def test_reorganize_keeps_the_most_attentive_fuses_and_freezes_the_rest():
    grid = torch.arange(6.0).view(1, 6, 1).repeat(1, 1, 2)
    index = torch.tensor([[0, 2, 3, 5]])
    tokens = torch.tensor([[[10.0, 10.0], [20.0, 20.0], [30.0, 30.0], [40.0, 40.0]]])
    attentiveness = torch.tensor([[0.1, 0.4, 0.3, 0.2]])
    grid, index, tokens, fused, weight = reorganize(grid, index, tokens, attentiveness, None, None, 0.5)
    assert index.tolist() == [[2, 3]] and tokens[0, :, 0].tolist() == [20.0, 30.0]
    assert grid[0, :, 0].tolist() == [10.0, 1.0, 2.0, 3.0, 4.0, 40.0]  # dropped cells keep their value
    assert torch.allclose(fused, torch.tensor([[[(0.1 * 10 + 0.2 * 40) / 0.3] * 2]]))
    assert torch.allclose(weight, torch.tensor([[[0.3]]]))
    # the next reorganisation folds the old fused token in with its weight
    _, _, _, fused, weight = reorganize(grid, index, tokens, torch.tensor([[0.6, 0.1]]), fused, weight, 0.5)
    assert torch.allclose(fused, torch.tensor([[[(0.1 * 30 + 0.3 * 30) / 0.4] * 2]]))


def test_state_dict_is_the_vits(vit_and_input):
    vit, _ = vit_and_input
    pruned = PrunedImageEncoder(vit, 0.5)
    assert pruned.state_dict().keys() == vit.state_dict().keys()
    assert all(a is b for a, b in zip(pruned.parameters(), vit.parameters()))


def test_evit_layers():
    assert evit_layers(12) == (3, 6, 9)  # EViT's 4th, 7th and 10th layers of DeiT
    assert evit_layers(6) == (1, 3, 4)
    assert evit_layers(2) == (1,)


def test_bad_prune_layers_are_refused():
    vit = build_model(get_config("vit_test")).image_encoder
    with pytest.raises(ValueError, match="prune_layers"):
        PrunedImageEncoder(vit, 0.5, prune_layers=[2])


def square(vit):
    return torch.zeros(1, 3, vit.img_size, vit.img_size)


def test_meta_count_equals_the_cpu_count():
    vit = build_model(get_config("vit_test")).image_encoder
    encoder = PrunedImageEncoder(vit, 0.4, prune_layers=[0, 1])
    assert count_gmacs(encoder, square(vit), "meta") == count_gmacs(encoder, square(vit))
    assert count_gmacs(encoder, square(vit)) < count_gmacs(vit, square(vit))


def test_choose_keep_rate_meets_the_budget_with_the_largest_rate():
    vit = build_model(get_config("vit_test")).image_encoder
    dense = count_gmacs(vit, square(vit), "meta")
    cheapest = count_gmacs(PrunedImageEncoder(vit, 0.01, [0]), square(vit), "meta")
    target = (dense + cheapest) / 2
    rate, gmacs = choose_keep_rate(vit, target, [0], steps=100)
    assert gmacs <= target < count_gmacs(PrunedImageEncoder(vit, rate + 0.01, [0]), square(vit), "meta")
    with pytest.raises(ValueError, match="costs"):
        choose_keep_rate(vit, cheapest / 2, [0], steps=100)


def test_trains_through_kept_and_fused_tokens(vit_and_input):
    """Row 6 distilled: the loss reaches every block, the later ones through the kept and fused tokens."""
    vit, x = vit_and_input
    pruned = PrunedImageEncoder(vit, 0.3, prune_layers=[0])
    pruned(x[:1]).square().mean().backward()
    try:
        for block in pruned.blocks:
            assert block.attn.qkv.weight.grad.abs().sum() > 0 and block.mlp.lin2.weight.grad.abs().sum() > 0
    finally:
        vit.zero_grad(set_to_none=True)
