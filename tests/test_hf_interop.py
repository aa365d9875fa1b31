"""A student inside transformers behaves as transformers' SAM does: saved and loaded back the transformers
way, hidden states and attention maps, gradient checkpointing, initialisation from the meta device,
torch.export, and SAM ViTs of any width. Small models: a 24-pixel SAM ViT (12 x 12 tokens) with SAM's
prompt encoder and mask decoder, and bigl_test."""

import pytest
import torch

pytest.importorskip("transformers")
from safetensors.torch import load_file, save_file  # noqa: E402
from transformers import SamConfig, SamModel  # noqa: E402

from bigl_sam import build_model, build_sam, load_sam  # noqa: E402
from bigl_sam.errors import BiglSamError  # noqa: E402
from bigl_sam.hf import BigLittleSamModel, BigLittleVisionEncoder, from_transformers, to_transformers  # noqa: E402
from bigl_sam.hf_layout import to_official, vit_config_from_vision  # noqa: E402
from bigl_sam.modeling import get_config  # noqa: E402

from conftest import randomize_  # noqa: E402

# The width of transformers' own SAM tests (36) in a windowed and a global layer; 14 x 14 windows pad the grid.
SMALL_VISION = {"image_size": 24, "patch_size": 2, "hidden_size": 36, "num_hidden_layers": 2, "num_attention_heads": 4,
                "window_size": 14, "global_attn_indexes": [1]}
MINI_VISION = {"image_size": 512, "hidden_size": 256, "num_hidden_layers": 6, "num_attention_heads": 4,
               "window_size": 8, "global_attn_indexes": [2, 5]}
TOLERANCE = 1e-5


def small_sam(seed: int = 0) -> SamModel:
    """transformers' SAM of SMALL_VISION, eager attention (it returns attention maps), random weights."""
    torch.manual_seed(seed)
    model = SamModel._from_config(SamConfig(vision_config=SMALL_VISION), attn_implementation="eager")
    return randomize_(model, seed).eval()


def student_of(sam: SamModel) -> BigLittleSamModel:
    """A fresh student of `sam`'s shape, its P-path holding `sam`'s encoder: exactly `sam` at keep 1.0."""
    student = BigLittleSamModel(sam.config).eval()
    official = to_official(sam.state_dict(), "reference")
    encoder = {k[len("image_encoder."):]: v for k, v in official.items() if k.startswith("image_encoder.")}
    assert not student.vision_encoder.encoder.load_state_dict(encoder, strict=False).unexpected_keys
    student.vision_encoder.keep_ratio = 1.0
    return student


def pixels(batch: int = 2, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, 3, 24, 24, generator=torch.Generator().manual_seed(seed))


