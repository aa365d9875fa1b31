"""Which weights the demo runs (the rule of bigl_sam.pretrained), where its keep-ratio slider starts, and
what its status line and banner say in each case."""

import numpy as np
import pytest
import segment_anything
import torch
from PIL import Image
from conftest import official_weights_folder

from bigl_sam.cli import program
from bigl_sam.demo.app import build_app
from bigl_sam.demo.handlers import DemoHandlers
from bigl_sam.inference import decode_click, encode_image
from bigl_sam.demo.models import load_demo_models, untrained_banner
from bigl_sam.demo.session import Session
from bigl_sam.pretrained import CHECKPOINT, OFFICIAL, RANDOM

SAM_EXACTLY = "SAM ViT-TEST exactly (keep 1.0); below 1.0 the routing is untrained until distilled (docs/distillation.md)"


@pytest.fixture(scope="module")
def folders(tmp_path_factory, official_checkpoint, student_checkpoint):
    root = tmp_path_factory.mktemp("demo-weights")
    (root / "empty").mkdir()
    official = {"sam_vit_test_000000.pth": ("vit_test", official_checkpoint("vit_test"))}
    manifest = official_weights_folder(root / "official", official)
    official_weights_folder(root / "both", official)
    (root / "both" / "bigl_test_v1.pth").write_bytes(student_checkpoint("bigl_test").read_bytes())
    return {name: root / name for name in ("empty", "official", "both")}, manifest


def slider_start(app) -> float:
    return next(block.value for block in app.blocks.values() if getattr(block, "elem_id", None) == "bigl-keep-ratio")


@pytest.mark.parametrize(
    "folder, kind, keep, status",
    [
        ("empty", RANDOM, 0.25, "Random weights: the masks are noise (see the banner above)."),
        ("official", OFFICIAL, 1.0, SAM_EXACTLY),
        ("both", CHECKPOINT, 0.25, "Upload an image or pick an example to start."),
    ],
)
def test_rule_slider_and_status(folders, tmp_path, folder, kind, keep, status):
    paths, manifest = folders
    models = load_demo_models("bigl_test", weights_dir=paths[folder], manifest=manifest)
    assert models.main.weights.kind == kind
    handlers = DemoHandlers(models, tmp_path)
    assert slider_start(build_app(handlers)) == keep
    assert handlers.view(Session()).status.endswith(status)
    uploaded = handlers.upload(Image.fromarray(np.zeros((30, 40, 3), dtype=np.uint8)), Session())
    assert uploaded.encodings["main"].keep_ratio == keep
    assert (status in handlers.view(uploaded).status) == (kind != CHECKPOINT)
    assert bool(untrained_banner(models)) == (kind == RANDOM)


def test_explicit_keep_ratio_wins_and_status_says_what_it_costs(folders, tmp_path):
    paths, manifest = folders
    models = load_demo_models("bigl_test", keep_ratio=0.5, weights_dir=paths["official"], manifest=manifest)
    handlers = DemoHandlers(models, tmp_path)
    assert slider_start(build_app(handlers)) == 0.5
    status = handlers.view(handlers.upload(Image.fromarray(np.zeros((30, 40, 3), dtype=np.uint8)), Session())).status
    assert "Keep 0.50 with an untrained router" in status and "at keep 1.0 it is exactly that SAM" in status


def test_banner_names_the_official_files_and_no_released_checkpoints(tmp_path):
    with torch.device("meta"):  # the real architecture, without spending time on its random weights
        models = load_demo_models("bigl_b_t", weights_dir=tmp_path)
    banner = untrained_banner(models)
    assert f"`{program()} weights download sam_vit_b_01ec64.pth`" in banner  # the command as this process runs
    assert f"`{program()} weights download sam_vit_h_4b8939.pth`" in banner
    assert "exactly SAM ViT-B" in banner and "docs/distillation.md" in banner
    assert "released" not in banner and str(tmp_path) in banner
    tiny = untrained_banner(load_demo_models("bigl_test", weights_dir=tmp_path))  # no official file known
    assert "download" not in tiny and tiny.endswith("Or start the demo with `--checkpoint PATH`.")


@pytest.mark.slow
def test_student_built_from_sam_vit_b_is_sam_through_the_demo(tmp_path, official_checkpoint):
    """Real ViT-B architecture, random weights in the official layout, under the official name; no ViT-H
    file, so the decoder comes from the same file. The demo's own encode/decode path, student vs SAM."""
    path = official_checkpoint("vit_b")
    manifest = official_weights_folder(tmp_path, {"sam_vit_b_01ec64.pth": ("vit_b", path)})
    models = load_demo_models("bigl_b_t", weights_dir=tmp_path, manifest=manifest)
    handlers = DemoHandlers(models, tmp_path)
    assert models.main.weights.kind == OFFICIAL and slider_start(build_app(handlers)) == 1.0
    assert handlers.view(Session()).status.endswith(
        "SAM ViT-B exactly (keep 1.0); below 1.0 the routing is untrained until distilled (docs/distillation.md)")
    sam = segment_anything.sam_model_registry["vit_b"]()
    sam.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    image = np.random.default_rng(0).integers(0, 256, size=(240, 320, 3), dtype=np.uint8)
    clicks = dict(points=[(100.0, 60.0), (250.0, 200.0)], labels=[1, 0])
    student_encoding, sam_encoding = encode_image(models.main.model, image), encode_image(sam.eval(), image)
    torch.testing.assert_close(student_encoding.features, sam_encoding.features, atol=1e-4, rtol=1e-4)
    student, compare = decode_click(models.main.model, student_encoding, **clicks), decode_click(sam, sam_encoding, **clicks)
    np.testing.assert_allclose(student.scores, compare.scores, atol=1e-3)
    assert (student.masks != compare.masks).mean() < 1e-4
