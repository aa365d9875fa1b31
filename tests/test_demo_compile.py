"""The demo's compiled mask decoder: same masks as SAM's eager decoder, no compile after the warm-up, and a
clean fallback without it. Compiled by dynamo alone (`conftest.dynamo_only_compile`)."""

import numpy as np
import pytest
import torch
from torch._dynamo.utils import counters

from bigl_sam import build_model, inference
from bigl_sam.demo import cli
from bigl_sam.demo.models import DemoModel, DemoModels
from bigl_sam.inference import compile_decoder, decode_click, encode_image
from bigl_sam.modeling import get_config
from conftest import dynamo_only_compile

PROMPTS = [
    dict(points=[(30.0, 40.0)], labels=[1]),
    dict(points=[(30.0, 40.0), (90.0, 20.0), (60.0, 70.0)], labels=[1, 0, 1]),
    dict(box=(10.0, 10.0, 100.0, 80.0)),
]


def compiled_graphs() -> int:
    return counters["stats"]["unique_graphs"]


def test_compiled_clicks_equal_eager_ones_and_never_compile_again():
    """The warm-up at start-up decodes exactly as a click does, so no click compiles again (before, the
    warm-up's embedding was not an inference tensor and the first real click took a second compile)."""
    model = build_model(get_config("vit_test"))
    encoding = encode_image(model, np.random.default_rng(0).integers(0, 256, (90, 120, 3), dtype=np.uint8))
    eager = [decode_click(model, encoding, **prompt) for prompt in PROMPTS]
    with dynamo_only_compile():
        compile_decoder(model)
    assert "forward" in vars(model.mask_decoder)
    warmed_up = compiled_graphs()  # a decoder compiled earlier in this process shares its graph: no new one
    assert warmed_up > 0
    for prompt, reference in zip(PROMPTS, eager):
        compiled = decode_click(model, encoding, **prompt)
        np.testing.assert_allclose(compiled.scores, reference.scores, atol=1e-4)
        assert (compiled.masks != reference.masks).mean() < 1e-3
    assert compiled_graphs() == warmed_up


def test_failed_compile_leaves_the_decoder_eager(monkeypatch):
    model = build_model(get_config("vit_test"))

    def broken_compile(fn, **kwargs):
        def fails(*args, **kw):
            raise RuntimeError("no C++ compiler")
        return fails

    monkeypatch.setattr(torch, "compile", broken_compile)
    with pytest.raises(RuntimeError, match="no C\\+\\+ compiler"):
        compile_decoder(model)
    assert "forward" not in vars(model.mask_decoder)


def test_demo_start_warns_and_goes_on_without_compile(monkeypatch, capsys):
    def unavailable(model):
        raise RuntimeError("inductor backend failed\nlong traceback text")

    monkeypatch.setattr(inference, "compile_decoder", unavailable)  # the demo imports it when it compiles
    models = DemoModels(DemoModel("vit_test", build_model(get_config("vit_test")), None))
    cli._compile_decoders(models)
    err = capsys.readouterr().err
    assert "torch.compile unavailable (inductor backend failed); clicks run eagerly" in err