def same_state(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_student_saved_the_transformers_way_loads_back_as_the_student(student_checkpoint, tmp_path):
    student = load_sam(student_checkpoint("bigl_test"))
    model = to_transformers(student)
    model.vision_encoder.keep_ratio = 0.75  # the dial as it is when saved travels
    model.save_pretrained(tmp_path / "hf")
    again = BigLittleSamModel.from_pretrained(tmp_path / "hf")
    assert isinstance(again.vision_encoder, BigLittleVisionEncoder) and again.vision_encoder.keep_ratio == 0.75
    for loaded in (load_sam(tmp_path / "hf"), build_sam("bigl_test", tmp_path / "hf"), from_transformers(again)):
        assert same_state(loaded.state_dict(), student.state_dict()) and loaded.image_encoder.keep_ratio == 0.75


def _segment_anything_sam():
    model = build_model(get_config("vit_test"))
    del model.config  # as segment_anything's own builders make it
    return model


@pytest.mark.parametrize(
    "make, expected",
    [(lambda: SamModel(SamConfig(vision_config=SMALL_VISION)), "got a transformers SamModel already"),
     (_segment_anything_sam, "got a segment_anything Sam, not built by bigl-sam"),
     (lambda: torch.nn.Linear(2, 2), "got a Linear")],
    ids=["sammodel", "segment-anything-sam", "other"],
)
def test_to_transformers_of_a_model_not_built_here_is_one_line(make, expected):
    with pytest.raises(BiglSamError, match=expected) as raised:
        to_transformers(make())
    assert "\n" not in str(raised.value)


def test_hidden_states_and_attention_maps_are_sams_at_keep_one():
    sam = small_sam()
    student = student_of(sam)
    with torch.no_grad():
        expected = sam.vision_encoder(pixels(), output_hidden_states=True, output_attentions=True)
        got = student.vision_encoder(pixels(), output_hidden_states=True, output_attentions=True)
        plain = student.vision_encoder(pixels())
    assert plain.hidden_states is None and plain.attentions is None
    assert len(got.hidden_states) == 3 and len(got.attentions) == 2
    torch.testing.assert_close(got.last_hidden_state, expected.last_hidden_state, rtol=0, atol=TOLERANCE)
    for ours, theirs in zip(got.hidden_states + got.attentions, expected.hidden_states + expected.attentions):
        assert ours.shape == theirs.shape
        torch.testing.assert_close(ours, theirs, rtol=0, atol=TOLERANCE)
    as_tuple = student.vision_encoder(pixels(), output_hidden_states=True, return_dict=False)
    assert len(as_tuple[1]) == 3


def test_attention_maps_below_keep_one_are_the_rows_of_the_tokens_the_p_path_updated():
    student = student_of(small_sam())
    with torch.no_grad():
        dense = student.vision_encoder(pixels(), output_attentions=True).attentions
        student.vision_encoder.keep_ratio = 0.5
        routed = student.vision_encoder(pixels(), output_attentions=True).attentions
    first_layer = routed[0].view(2, 4, 196, 196)  # B x heads x N x N: one 14 x 14 window pads the 12 x 12 grid
    rows_kept = first_layer.sum(-1)[:, 0] > 0.5
    assert rows_kept.sum(dim=1).tolist() == [72, 72]  # ceil(0.5 x 144) tokens per image
    torch.testing.assert_close(first_layer, dense[0].view(2, 4, 196, 196) * rows_kept[:, None, :, None])
    for layer in routed:
        sums = layer.sum(-1)
        assert torch.all(((sums - 1).abs() < 1e-5) | (sums == 0))


def test_gradient_checkpointing_enable_recomputes_the_blocks_with_the_same_gradients():
    student = student_of(small_sam()).train()
    encoder = student.vision_encoder.encoder

    def gradients():
        student.zero_grad()
        student.vision_encoder(pixels()).last_hidden_state.square().sum().backward()
        return [p.grad.clone() for p in encoder.parameters() if p.grad is not None]

    expected = gradients()
    student.activation_checkpointing_enable()
    assert encoder.gradient_checkpointing and student.is_activation_checkpointing
    calls = []
    checkpointed = encoder._gradient_checkpointing_func
    encoder._gradient_checkpointing_func = lambda *args, **kwargs: calls.append(1) or checkpointed(*args, **kwargs)
    got = gradients()
    assert len(calls) == 2 and len(got) == len(expected)
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    student.activation_checkpointing_disable()
    assert not encoder.gradient_checkpointing


def test_from_pretrained_initialises_what_the_folder_lacks_as_transformers_does(tmp_path):
    """from_pretrained builds on the meta device; weights the file lacks (here the E-paths) are initialised by
    `_init_weights`: real tensors, and the E-path's residual scale at zero, so the student is still SAM."""
    sam = small_sam()
    student = student_of(sam)
    student.save_pretrained(tmp_path / "hf")
    weights = load_file(tmp_path / "hf" / "model.safetensors")
    save_file({k: v for k, v in weights.items() if ".little." not in k}, tmp_path / "hf" / "model.safetensors")
    loaded = BigLittleSamModel.from_pretrained(tmp_path / "hf").eval()
    assert all(p.device.type == "cpu" and torch.isfinite(p).all() for p in loaded.parameters())
    assert all(not block.little.scale.any() for block in loaded.vision_encoder.encoder.blocks)
    with torch.no_grad():
        torch.testing.assert_close(loaded.vision_encoder(pixels()).last_hidden_state,
                                   sam.vision_encoder(pixels()).last_hidden_state, rtol=0, atol=TOLERANCE)


def test_torch_export_with_a_dynamic_batch_at_keep_one_and_at_keep_below_one():
    encoder = student_of(small_sam()).vision_encoder
    batch = torch.export.Dim("batch", min=1, max=8)
    for keep_ratio in (1.0, 0.5):
        encoder.keep_ratio = keep_ratio
        exported = torch.export.export(encoder, (pixels(),), dynamic_shapes={"pixel_values": {0: batch}})
        with torch.no_grad():
            for size in (1, 3):
                torch.testing.assert_close(exported.module()(pixels(size, seed=size)).last_hidden_state,
                                           encoder(pixels(size, seed=size)).last_hidden_state, rtol=0, atol=TOLERANCE)


def test_from_transformers_converts_a_sam_vit_of_any_width():
    small = small_sam()
    assert vit_config_from_vision(small.config.vision_config.to_dict(), "small").embed_dim == 36
    ours = from_transformers(small)
    assert same_state(ours.state_dict(), to_official(small.state_dict(), "reference"))
    torch.manual_seed(0)
    mini = SamModel(SamConfig(vision_config=MINI_VISION)).eval()
    assert from_transformers(mini).config == get_config("vit_mini")
    student = from_transformers(mini, student="bigl_mini")
    assert student.config.name == "bigl_mini" and student.image_encoder.keep_ratio == 1.0
