"""Hugging Face transformers: SAM saved the way transformers users save it loads everywhere a SAM file does,
and a student runs inside `transformers.SamModel`. Models are built from `SamConfig` with random weights."""

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("transformers")
from safetensors.torch import save_file  # noqa: E402
from transformers import SamConfig, SamImageProcessor, SamModel, SamProcessor, pipeline  # noqa: E402

import bigl_sam.checkpoint  # noqa: E402
from bigl_sam import build_sam, build_student_from_sam, load_sam  # noqa: E402
from bigl_sam.cli import main  # noqa: E402
from bigl_sam.hf import BigLittleVisionEncoder, from_transformers, to_transformers  # noqa: E402
from bigl_sam.hf_layout import to_official  # noqa: E402

from conftest import photo_like, randomize_  # noqa: E402

TINY_VISION = {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2, "global_attn_indexes": [1]}
TOLERANCE = 1e-5  # float32, same inputs; measured largest differences: 1.3e-7 (tiny) and 2.1e-7 (ViT-B) in pred_masks


def sam_model(vision: dict, seed: int) -> SamModel:
    torch.manual_seed(seed)
    return randomize_(SamModel(SamConfig(vision_config=vision)), seed).eval()


@pytest.fixture(scope="module")
def hf_tiny(tmp_path_factory):
    """A tiny SamModel (SAM vit_test's shape) and its save_pretrained folder."""
    model = sam_model(TINY_VISION, 0)
    folder = tmp_path_factory.mktemp("hf") / "sam-tiny"
    model.save_pretrained(folder)
    return model, folder


@pytest.fixture(scope="module")
def photo() -> Image.Image:
    """An odd-sized photo-like image: textured background, two shapes."""
    return Image.fromarray(photo_like(3))


def prompted(photo: Image.Image) -> dict:
    processor = SamProcessor(image_processor=SamImageProcessor())
    return processor(images=photo, input_points=[[[140, 125]]], input_boxes=[[[270, 140, 470, 340]]],
                     return_tensors="pt")


