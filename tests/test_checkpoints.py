"""Loading official SAM files and student files; every bad file gets one clear error."""

import pickle
import re
from dataclasses import replace

import pytest
import torch

import bigl_sam
from bigl_sam import CheckpointError, build_model, build_sam, build_student_from_sam, load_sam, save_checkpoint
from bigl_sam.checkpoint import read_model
from bigl_sam.modeling import BIGL_CONFIGS, SAM_VIT_CONFIGS, get_config, is_student, keep_ratio_of
from bigl_sam.modeling.config import sam_vit_config, students_of


def same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def one_line(err: pytest.ExceptionInfo) -> str:
    message = str(err.value)
    assert "\n" not in message
    return message


def test_registry_keeps_sam_keys_and_adds_students():
    assert {"default", "vit_h", "vit_l", "vit_b", "bigl_b_t", "bigl_l_s", "bigl_h_b"} <= set(bigl_sam.sam_model_registry)
    assert bigl_sam.SamPredictor is __import__("segment_anything").SamPredictor


def test_is_student_answers_for_configs_models_encoders_and_files(official_checkpoint, student_checkpoint):
    student, sam = build_model(get_config("bigl_test")), build_model(get_config("vit_test"))
    assert is_student(get_config("bigl_test")) and is_student(student) and is_student(student.image_encoder)
    assert not any(is_student(x) for x in (get_config("vit_test"), sam, sam.image_encoder, None))
    assert is_student(read_model(student_checkpoint("bigl_test")))
    assert not is_student(read_model(official_checkpoint("vit_test")))
    assert keep_ratio_of(student) == student.image_encoder.keep_ratio and keep_ratio_of(sam) is None


def test_the_students_of_a_sam_vit_are_found_by_shape_whatever_its_name():
    assert students_of(SAM_VIT_CONFIGS["vit_h"]) == ["bigl_h_b", "bigl_h_s"]
    assert students_of(replace(SAM_VIT_CONFIGS["vit_b"], name="my_fine_tune")) == ["bigl_b_t"]
    assert students_of(replace(SAM_VIT_CONFIGS["vit_b"], depth=6)) == []
    assert sam_vit_config(get_config("bigl_b_t")) == SAM_VIT_CONFIGS["vit_b"] == sam_vit_config(get_config("vit_b"))


@pytest.mark.parametrize("student", ["bigl_b_t", "bigl_l_s", "bigl_h_b"])
def test_student_p_path_has_the_exact_layout_of_its_sam(student):
    """Every image_encoder tensor of SAM ViT-B/L/H has a twin of the same name and shape in the student."""
    config = BIGL_CONFIGS[student]
    with torch.device("meta"):
        sam = build_model(SAM_VIT_CONFIGS[config.sam_model_type]).state_dict()
        ours = build_model(config).state_dict()
    for key, tensor in sam.items():
        assert key in ours and ours[key].shape == tensor.shape, key
    extra = {re.sub(r"blocks\.\d+\.", "blocks.N.", k).split(".")[3] for k in ours.keys() - sam.keys()}
    assert extra == {"router", "little"}


def test_official_checkpoint_loads_through_registry_and_is_recognised(official_checkpoint):
    path = official_checkpoint("vit_test")
    reference = torch.load(path, map_location="cpu", weights_only=True)
    for model in (build_sam("vit_test", path), load_sam(path)):
        assert model.config.name == "vit_test"
        assert all(torch.equal(model.state_dict()[k], v) for k, v in reference.items())


def test_student_round_trip_rebuilds_the_architecture(tmp_path, student_checkpoint):
    original = build_sam("bigl_test", student_checkpoint("bigl_test"))
    original.image_encoder.keep_ratio = 0.5
    path = save_checkpoint(original, tmp_path / "student.pth")
    loaded = load_sam(path)
    assert loaded.config == replace(original.config, keep_ratio=0.5)  # the encoder's ratio, saved
    assert loaded.image_encoder.keep_ratio == 0.5
    assert same_weights(loaded, original)
    assert same_weights(bigl_sam.sam_model_registry["bigl_test"](checkpoint=path), original)
    assert not list(tmp_path.glob(".*tmp*")), "atomic save left a temp file"


def test_student_from_official_files(official_checkpoint):
    encoder_file, decoder_file = official_checkpoint("vit_test", seed=0), official_checkpoint("vit_test", seed=1)
    student = build_student_from_sam("bigl_test", encoder_weights=encoder_file, decoder_weights=decoder_file)
    encoder_state = torch.load(encoder_file, weights_only=True)
    decoder_state = torch.load(decoder_file, weights_only=True)
    ours = student.state_dict()
    for key, value in encoder_state.items():
        source = encoder_state if key.startswith("image_encoder.") else decoder_state
        assert torch.equal(ours[key], source[key]), key
    assert all(torch.equal(block.little.scale, torch.zeros_like(block.little.scale))
               for block in student.image_encoder.blocks)


