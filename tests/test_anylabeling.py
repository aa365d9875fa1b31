"""`bigl-sam export onnx --format anylabeling`: the folder samexporter's (AnyLabeling's) SegmentAnythingONNX
loads, giving SamPredictor's masks, for a student at keep 0.25 and SAM's own encoder; config.yaml; an
incomplete folder refused in one line."""

import json
import re
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from segment_anything.utils.onnx import SamOnnxModel

pytest.importorskip("onnxruntime")
sam_onnx = pytest.importorskip("samexporter.sam_onnx")
yaml = pytest.importorskip("yaml")

from bigl_sam import SamPredictor, build_sam  # noqa: E402
from bigl_sam.cli import main  # noqa: E402
from bigl_sam.errors import BiglSamError  # noqa: E402
from bigl_sam.onnx import OnnxPredictor  # noqa: E402
from bigl_sam.onnx.anylabeling import CANVAS_HW, CONFIG_KEYS, RGB_INPUT  # noqa: E402
from bigl_sam.onnx.export import check_out  # noqa: E402
from bigl_sam.onnx.interface import DECODER_INPUTS  # noqa: E402
from bigl_sam.onnx.predictor import open_session  # noqa: E402
from conftest import photo_like  # noqa: E402

# Share of mask pixels allowed to differ from SamPredictor's: samexporter resizes the low-res logits with
# OpenCV, not torch (bilinear both, rounding apart). Measured: at most 7e-6 on these tiny models.
MASK_TOLERANCE = 1e-3


PHOTO_SEED = 5


@pytest.fixture(scope="module")
def export_folder(tmp_path_factory, student_checkpoint, official_checkpoint):
    """export_folder(name) -> (name, folder, model): `--format anylabeling` of a random `name` (bigl_test at
    keep 0.25), exported once per module, and the PyTorch model it was exported from."""
    made = {}

    def make(name: str):
        if name not in made:
            checkpoint = student_checkpoint(name) if name == "bigl_test" else official_checkpoint(name)
            folder = tmp_path_factory.mktemp(f"anylabeling_{name}")
            ratio = ["--keep-ratio", "0.25"] if name == "bigl_test" else []
            assert main(["export", "onnx", "--format", "anylabeling", "--model", name, "--checkpoint",
                         str(checkpoint), "--out", str(folder), *ratio]) == 0
            model = build_sam(name, checkpoint)
            if name == "bigl_test":
                model.image_encoder.keep_ratio = 0.25
            made[name] = name, folder, model
        return made[name]

    return make


@pytest.fixture(scope="module", params=["bigl_test", "vit_test"])
def exported(request, export_folder):
    return export_folder(request.param)


def test_config_yaml_has_every_key_anylabeling_reads(exported):
    name, folder, _ = exported
    config = yaml.safe_load((folder / "config.yaml").read_text())
    assert set(CONFIG_KEYS) <= set(config) and config["type"] == "segment_anything"
    assert (folder / config["encoder_model_path"]).is_file() and (folder / config["decoder_model_path"]).is_file()
    assert name in config["display_name"] and ("keep ratio 0.25" in config["display_name"]) == (name == "bigl_test")
    assert (config["max_height"], config["max_width"]) == CANVAS_HW
    record = json.loads((folder / "export.json").read_text())
    assert record["format"] == "anylabeling" and record["check"]["passed"]
    assert record["keep_ratio"] == ({"fixed": 0.25} if name == "bigl_test" else None)
    check_out(folder)  # an export again to this folder may replace it: config.yaml is an export's file


def test_segment_anything_onnx_gives_sam_predictors_masks(exported):
    name, folder, model = exported
    image = photo_like(PHOTO_SEED)
    runner = sam_onnx.SegmentAnythingONNX(str(folder / "encoder.onnx"), str(folder / "decoder.onnx"), ["cpu"])
    assert runner.encoder_input_rank == 3  # the H x W x 3 RGB input, preprocessing in the graph
    embedding = runner.encode(np.ascontiguousarray(image[..., ::-1]))  # it takes OpenCV's BGR
    reference = SamPredictor(model)
    reference.set_image(image)
    assert np.abs(embedding["image_embedding"] - reference.features.numpy()).max() < 1e-3
    prompts = [  # (prompt, SamPredictor's, multimask): SAM's own ONNX export's choice with return_single_mask
        ([{"type": "point", "data": [140, 120], "label": 1}],
         {"point_coords": np.array([[140.0, 120.0]]), "point_labels": np.array([1])}, True),
        # samexporter adds SAM's padding point (label -1) after a box too; SamPredictor only without one
        ([{"type": "rectangle", "data": [270, 140, 470, 340]}],
         {"box": np.array([270.0, 140.0, 470.0, 340.0]), "point_coords": np.zeros((1, 2)), "point_labels": np.array([-1])},
         False),
    ]
    for prompt, ours, multimask in prompts:
        masks = runner.predict_masks(embedding, prompt)[0] > 0  # one mask: AnyLabeling shows masks[0][0]
        candidates, scores, _ = reference.predict(**ours, multimask_output=multimask)
        expected = candidates[[int(np.argmax(scores))]]  # one click: the best of the three multimask outputs
        assert masks.shape == expected.shape
        assert (masks != expected).mean() < MASK_TOLERANCE, (name, prompt)


