"""`bigl-sam export onnx --format anylabeling`: the folder samexporter's (AnyLabeling's) SegmentAnythingONNX
loads, giving SamPredictor's masks, for a student at keep 0.25 and SAM's own encoder; config.yaml."""

import json

import numpy as np
import pytest
from PIL import Image, ImageDraw

pytest.importorskip("onnxruntime")
sam_onnx = pytest.importorskip("samexporter.sam_onnx")
yaml = pytest.importorskip("yaml")

from bigl_sam import SamPredictor, build_sam  # noqa: E402
from bigl_sam.cli import main  # noqa: E402
from bigl_sam.onnx.anylabeling import CANVAS_HW, CONFIG_KEYS, RGB_INPUT  # noqa: E402
from bigl_sam.onnx.export import check_out  # noqa: E402
from bigl_sam.onnx.predictor import open_session  # noqa: E402

# Share of mask pixels allowed to differ from SamPredictor's: samexporter resizes the low-res logits with
# OpenCV, not torch (bilinear both, rounding apart). Measured: at most 7e-6 on these tiny models.
MASK_TOLERANCE = 1e-3


def photo_like() -> np.ndarray:
    rng = np.random.default_rng(5)
    image = Image.fromarray(rng.normal(120, 25, (375, 500, 3)).clip(0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    draw.ellipse((60, 50, 220, 200), fill=(220, 40, 40))
    draw.rectangle((280, 150, 460, 330), fill=(30, 60, 200))
    return np.asarray(image)


@pytest.fixture(scope="module", params=["bigl_test", "vit_test"])
def exported(request, tmp_path_factory, student_checkpoint, official_checkpoint):
    name = request.param
    checkpoint = student_checkpoint(name) if name == "bigl_test" else official_checkpoint(name)
    folder = tmp_path_factory.mktemp(f"anylabeling_{name}")
    ratio = ["--keep-ratio", "0.25"] if name == "bigl_test" else []
    assert main(["export", "onnx", "--format", "anylabeling", "--model", name, "--checkpoint", str(checkpoint),
                 "--out", str(folder), *ratio]) == 0
    model = build_sam(name, checkpoint)
    if name == "bigl_test":
        model.image_encoder.keep_ratio = 0.25
    return name, folder, model


def test_config_yaml_has_every_key_anylabeling_reads(exported):
    name, folder, _ = exported
    config = yaml.safe_load((folder / "config.yaml").read_text())
    assert set(CONFIG_KEYS) <= set(config) and config["type"] == "segment_anything"
    assert (folder / config["encoder_model_path"]).is_file() and (folder / config["decoder_model_path"]).is_file()
    assert name in config["display_name"] and ("keep ratio 0.25" in config["display_name"]) == (name == "bigl_test")
    assert (config["max_height"], config["max_width"]) == CANVAS_HW
    manifest = json.loads((folder / "export.json").read_text())
    assert manifest["format"] == "anylabeling" and manifest["check"]["passed"]
    assert manifest["keep_ratio"] == ({"fixed": 0.25} if name == "bigl_test" else None)
    check_out(folder)  # an export again to this folder may replace it: config.yaml is an export's file


def test_segment_anything_onnx_gives_sam_predictors_masks(exported):
    name, folder, model = exported
    image = photo_like()
    runner = sam_onnx.SegmentAnythingONNX(str(folder / "encoder.onnx"), str(folder / "decoder.onnx"), ["cpu"])
    assert runner.encoder_input_rank == 3  # the H x W x 3 RGB input, preprocessing in the graph
    embedding = runner.encode(np.ascontiguousarray(image[..., ::-1]))  # it takes OpenCV's BGR
    reference = SamPredictor(model)
    reference.set_image(image)
    assert np.abs(embedding["image_embedding"] - reference.features.numpy()).max() < 1e-3
    prompts = [
        ([{"type": "point", "data": [140, 120], "label": 1}],
         {"point_coords": np.array([[140.0, 120.0]]), "point_labels": np.array([1])}),
        # samexporter adds SAM's padding point (label -1) after a box too; SamPredictor only without one
        ([{"type": "rectangle", "data": [270, 140, 470, 340]}],
         {"box": np.array([270.0, 140.0, 470.0, 340.0]), "point_coords": np.zeros((1, 2)), "point_labels": np.array([-1])}),
    ]
    for prompt, ours in prompts:
        masks = runner.predict_masks(embedding, prompt)[0, 1:] > 0  # masks 1-3: SAM's multimask output
        expected, _, _ = reference.predict(**ours, multimask_output=True)
        assert masks.shape == expected.shape
        assert (masks != expected).mean() < MASK_TOLERANCE, (name, prompt)


def test_anylabeling_canvas_input_gives_sam_predictors_embedding(exported):
    """AnyLabeling feeds the photo resized into a 684 x 1024 canvas (zeros beyond it)."""
    _, folder, model = exported
    canvas = np.zeros((*CANVAS_HW, 3), np.uint8)
    canvas[:375 * 2, :1000] = np.asarray(Image.fromarray(photo_like()).resize((1000, 750)))[: CANVAS_HW[0]]
    got = open_session(folder / "encoder.onnx").run(None, {RGB_INPUT: canvas.astype(np.float32)})[0]
    reference = SamPredictor(model)
    reference.set_image(canvas)
    assert np.abs(got - reference.features.numpy()).max() < 1e-3


def test_anylabeling_keep_ratio_arguments_are_one_line(tmp_path, capsys):
    for model, ratio, message in [("bigl_test", "0.25,1.0", "the one ratio fixed in the encoder"),
                                  ("vit_test", "0.5", "vit_test is SAM's own encoder")]:
        capsys.readouterr()
        assert main(["export", "onnx", "--format", "anylabeling", "--model", model, "--out", str(tmp_path / model),
                     "--keep-ratio", ratio]) == 2
        error = capsys.readouterr().err.strip().splitlines()[-1]
        assert error.startswith("bigl-sam export: error: ") and message in error, error