def test_builders_take_their_former_keyword_names_with_a_warning(official_checkpoint, student_checkpoint):
    encoder_file, decoder_file = official_checkpoint("vit_test", seed=0), official_checkpoint("vit_test", seed=1)
    torch.manual_seed(0)
    with pytest.warns(FutureWarning) as warned:
        former = build_student_from_sam(name="bigl_test", encoder_checkpoint=encoder_file,
                                        decoder_checkpoint=decoder_file)
    assert sorted(str(w.message).split(";")[0] for w in warned) == [
        "build_student_from_sam(decoder_checkpoint=...) is now build_student_from_sam(decoder_weights=...)",
        "build_student_from_sam(encoder_checkpoint=...) is now build_student_from_sam(encoder_weights=...)",
        "build_student_from_sam(name=...) is now build_student_from_sam(model_type=...)",
    ]
    torch.manual_seed(0)
    assert same_weights(former, build_student_from_sam("bigl_test", encoder_file, decoder_file))
    path = student_checkpoint("bigl_test")
    with pytest.warns(FutureWarning) as warned:
        assert same_weights(build_sam(name="bigl_test", checkpoint=path), load_sam(path))
    assert sorted(str(w.message).split(";")[0] for w in warned) == [
        "build_sam(checkpoint=...) is now build_sam(weights=...)", "build_sam(name=...) is now build_sam(model_type=...)"]
    with pytest.warns(FutureWarning, match=re.escape("load_sam(checkpoint=...) is now load_sam(weights=...)")):
        assert same_weights(load_sam(checkpoint=path), build_sam(model_type="bigl_test", weights=path))
    with pytest.raises(TypeError, match="give weights= only"):
        load_sam(checkpoint=path, weights=path)


def test_truncated_file(tmp_path, official_checkpoint):
    data = official_checkpoint("vit_test").read_bytes()
    path = tmp_path / "cut.pth"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError) as err:
        build_sam("vit_test", path)
    message = one_line(err)
    assert str(path) in message and "not a PyTorch checkpoint (corrupt or another format)" in message
    assert "failed finding central directory" in message, "torch's first sentence says how it is broken"


def test_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_sam(tmp_path / "nope.pth")


def test_checkpoint_of_another_size(official_checkpoint):
    """A ViT-test file offered as ViT-B: the error says which tensors have which shapes."""
    path = official_checkpoint("vit_test")
    with pytest.raises(CheckpointError) as err:
        build_sam("vit_b", path)
    message = one_line(err)
    assert str(path) in message and "image_encoder.pos_embed (1, 64, 64, 64) vs (1, 64, 64, 768)" in message
    assert "missing keys" in message


def test_missing_and_unexpected_keys(tmp_path, official_checkpoint):
    state = torch.load(official_checkpoint("vit_test"), weights_only=True)
    del state["mask_decoder.iou_token.weight"]
    state["mask_decoder.extra_head.weight"] = torch.zeros(1)
    path = tmp_path / "edited.pth"
    torch.save(state, path)
    with pytest.raises(CheckpointError) as err:
        build_sam("vit_test", path)
    message = one_line(err)
    assert "1 missing keys: mask_decoder.iou_token.weight" in message
    assert "1 unexpected keys: mask_decoder.extra_head.weight" in message


def test_student_file_under_another_name(student_checkpoint):
    with pytest.raises(CheckpointError, match="holds a bigl_test model, not bigl_b_t"):
        build_sam("bigl_b_t", student_checkpoint("bigl_test"))


def test_official_file_under_a_student_name(official_checkpoint):
    with pytest.raises(CheckpointError, match="build_student_from_sam"):
        build_sam("bigl_test", official_checkpoint("vit_test"))


def test_pickled_code_is_refused(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"model": get_config}, path)  # a function: loading it would mean running a pickle
    with pytest.raises(CheckpointError, match="refused"):
        load_sam(path)


def test_not_a_checkpoint_at_all(tmp_path):
    path = tmp_path / "notes.pth"
    path.write_text("these are not weights")
    with pytest.raises(CheckpointError) as err:
        load_sam(path)
    assert one_line(err) == f"{path}: not a PyTorch checkpoint (corrupt or another format)"


def _official_state(official_checkpoint) -> dict:
    return torch.load(official_checkpoint("vit_test"), weights_only=True)


def _student_state(student_checkpoint) -> dict:
    return torch.load(student_checkpoint("bigl_test"), weights_only=True)


@pytest.mark.parametrize(
    "edit, expected",
    [
        (lambda s: s.update({"mask_decoder.iou_token.weight": "a string"}),
         "mask_decoder.iou_token.weight is not a tensor (str)"),
        (lambda s: s.update({"image_encoder.pos_embed": [1.0, 2.0]}), "image_encoder.pos_embed is not a tensor (list)"),
        (lambda s: s.update({7: torch.zeros(1)}), "key 7 is not a parameter name (int)"),
    ],
    ids=["value-not-a-tensor", "pos-embed-not-a-tensor", "integer-key"],
)
@pytest.mark.parametrize("loader", [load_sam, lambda p: build_sam("vit_test", p)], ids=["load_sam", "build_sam"])
def test_official_file_with_non_tensor_entries(tmp_path, official_checkpoint, edit, expected, loader):
    state = _official_state(official_checkpoint)
    edit(state)
    path = tmp_path / "odd.pth"
    torch.save(state, path)
    with pytest.raises(CheckpointError) as err:
        loader(path)
    assert str(path) in one_line(err) and expected in str(err.value)