class RecordingSession:
    """An onnxruntime session that keeps each run's feeds and outputs."""

    def __init__(self, session) -> None:
        self.session, self.runs = session, []

    def run(self, names, feeds):
        outputs = self.session.run(names, feeds)
        self.runs.append((feeds, outputs))
        return outputs

    def __getattr__(self, name):
        return getattr(self.session, name)


def test_anylabeling_shows_the_best_of_sams_three_masks_for_one_click(export_folder, tmp_path, monkeypatch):
    """AnyLabeling's own `SegmentAnything` model, run headless where its source and PyQt6 are importable
    (docs/labeling.md: the manual check): for one click it shows `masks[0][0]`, which must be the best-scored
    of SAM's three multimask outputs, as SAM's own ONNX export (`return_single_mask`) gives."""
    monkeypatch.setenv("QT_QPA_PLATFORM", "offscreen")
    anylabeling = pytest.importorskip("anylabeling.services.auto_labeling.segment_anything")
    _, folder, model = export_folder("bigl_test")
    config = yaml.safe_load((folder / "config.yaml").read_text())
    labeler = anylabeling.SegmentAnything({**config, "config_file": str(folder / "config.yaml")}, lambda *_: None)
    shown = []
    monkeypatch.setattr(labeler, "post_process", lambda mask, label=None: shown.append(np.array(mask)) or [])
    decoder = labeler.model.decoder_session = RecordingSession(labeler.model.decoder_session)
    Image.fromarray(photo_like(PHOTO_SEED)).save(tmp_path / "photo.png")
    labeler.set_auto_labeling_marks([{"type": "point", "data": [140, 120], "label": 1}])
    labeler.predict_shapes(image=np.zeros(1), filename=str(tmp_path / "photo.png"))  # it reads the file
    assert len(shown) == 1 and shown[0].shape == (375, 500)
    ((feeds, (masks, _, _)),) = decoder.runs
    assert masks.shape[:2] == (1, 1)
    with torch.no_grad():
        every, scores, _ = SamOnnxModel(model, return_single_mask=False)(
            *(torch.from_numpy(feeds[name]) for name in DECODER_INPUTS))
    best = 1 + int(scores[0, 1:].argmax())
    assert ((masks[0, 0] > 0) != (every[0, best].numpy() > 0)).mean() < MASK_TOLERANCE


def test_anylabeling_canvas_input_gives_sam_predictors_embedding(exported):
    """AnyLabeling feeds the photo resized into a 684 x 1024 canvas (zeros beyond it)."""
    _, folder, model = exported
    canvas = np.zeros((*CANVAS_HW, 3), np.uint8)
    canvas[:375 * 2, :1000] = np.asarray(Image.fromarray(photo_like(PHOTO_SEED)).resize((1000, 750)))[: CANVAS_HW[0]]
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


def check(folder, capsys, layout="anylabeling"):
    """`bigl-sam export onnx --format LAYOUT --check --out FOLDER`: its exit code and last line of output."""
    capsys.readouterr()
    code = main(["export", "onnx", "--format", layout, "--check", "--out", str(folder)])
    captured = capsys.readouterr()
    return code, (captured.err if code else captured.out).strip().splitlines()[-1]


def test_check_loads_a_complete_folder(exported, capsys):
    name, folder, _ = exported
    code, line = check(folder, capsys)
    assert code == 0 and line.startswith(f"{folder}: loads as AnyLabeling loads it ({name}"), line


def rewrite_config(folder, drop=(), **changes):
    config = yaml.safe_load((folder / "config.yaml").read_text())
    config.update(changes)
    (folder / "config.yaml").write_text(yaml.safe_dump({k: v for k, v in config.items() if k not in drop}))


def rewrite_record(folder, **changes):
    record = json.loads((folder / "export.json").read_text())
    (folder / "export.json").write_text(json.dumps(dict(record, **changes)))


def flip_a_byte(path):
    """The same size, one byte changed in the middle (a corrupted copy a size check does not see)."""
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def truncate(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def two_input_encoder(path):
    """An encoder of the default format's interface (image 1 x 3 x S x S, keep_ratio): not what AnyLabeling feeds."""
    onnx = pytest.importorskip("onnx")
    image = onnx.helper.make_tensor_value_info("image", onnx.TensorProto.FLOAT, [1, 3, 1024, 1024])
    ratio = onnx.helper.make_tensor_value_info("keep_ratio", onnx.TensorProto.FLOAT, [])
    out = onnx.helper.make_tensor_value_info("image_embeddings", onnx.TensorProto.FLOAT, [1, 3, 1024, 1024])
    graph = onnx.helper.make_graph([onnx.helper.make_node("Identity", ["image"], ["image_embeddings"])], "g",
                                   [image, ratio], [out])
    onnx.save(onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 18)]), path)


