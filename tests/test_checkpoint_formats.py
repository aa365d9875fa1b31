"""Every file `save_checkpoint` writes (.pth and .safetensors, of a SAM ViT and of a student) loads through
every entry point: the registry, `load_sam`, `build_student_from_sam`, and each command's checkpoint option."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open

import bigl_sam.onnx.export
from bigl_sam import build_model, build_student_from_sam, load_sam, sam_model_registry, save_checkpoint
from bigl_sam.cli import main
from bigl_sam.demo.models import load_demo_model
from bigl_sam.modeling import get_config
from bigl_sam.pretrained import ModelSpec, choose_weights

from conftest import randomize_, small_test_configs

FILES = {"sam.pth": "vit_test", "sam.safetensors": "vit_test", "student.pth": "bigl_test",
         "student.safetensors": "bigl_test"}
STUDENT_KEEP_RATIO = 0.5  # not the config's default, so that a lost ratio shows


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """The folder of FILES and the models they were saved from."""
    folder = tmp_path_factory.mktemp("saved")
    models = {"vit_test": randomize_(build_model(get_config("vit_test")), 0),
              "bigl_test": randomize_(build_model(get_config("bigl_test")), 1)}
    models["bigl_test"].image_encoder.keep_ratio = STUDENT_KEEP_RATIO
    for name, model_name in FILES.items():
        save_checkpoint(models[model_name], folder / name)
    images = folder / "images"
    images.mkdir()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8)).save(images / "a.png")
    return folder, models


def same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def _export(name: str, path: Path, monkeypatch, tmp_path) -> torch.nn.Module:
    """`bigl-sam export onnx --model NAME --checkpoint PATH`, up to the model the exporter is handed."""
    handed = []

    def export_onnx(model, out, **options):
        handed.append(model)
        return {"check": {"max_abs_diff": {}}}

    monkeypatch.setattr(bigl_sam.onnx.export, "export_onnx", export_onnx)
    assert main(["export", "onnx", "--model", name, "--checkpoint", str(path), "--out", str(tmp_path / "x")]) == 0
    return handed[0]


ENTRY_POINTS = {
    "registry": lambda name, path, *_: sam_model_registry[name](checkpoint=path),
    "load_sam": lambda name, path, *_: load_sam(path),
    "eval --checkpoint": lambda name, path, *_: ModelSpec(name, choose_weights(name, path)).load(torch.device("cpu")),
    "demo --checkpoint": lambda name, path, *_: load_demo_model(name, path).model,
    "export onnx --checkpoint": _export,
}


@pytest.mark.parametrize("entry", ENTRY_POINTS)
@pytest.mark.parametrize("file", FILES)
def test_every_saved_file_loads_through_every_entry_point(saved, file, entry, monkeypatch, tmp_path):
    folder, models = saved
    name = FILES[file]
    model = ENTRY_POINTS[entry](name, folder / file, monkeypatch, tmp_path)
    assert model.config.name == name and same_weights(model, models[name])
    if name == "bigl_test":
        assert model.image_encoder.keep_ratio == STUDENT_KEEP_RATIO


@pytest.mark.parametrize("file", ["sam.pth", "sam.safetensors"])
def test_a_saved_sam_starts_a_student(saved, file):
    folder, models = saved
    student = build_student_from_sam("bigl_test", folder / file)
    ours, sam = student.state_dict(), models["vit_test"].state_dict()
    assert all(torch.equal(ours[key], value) for key, value in sam.items())


def test_safetensors_student_keeps_config_and_keep_ratio_in_its_metadata(saved):
    folder, models = saved
    with safe_open(str(folder / "student.safetensors"), framework="pt") as f:
        metadata = f.metadata()
    assert metadata["format"] == "bigl-sam/1"
    assert json.loads(metadata["config"])["keep_ratio"] == STUDENT_KEEP_RATIO
    from_pth, from_safetensors = load_sam(folder / "student.pth"), load_sam(folder / "student.safetensors")
    assert same_weights(from_pth, from_safetensors) and from_pth.config == from_safetensors.config
    again = save_checkpoint(from_safetensors, folder / "again.pth")
    assert same_weights(load_sam(again), models["bigl_test"])


@pytest.fixture(scope="module")
def saved_256(tmp_path_factory):
    """A 256 px SAM and student (fast distill commands) saved as safetensors, and one image."""
    folder = tmp_path_factory.mktemp("saved_256")
    sam, student = small_test_configs()
    save_checkpoint(randomize_(build_model(sam), 0), folder / "sam.safetensors")
    save_checkpoint(randomize_(build_model(student), 1), folder / "student.safetensors")
    (folder / "images").mkdir()
    pixels = np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    for name in ("a.png", "b.png"):  # compare holds out one and keeps one for training
        Image.fromarray(pixels).save(folder / "images" / name)
    return folder


@pytest.mark.usefixtures("one_thread")
def test_distill_commands_take_saved_safetensors(saved_256, tmp_path):
    """(.pth files go through these commands in test_distill_train and test_distill_self.)"""
    suffix = ".safetensors"
    sam, student = str(saved_256 / f"sam{suffix}"), str(saved_256 / f"student{suffix}")
    images = str(saved_256 / "images")
    assert main(["distill", "cache", "--teacher-checkpoint", sam, "--images", images, "--out", str(tmp_path / "c"),
                 "--batch", "1"]) == 0
    assert main(["distill", "train", "--teacher-checkpoint", sam, "--student", student, "--images", images,
                 "--out", str(tmp_path / "run"), "--steps", "1", "--batch", "1", "--holdout", "0", "--workers", "0",
                 "--eval-every", "0"]) == 0
    assert main(["distill", "compare", "--teacher-checkpoint", sam, "--student", student, "--images", images,
                 "--holdout", "1", "--keep-ratio", "0.5"]) == 0