def same_state(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("size", ["tiny", pytest.param("vit_b", marks=pytest.mark.slow)])
def test_student_from_a_transformers_folder_gives_sammodels_masks(size, hf_tiny, photo, tmp_path):
    if size == "tiny":
        (reference, folder), name = hf_tiny, "bigl_test"
    else:  # SamConfig's default vision encoder is SAM ViT-B's
        reference, folder, name = sam_model({}, 1), tmp_path / "sam-vit-b", "bigl_b_t"
        reference.save_pretrained(folder)
    student = to_transformers(build_student_from_sam(name, folder))
    student.vision_encoder.keep_ratio = 1.0
    inputs = prompted(photo)
    height, width = inputs["reshaped_input_sizes"][0].tolist()  # 768 x 1024
    pixels = inputs["pixel_values"][0]
    padding = torch.cat([pixels[:, height:].flatten(), pixels[:, :, width:].flatten()])
    assert height < 1024 and padding.abs().max() == 0, "SamProcessor pads the normalised image with exact zeros"
    with torch.no_grad():
        expected, got = reference(**inputs), student(**inputs)
        torch.testing.assert_close(got.pred_masks, expected.pred_masks, rtol=0, atol=TOLERANCE)
        torch.testing.assert_close(got.iou_scores, expected.iou_scores, rtol=0, atol=TOLERANCE)
        student.vision_encoder.keep_ratio = 0.5
        cheaper = student(**inputs)
    assert (cheaper.pred_masks - expected.pred_masks).abs().max() > 100 * TOLERANCE


def test_transformers_files_load_everywhere_a_sam_file_does(hf_tiny, tmp_path):
    """The folder, a sharded folder, and its weights alone in transformers' and in the official layout."""
    model, folder = hf_tiny
    official = to_official(model.state_dict(), "reference")
    sharded = tmp_path / "sharded"
    model.save_pretrained(sharded, max_shard_size="1MB")
    assert len(list(sharded.glob("*.safetensors"))) > 1
    bare_hf = tmp_path / "hf-layout.safetensors"
    shutil.copy(folder / "model.safetensors", bare_hf)
    bare_official = tmp_path / "official-layout.safetensors"
    save_file({k: v.contiguous() for k, v in official.items()}, bare_official)
    for source in (folder, sharded, bare_hf, bare_official):
        assert same_state(load_sam(source).state_dict(), official), source
        assert same_state(build_sam("vit_test", source).state_dict(), official), source
        student = build_student_from_sam("bigl_test", source).state_dict()
        assert all(torch.equal(student[k], v) for k, v in official.items()), source


def test_official_file_to_a_transformers_folder_and_back(official_checkpoint, tmp_path):
    path = official_checkpoint("vit_test")
    to_transformers(load_sam(path)).save_pretrained(tmp_path / "converted")
    assert json.loads((tmp_path / "converted/config.json").read_text())["model_type"] == "sam"
    original = torch.load(path, map_location="cpu", weights_only=True)
    assert same_state(load_sam(tmp_path / "converted").state_dict(), original)


def test_student_inside_sammodel_and_back(student_checkpoint, photo):
    student = load_sam(student_checkpoint("bigl_test"))
    student.image_encoder.keep_ratio = 0.25
    model = to_transformers(student)
    assert isinstance(model.vision_encoder, BigLittleVisionEncoder) and model.vision_encoder.keep_ratio == 0.25
    pixels = prompted(photo)["pixel_values"]
    with torch.no_grad():
        torch.testing.assert_close(model.get_image_embeddings(pixels), student.image_encoder(pixels), rtol=0, atol=0)
    back = from_transformers(model)
    assert same_state(back.state_dict(), student.state_dict()) and back.image_encoder.keep_ratio == 0.25


def test_a_sammodel_becomes_a_student_that_is_it_at_keep_one(hf_tiny):
    model, _ = hf_tiny
    student = from_transformers(model, student="bigl_test")
    assert student.image_encoder.keep_ratio == 1.0
    ours = student.state_dict()
    assert all(torch.equal(ours[k], v) for k, v in to_official(model.state_dict(), "reference").items())


def test_mask_generation_pipeline_runs_on_a_student(student_checkpoint, photo):
    model = to_transformers(load_sam(student_checkpoint("bigl_test")))
    generator = pipeline("mask-generation", model=model, image_processor=SamImageProcessor(), device="cpu")
    result = generator(photo, points_per_batch=4, points_per_crop=2, pred_iou_thresh=0.0, stability_score_thresh=0.0)
    assert result["masks"] and result["masks"][0].shape == (375, 500)


def test_distill_compare_reads_the_teacher_folder_once(hf_tiny, tmp_path, monkeypatch):
    """--teacher-checkpoint is the teacher, the students' P-path and their decoder: one read for all three."""
    _, folder = hf_tiny
    reads = []
    read = bigl_sam.checkpoint.read_safetensors
    monkeypatch.setattr(bigl_sam.checkpoint, "read_safetensors", lambda path: reads.append(path) or read(path))
    (tmp_path / "images").mkdir()
    for name in ("a.png", "b.png"):  # compare holds out one and keeps one for training
        Image.fromarray(np.full((40, 60, 3), 90, dtype=np.uint8)).save(tmp_path / "images" / name)
    assert main(["distill", "compare", "--teacher-checkpoint", str(folder), "--student", "bigl_test", "--images",
                 str(tmp_path / "images"), "--holdout", "1", "--keep-ratio", "1.0"]) == 0
    assert reads == [folder / "model.safetensors"]


def _cache_error(capsys, checkpoint, tmp_path) -> str:
    """The one error line of `bigl-sam distill cache --teacher-checkpoint CHECKPOINT` (exit code 2)."""
    args = ["distill", "cache", "--teacher-checkpoint", str(checkpoint), "--images", str(tmp_path / "images"),
            "--out", str(tmp_path / "cache")]
    assert main(args) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("bigl-sam distill: error: ")
    return lines[0]


def _edited_folder(folder, tmp_path, **vision):
    edited = tmp_path / "edited"
    shutil.copytree(folder, edited)
    config = json.loads((edited / "config.json").read_text())
    config.update(vision.pop("top", {}))
    config["vision_config"].update(vision)
    (edited / "config.json").write_text(json.dumps(config))
    return edited


def _json_folder(folder, tmp_path, config):
    edited = tmp_path / "edited"
    shutil.copytree(folder, edited)
    (edited / "config.json").write_text(json.dumps(config))
    return edited


def _symlink_loop(tmp_path):
    (tmp_path / "loop.pth").symlink_to(tmp_path / "other.pth")
    (tmp_path / "other.pth").symlink_to(tmp_path / "loop.pth")
    return tmp_path / "loop.pth"


def _truncated(folder, tmp_path):
    path = tmp_path / "cut.safetensors"
    path.write_bytes((folder / "model.safetensors").read_bytes()[:3000])
    return path


def _without_config(folder, tmp_path):
    (tmp_path / "nocfg").mkdir()
    shutil.copy(folder / "model.safetensors", tmp_path / "nocfg")
    return tmp_path / "nocfg"


@pytest.mark.parametrize(
    "make, expected",
    [
        (_truncated, "cut.safetensors: not a readable safetensors file"),
        (_without_config, "nocfg: is a directory without config.json"),
        (lambda f, t: _edited_folder(f, t, mlp_dim=128),
         "image_encoder.blocks.0.mlp.lin1.weight (256, 64) vs (128, 64)"),
        (lambda f, t: _edited_folder(f, t, patch_size=8), "image_encoder.pos_embed (1, 64, 64, 64) vs (1, 128, 128, 64)"),
        (lambda f, t: _edited_folder(f, t, top={"model_type": "sam2"}), "model_type 'sam2' is not SAM's ViT"),
        (lambda f, t: _edited_folder(f, t, num_hidden_layers="2"),
         "vision_config.num_hidden_layers is '2' (a JSON string), expected an integer"),
        (lambda f, t: _edited_folder(f, t, use_rel_pos=False), "not a SAM ViT: use_rel_pos False"),
        (lambda f, t: _json_folder(f, t, [1, 2]), "config.json: holds a JSON list, expected an object"),
        (lambda f, t: _symlink_loop(t), "loop.pth: is a symlink loop"),
    ],
    ids=["truncated-safetensors", "folder-without-config", "pruned-slimsam-like", "patch-size-8", "sam2",
         "string-depth", "no-rel-pos", "config-list", "symlink-loop"],
)
def test_bad_transformers_input_is_one_line(hf_tiny, tmp_path, capsys, make, expected):
    line = _cache_error(capsys, make(hf_tiny[1], tmp_path), tmp_path)
    assert expected in line


def test_transformers_file_missing_keys_names_them(hf_tiny, tmp_path, capsys):
    model, _ = hf_tiny
    state = {k: v.clone() for k, v in model.state_dict().items() if "iou_prediction_head.proj_out" not in k}
    save_file(state, tmp_path / "partial.safetensors")
    line = _cache_error(capsys, tmp_path / "partial.safetensors", tmp_path)
    assert "2 missing keys: mask_decoder.iou_prediction_head.layers.2.weight" in line