INCOMPLETE = {  # name: (what is done to a copy of a good folder, the error line's expected part)
    "no config.yaml": (lambda f: (f / "config.yaml").unlink(), r"config\.yaml: not found; AnyLabeling's"),
    "config not YAML": (lambda f: (f / "config.yaml").write_text("type: [segment_anything\n"), "not readable YAML"),
    "config a list": (lambda f: (f / "config.yaml").write_text("- type\n"), "not a mapping of AnyLabeling's keys"),
    "other type": (lambda f: rewrite_config(f, type="yolov5"), "type is 'yolov5'; AnyLabeling runs this folder only"),
    **{f"no {key}": ((lambda key: lambda f: rewrite_config(f, drop=(key,)))(key),
                     f"config\\.yaml: lacks {key}, which AnyLabeling requires") for key in CONFIG_KEYS},
    "no encoder": (lambda f: (f / "encoder.onnx").unlink(),
                   r"encoder\.onnx: not found \(config\.yaml names it as encoder_model_path\)"),
    "no decoder": (lambda f: (f / "decoder.onnx").unlink(),
                   r"decoder\.onnx: not found \(config\.yaml names it as decoder_model_path\)"),
    "encoder named elsewhere": (lambda f: rewrite_config(f, encoder_model_path="models/encoder.onnx"),
                                r"models/encoder\.onnx: not found \(config\.yaml names it as encoder_model_path"),
    "truncated encoder": (lambda f: truncate(f / "encoder.onnx"), r"encoder\.onnx: not a readable ONNX model"),
    "corrupt decoder": (lambda f: (f / "decoder.onnx").write_bytes(b"not a model"),
                        r"decoder\.onnx: not a readable ONNX model"),
    "default-format encoder": (lambda f: two_input_encoder(f / "encoder.onnx"),
                               r"encoder\.onnx: takes image \[1, 3, 1024, 1024\], keep_ratio \[\]; AnyLabeling feeds one"),
    "decoder swapped for the encoder": (lambda f: shutil.copy(f / "encoder.onnx", f / "decoder.onnx"),
                                        r"decoder\.onnx: not a SAM ONNX decoder"),
    "export.json of another export": (lambda f: rewrite_record(f, export_id="0" * 32),
                                      r"encoder\.onnx: not the file export\.json describes"),
    "a flipped byte in the encoder": (lambda f: flip_a_byte(f / "encoder.onnx"),
                                      r"encoder\.onnx: its sha256 differs from the one export\.json records"),
    "negative input_size": (lambda f: (f / "config.yaml").write_text(
        (f / "config.yaml").read_text().replace("input_size: 1024", "input_size: -100")),
        r"config\.yaml: input_size is -100, expected pixels from 1 to 1024"),
    "display_name not a string": (lambda f: rewrite_config(f, display_name=None),
                                  r"config\.yaml: display_name is None, expected a non-empty string"),
}


def test_check_passes_after_an_edit_of_config_yaml_users_may_make(export_folder, tmp_path, capsys):
    """docs/labeling.md: rename the model in AnyLabeling's list (config.yaml changes size)."""
    folder = tmp_path / "export"
    shutil.copytree(export_folder("vit_test")[1], folder)
    rewrite_config(folder, display_name="My labeling model, tried on the 3rd of May")
    code, line = check(folder, capsys)
    assert code == 0 and "loads as AnyLabeling loads it (My labeling model" in line, line


@pytest.mark.parametrize("case", INCOMPLETE)
def test_an_incomplete_folder_is_one_line_exit_2(case, export_folder, tmp_path, capsys):
    spoil, message = INCOMPLETE[case]
    folder = tmp_path / "export"
    shutil.copytree(export_folder("vit_test")[1], folder)
    spoil(folder)
    code, line = check(folder, capsys)
    assert code == 2 and line.startswith("bigl-sam export: error: "), line
    assert re.search(message, line), line


def test_check_takes_the_folder_alone(tmp_path, capsys):
    for extra, message in [(["--check", "--model", "vit_test", "--keep-ratio", "0.5"],
                            "--check reads the export at --out and exports nothing: leave out --model, --keep-ratio"),
                           ([], "--model is required (or --check, to check an earlier export)"),
                           (["--check"], "export folder not found")]:
        capsys.readouterr()
        assert main(["export", "onnx", "--format", "anylabeling", "--out", str(tmp_path / "none"), *extra]) == 2
        error = capsys.readouterr().err.strip().splitlines()[-1]
        assert error.startswith("bigl-sam export: error: ") and message in error, error


def test_onnx_predictor_refuses_an_anylabeling_folder(export_folder, capsys):
    folder = export_folder("vit_test")[1]
    with pytest.raises(BiglSamError, match="an export for AnyLabeling .*: `bigl-sam export onnx` without --format"):
        OnnxPredictor.from_folder(folder)
    with pytest.raises(BiglSamError, match=r"encoder\.onnx: not a bigl-sam encoder export"):
        OnnxPredictor(folder / "encoder.onnx", folder / "decoder.onnx")
    code, line = check(folder, capsys, layout="bigl-sam")
    assert code == 2 and "an export for AnyLabeling" in line, line