@pytest.mark.parametrize(
    "model, expected",
    [([1, 2], "its model entry is not a state dict (list)"), ({0: torch.zeros(1)}, "key 0 is not a parameter name (int)"),
     ({"image_encoder.pos_embed": 3}, "image_encoder.pos_embed is not a tensor (int)")],
    ids=["model-a-list", "integer-key", "pos-embed-an-int"],
)
def test_student_file_with_a_broken_model_entry(tmp_path, student_checkpoint, model, expected):
    state = _student_state(student_checkpoint)
    state["model"] = model
    path = tmp_path / "odd.pth"
    torch.save(state, path)
    for loader in (load_sam, lambda p: build_sam("bigl_test", p)):
        with pytest.raises(CheckpointError) as err:
            loader(path)
        assert str(path) in one_line(err) and expected in str(err.value)


def test_official_file_offered_to_build_student_with_non_tensor(tmp_path, official_checkpoint):
    state = _official_state(official_checkpoint)
    state["image_encoder.pos_embed"] = "x"
    path = tmp_path / "odd.pth"
    torch.save(state, path)
    with pytest.raises(CheckpointError, match=re.escape("image_encoder.pos_embed is not a tensor (str)")):
        build_student_from_sam("bigl_test", encoder_weights=path)


def test_student_file_with_a_broken_config(tmp_path, student_checkpoint):
    state = _student_state(student_checkpoint)
    state["config"] = "bigl_test"
    path = tmp_path / "odd.pth"
    torch.save(state, path)
    with pytest.raises(CheckpointError) as err:
        load_sam(path)
    assert "broken config" in one_line(err)


@pytest.mark.parametrize("old, new", [("init_from", "sam_model_type"), ("teacher", "decoder_model_type")])
def test_student_config_under_other_keys_is_refused(tmp_path, student_checkpoint, old, new):
    """Student files were never released under other config keys: nothing guesses what one meant."""
    state = _student_state(student_checkpoint)
    state["config"][old] = state["config"].pop(new)
    path = tmp_path / "odd.pth"
    torch.save(state, path)
    with pytest.raises(CheckpointError) as err:
        load_sam(path)
    assert "broken config" in one_line(err) and str(path) in one_line(err)


def _load_error(path) -> str:
    with pytest.raises(CheckpointError) as err:
        load_sam(path)
    message = one_line(err)
    assert str(path) in message
    assert "weights_only" not in message, "never pass on torch's hint to load without weights_only"
    return message


def test_random_bytes_are_not_a_checkpoint(tmp_path):
    path = tmp_path / "noise.pth"
    path.write_bytes(bytes(range(256)) * 16)  # opcode 0x80 then garbage: what torch calls "Unsupported operand"
    assert "not a PyTorch checkpoint (corrupt or another format)" in _load_error(path)


def test_no_error_passes_on_the_weights_only_hint(tmp_path, official_checkpoint):
    """Every way a file can fail to load; torch's texts for several of them say that loading with
    weights_only=False "will likely succeed", which for an untrusted file is the one thing not to do."""
    files = {
        "noise.pth": bytes(range(256)) * 16,
        "pickled-dict.pth": pickle.dumps({"a": 1}, protocol=2)[:-1] + b"\xff",
        "text.pth": b"these are not weights",
        "empty.pth": b"",
        "cut.pth": official_checkpoint("vit_test").read_bytes()[:5000],
    }
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
        _load_error(tmp_path / name)
    evil = tmp_path / "evil.pth"
    torch.save({"model": get_config}, evil)
    assert "refused" in _load_error(evil)


def test_pickled_code_names_what_it_would_have_run(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"model": get_config}, path)
    message = _load_error(path)
    assert "holds more than tensors" in message and "bigl_sam.modeling.config.get_config" in message
    assert "\x1b" not in message, "no terminal escape codes from torch's message"


def test_directory_instead_of_a_file(tmp_path):
    (tmp_path / "sam.pth").mkdir()
    assert "is a directory" in _load_error(tmp_path / "sam.pth")


def test_unreadable_file(tmp_path, official_checkpoint, monkeypatch):
    """chmod does not stop root (these tests may run as root), so torch.load's open is made to fail."""
    path = tmp_path / "locked.pth"
    path.write_bytes(official_checkpoint("vit_test").read_bytes())

    def refuse(file, *args, **kwargs):
        raise PermissionError(13, "Permission denied", str(file))

    monkeypatch.setattr(torch, "load", refuse)
    assert "permission denied" in _load_error(path)
