"""Row 5 of the study: a student whose routers are a seeded uniform random choice of the same K tokens."""

import math

import pytest
import torch

from bigl_sam.build import build_model
from bigl_sam.modeling import get_config
from bigl_sam.modeling.random_routing import RandomRouter, RandomRoutingEncoder, with_random_routing
from conftest import seeded_model

EXTENT = (600, 800)  # pixels of the 1024 x 1024 input that hold the image (the rest is SAM's zero padding)


@pytest.fixture(scope="module")
def images():
    generator = torch.Generator().manual_seed(1)
    x = torch.zeros(2, 3, 1024, 1024)
    x[:, :, : EXTENT[0], : EXTENT[1]] = torch.randn(2, 3, *EXTENT, generator=generator)
    return x


def routing(model, x):
    with torch.no_grad():
        return model.image_encoder.forward_with_routing(x)[1]


def test_same_k_as_the_router_never_padding_and_not_the_router(images):
    student = seeded_model("bigl_test", 2)
    learned = routing(student, images)
    rows, cols = math.ceil(EXTENT[0] / 16), math.ceil(EXTENT[1] / 16)
    with_random_routing(student, seed=0)
    chosen = routing(student, images)
    assert len(chosen) == len(learned) == 2
    for mine, theirs in zip(chosen, learned):
        assert ((mine >= 0).sum(dim=1) == (theirs >= 0).sum(dim=1)).all()
        assert ((mine >= 0).sum(dim=1) == math.ceil(0.25 * rows * cols)).all()
        assert ((mine // 64 < rows) & (mine % 64 < cols)).all()  # image tokens only
        assert all(len(set(r.tolist())) == r.numel() for r in mine)
        assert set(mine[0].tolist()) != set(theirs[0].tolist())


def test_deterministic_for_a_seed_whatever_the_batch(images):
    first = with_random_routing(seeded_model("bigl_test", 2), seed=5)
    again = with_random_routing(seeded_model("bigl_test", 2), seed=5)
    other = with_random_routing(seeded_model("bigl_test", 2), seed=6)
    a, b, c = routing(first, images), routing(again, images), routing(other, images)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not torch.equal(a[0], c[0])
    alone = routing(again, images[1:])  # the second image on its own: the same choice in every layer
    assert all(torch.equal(x[1], y[0]) for x, y in zip(a, alone))


def test_the_default_student_keeps_its_router(images):
    student = seeded_model("bigl_test", 2)
    before = routing(student, images)
    with_random_routing(seeded_model("bigl_test", 2), seed=0)
    assert all(torch.equal(x, y) for x, y in zip(before, routing(student, images)))
    assert not isinstance(student.image_encoder, RandomRoutingEncoder)


def test_weights_and_keep_ratio_carry_over():
    student = seeded_model("bigl_test", 2)
    student.image_encoder.keep_ratio = 0.5
    state = {k: v.clone() for k, v in student.state_dict().items()}
    with_random_routing(student, seed=0)
    assert student.image_encoder.keep_ratio == 0.5
    after = student.state_dict()  # the student's, routers' (unused) weights included: it saves as bigl_test
    assert after.keys() == state.keys() and all(torch.equal(v, after[k]) for k, v in state.items())
    routers = [p for name, p in student.image_encoder.named_parameters() if ".router." in name]
    assert routers and not any(p.requires_grad for p in routers)  # unused: no gradient, nothing to optimise
    with pytest.raises(ValueError, match="student"):
        with_random_routing(build_model(get_config("vit_test")), seed=0)


def test_trains_through_the_p_path_and_e_path(images):
    """Distilling with random routing: the loss reaches the P-path and the E-path, never the unused router."""
    student = with_random_routing(seeded_model("bigl_test", 2), seed=0)
    student.image_encoder(images[:1]).square().mean().backward()
    grads = {name: p.grad for name, p in student.image_encoder.named_parameters()}
    assert grads["blocks.0.mlp.lin1.weight"].abs().sum() > 0 and grads["blocks.0.little.up.weight"] is not None
    assert all(grads[name] is None for name in grads if ".router." in name)


def test_random_scores_choose_every_token_alike():
    """Over many images, each of 16 tokens is among the top 4 about a quarter of the time."""
    router = RandomRouter(seed=0, layer=3, router=torch.nn.Linear(8, 1))
    router.image_keys = list(range(4000))
    scores = router(torch.zeros(4000, 4, 4, 8)).view(4000, 16)
    counts = torch.zeros(16).scatter_add_(0, scores.topk(4, dim=1).indices.flatten(), torch.ones(16000))
    assert (counts / 4000 - 0.25).abs().max() < 0.03


def test_router_outside_its_encoder_is_an_error():
    with pytest.raises(RuntimeError, match="RandomRoutingEncoder"):
        RandomRouter(seed=0, layer=0, router=torch.nn.Linear(8, 1))(torch.zeros(1, 4, 4, 8))
