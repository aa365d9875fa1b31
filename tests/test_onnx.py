"""ONNX deployment: export + check, the encoder's keep-ratio dial in onnxruntime, SAM's decoder interface,
OnnxPredictor against SamPredictor (also with torch blocked from import), and bad input."""

import argparse
import json
import math
import shutil
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

pytest.importorskip("onnxruntime")
import onnx  # noqa: E402
import onnxruntime as ort  # noqa: E402

from bigl_sam import BiglSamError, SamPredictor, build_model, build_student_from_sam, load_sam  # noqa: E402
from bigl_sam.bench import cli as bench_cli  # noqa: E402
from bigl_sam.cli import main  # noqa: E402
from bigl_sam.errors import KeepRatioError, PromptError  # noqa: E402
from bigl_sam.images import PIXEL_MEAN, PIXEL_STD, load_image, sam_input_array  # noqa: E402
from bigl_sam.onnx import OnnxPredictor  # noqa: E402
from bigl_sam.onnx.export import export_encoder, export_onnx  # noqa: E402
from bigl_sam.onnx.interface import EXPORT_ID_KEY, OPSETS  # noqa: E402
from bigl_sam.weights import sha256_of  # noqa: E402

from conftest import SMALL_IMG_SIZE, randomize_, small_test_configs, tie_every_score_  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RATIOS = (0.25, 0.5, 1.0)


@pytest.fixture(scope="module")
def photo(tmp_path_factory) -> Path:
    """A JPEG of odd size with shapes and texture: what users hand the predictor."""
    rng = np.random.default_rng(3)
    pixels = (rng.normal(120, 25, (375, 500, 3)).clip(0, 255)).astype(np.uint8)
    image = Image.fromarray(pixels)
    draw = ImageDraw.Draw(image)
    draw.ellipse((60, 50, 220, 200), fill=(220, 40, 40))
    draw.rectangle((280, 150, 460, 330), fill=(30, 60, 200))
    path = tmp_path_factory.mktemp("photo") / "photo.jpg"
    image.save(path, quality=90)
    return path


@pytest.fixture(scope="module")
def vit_export(tmp_path_factory, official_checkpoint):
    checkpoint = official_checkpoint("vit_test")
    folder = tmp_path_factory.mktemp("vit_export")
    # the newest opset the exporter writes (bigl_export has the default, the oldest)
    args = ["--model", "vit_test", "--checkpoint", str(checkpoint), "--out", str(folder), "--opset", str(OPSETS[-1])]
    assert main(["export", "onnx", *args]) == 0
    return folder, checkpoint


@pytest.fixture(scope="module")
def bigl_export(tmp_path_factory, student_checkpoint):
    checkpoint = student_checkpoint("bigl_test")
    folder = tmp_path_factory.mktemp("bigl_export")
    export_onnx(load_sam(checkpoint), folder, check_ratios=[0.25, 1.0])
    return folder, checkpoint


def test_export_writes_both_files_and_a_passed_check(vit_export):
    folder, checkpoint = vit_export
    record = json.loads((folder / "export.json").read_text())
    assert record["model"] == "vit_test" and record["keep_ratio"] is None and record["opset"] == OPSETS[-1]
    assert [o.version for o in onnx.load(str(folder / "encoder.onnx")).opset_import if o.domain == ""] == [OPSETS[-1]]
    assert sorted(record["files"]) == ["decoder.onnx", "encoder.onnx"]
    assert record["files"]["encoder.onnx"] == {"bytes": (folder / "encoder.onnx").stat().st_size,
                                                 "sha256": sha256_of(folder / "encoder.onnx", progress=False)}
    assert record["checkpoint"] == {"path": str(checkpoint), "sha256": sha256_of(checkpoint, progress=False)}
    assert record["check"]["passed"] and not record["check"]["failures"]
    diffs = record["check"]["max_abs_diff"]
    assert set(diffs) == {"encoder", "decoder:points", "decoder:box", "decoder:points+box", "decoder:mask_input"}
    assert max(diffs.values()) < 1e-3
    assert {"torch", "onnx", "onnxruntime"} <= set(record["versions"])


def test_weights_beside_the_graph_are_moved_into_place_and_pass_the_check(monkeypatch, tmp_path, official_checkpoint):
    """A model over 2 GB (ViT-H, bigl_h_b) is saved as the graph plus its weights in `NAME.onnx.data`; forced
    here on the tiny model, both land in the folder, no temp folder stays, and the check loads them."""
    save = torch.onnx.ONNXProgram.save
    monkeypatch.setattr(
        torch.onnx.ONNXProgram, "save", lambda self, destination, **kwargs: save(self, destination, external_data=True)
    )
    out, checkpoint = tmp_path / "export", official_checkpoint("vit_test")
    assert main(["export", "onnx", "--model", "vit_test", "--checkpoint", str(checkpoint), "--out", str(out)]) == 0
    names = sorted(p.name for p in out.iterdir())
    assert names == ["decoder.onnx", "decoder.onnx.data", "encoder.onnx", "encoder.onnx.data", "export.json"]
    assert (out / "encoder.onnx.data").stat().st_size > (out / "encoder.onnx").stat().st_size
    assert json.loads((out / "export.json").read_text())["check"]["passed"]


def test_decoder_has_sams_onnx_interface(vit_export):
    session = ort.InferenceSession(str(vit_export[0] / "decoder.onnx"))
    inputs = {i.name: i.shape for i in session.get_inputs()}
    assert inputs == {
        "image_embeddings": [1, 256, 64, 64], "point_coords": [1, "num_points", 2],
        "point_labels": [1, "num_points"], "mask_input": [1, 1, 256, 256], "has_mask_input": [1],
        "orig_im_size": [2],
    }
    assert [o.name for o in session.get_outputs()] == ["masks", "iou_predictions", "low_res_masks"]


def encoder_input(photo: Path) -> np.ndarray:
    return sam_input_array(load_image(photo), PIXEL_MEAN, PIXEL_STD, 1024)[0][None]


def test_student_encoder_matches_torch_at_two_ratios_and_all_tokens(bigl_export, photo):
    folder, checkpoint = bigl_export
    model = load_sam(checkpoint)
    session = ort.InferenceSession(str(folder / "encoder.onnx"))
    x = encoder_input(photo)
    outputs = {}
    for ratio in RATIOS:
        outputs[ratio] = session.run(None, {"image": x, "keep_ratio": np.array(ratio, np.float32)})[0]
        with torch.no_grad():
            expected = model.image_encoder(torch.from_numpy(x), keep_ratio=ratio).numpy()
        assert np.abs(outputs[ratio] - expected).max() < 1e-3, ratio
    assert np.abs(outputs[0.25] - outputs[1.0]).max() > 1e-2, "the dial must change the embeddings"


def p_path_token_counts(encoder_path: Path, x: np.ndarray, ratio: float):
    """Runs encoder.onnx with the cut of every router's TopK ranking exposed: how many tokens each P-path
    took."""
    model = onnx.load(str(encoder_path))
    rankings = {node.output[1] for node in model.graph.node if node.op_type == "TopK"}
    cuts = [node.output[0] for node in model.graph.node if node.op_type == "Slice" and node.input[0] in rankings]
    assert len(cuts) == len(rankings)
    model.graph.output.extend(onnx.ValueInfoProto(name=name) for name in cuts)
    session = ort.InferenceSession(model.SerializeToString())
    outputs = session.run(cuts, {"image": x, "keep_ratio": np.array(ratio, np.float32)})
    return [out.shape[-1] for out in outputs]


def test_dial_sets_the_number_of_tokens_the_p_path_runs_on(bigl_export, photo):
    x = encoder_input(photo)  # 375 x 500 -> 768 x 1024 pixels: 48 x 64 image tokens, the rest padding
    for ratio in RATIOS:
        counts = p_path_token_counts(bigl_export[0] / "encoder.onnx", x, ratio)
        expected = 64 * 64 if ratio == 1.0 else math.ceil(ratio * 48 * 64)  # 1.0: every token, as in PyTorch
        assert counts == [expected] * 2, (ratio, counts)  # bigl_test has two layers


@pytest.fixture(scope="module")
def tied_export(tmp_path_factory):
    """A 256 px bigl_test whose router scores all tie (`tie_every_score_`), exported -> (model, its path)."""
    model = tie_every_score_(randomize_(build_model(small_test_configs()[1]), seed=2)).eval()
    path = tmp_path_factory.mktemp("tied_export") / "encoder.onnx"
    export_encoder(model.image_encoder, path)
    return model, path


@pytest.mark.parametrize("image", ["flat", "zeros"])
def test_tied_scores_and_all_zero_images_match_torch_at_every_ratio(tied_export, image):
    """Among equal router scores ONNX TopK takes the lower index first, and so must PyTorch (torch.topk did
    not, and a flat image's embeddings differed). An all-zero image is the whole square in the graph too."""
    model, path = tied_export
    side = SMALL_IMG_SIZE // 16
    if image == "flat":
        mean, std = model.pixel_mean.flatten().tolist(), model.pixel_std.flatten().tolist()
        x = sam_input_array(np.full((480, 640, 3), 128, np.uint8), mean, std, SMALL_IMG_SIZE)[0][None]
    else:
        x = np.zeros((1, 3, SMALL_IMG_SIZE, SMALL_IMG_SIZE), np.float32)
    session = ort.InferenceSession(str(path))
    for ratio in RATIOS:
        got = session.run(None, {"image": x, "keep_ratio": np.array(ratio, np.float32)})[0]
        with torch.no_grad():
            expected = model.image_encoder(torch.from_numpy(x), keep_ratio=ratio).numpy()
        assert np.abs(got - expected).max() < 1e-3, ratio
    if image == "zeros":
        assert p_path_token_counts(path, x, 0.25) == [math.ceil(0.25 * side * side)] * 2


def test_student_at_keep_one_is_sam_exported_the_same_way(vit_export, tmp_path, photo):
    folder, sam_checkpoint = vit_export
    student = build_student_from_sam("bigl_test", encoder_weights=sam_checkpoint)
    export_encoder(student.image_encoder, tmp_path / "encoder.onnx")
    x = encoder_input(photo)
    sam = ort.InferenceSession(str(folder / "encoder.onnx")).run(None, {"image": x})[0]
    keep_all = np.array(1.0, np.float32)
    ours = ort.InferenceSession(str(tmp_path / "encoder.onnx")).run(None, {"image": x, "keep_ratio": keep_all})[0]
    assert np.abs(ours - sam).max() < 1e-4


def softmax_count(path: Path) -> int:
    return sum(node.op_type == "Softmax" for node in onnx.load(str(path)).graph.node)


def test_global_layers_chunk_a_data_dependent_query_count(monkeypatch, tmp_path, bigl_export, photo):
    """At real size a global layer's bias is cut into chunks (here 8, from a lower bias bound: 512 of
    bigl_test's up to 4096 queries per chunk), each one attention call of the graph."""
    import bigl_sam.modeling.attention as attention

    monkeypatch.setattr(attention, "MAX_BIAS_ELEMENTS", 1 << 22)
    encoder = load_sam(bigl_export[1]).image_encoder
    export_encoder(encoder, tmp_path / "encoder.onnx")
    # bigl_test has one global layer: one attention call became 8
    assert softmax_count(tmp_path / "encoder.onnx") == softmax_count(bigl_export[0] / "encoder.onnx") + 7
    session = ort.InferenceSession(str(tmp_path / "encoder.onnx"))
    x = encoder_input(photo)
    for ratio in (0.25, 1.0):
        got = session.run(None, {"image": x, "keep_ratio": np.array(ratio, np.float32)})[0]
        with torch.no_grad():
            expected = encoder(torch.from_numpy(x), keep_ratio=ratio).numpy()
        assert np.abs(got - expected).max() < 1e-3, ratio


PROMPTS = {
    "points": dict(point_coords=np.array([[140.0, 125.0], [400.0, 60.0]]), point_labels=np.array([1, 0])),
    "box": dict(box=np.array([270.0, 140.0, 470.0, 340.0])),
    "points+box": dict(point_coords=np.array([[370.0, 240.0]]), point_labels=np.array([1]),
                       box=np.array([270.0, 140.0, 470.0, 340.0])),
}


def assert_same_prediction(ours, theirs):
    masks, scores, low_res = ours
    expected_masks, expected_scores, expected_low_res = theirs
    assert masks.shape == expected_masks.shape and masks.dtype == expected_masks.dtype
    assert (masks != expected_masks).mean() < 1e-3
    assert np.abs(scores - expected_scores).max() < 1e-3
    assert np.abs(low_res - expected_low_res).max() < 1e-2


def test_onnx_predictor_gives_sam_predictors_masks(bigl_export, photo):
    folder, checkpoint = bigl_export
    model = load_sam(checkpoint)
    model.image_encoder.keep_ratio = 0.25
    image = load_image(photo)
    reference = SamPredictor(model)
    reference.set_image(image)
    predictor = OnnxPredictor.from_folder(folder)
    assert predictor.keep_ratio == 0.25  # the model's default, stored in encoder.onnx
    predictor.set_image(image)
    assert predictor.original_size == reference.original_size and predictor.input_size == reference.input_size
    for kind, prompt in PROMPTS.items():
        for multimask in (True, False):
            ours = predictor.predict(**prompt, multimask_output=multimask)
            assert_same_prediction(ours, reference.predict(**prompt, multimask_output=multimask))
    previous = reference.predict(**PROMPTS["points"], multimask_output=False)[2]
    ours = predictor.predict(**PROMPTS["points"], mask_input=previous, multimask_output=False)
    assert_same_prediction(ours, reference.predict(**PROMPTS["points"], mask_input=previous, multimask_output=False))


NO_TORCH = """
import sys

class NoTorch:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "torchvision", "segment_anything"):
            raise ImportError(f"{name} is blocked in this test")

sys.meta_path.insert(0, NoTorch())
"""


def test_onnx_predictor_runs_without_torch(bigl_export, photo, tmp_path):
    folder, checkpoint = bigl_export
    script = NO_TORCH + textwrap.dedent(f"""
        import numpy as np
        from bigl_sam.images import load_image
        from bigl_sam.onnx import OnnxPredictor

        predictor = OnnxPredictor.from_folder({str(folder)!r}, keep_ratio=0.5)
        predictor.set_image(np.ascontiguousarray(load_image({str(photo)!r})[..., ::-1]), image_format="BGR")
        masks, scores, low_res = predictor.predict(box=np.array([270.0, 140.0, 470.0, 340.0]))
        assert "torch" not in sys.modules
        np.savez({str(tmp_path / "out.npz")!r}, masks=masks, scores=scores, low_res=low_res)
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    out = np.load(tmp_path / "out.npz")
    model = load_sam(checkpoint)
    model.image_encoder.keep_ratio = 0.5
    reference = SamPredictor(model)
    reference.set_image(load_image(photo))
    assert_same_prediction((out["masks"], out["scores"], out["low_res"]), reference.predict(box=PROMPTS["box"]["box"]))


def test_missing_and_corrupt_onnx_files_are_one_line_each(vit_export, tmp_path):
    folder = vit_export[0]
    with pytest.raises(BiglSamError, match=r"nope\.onnx: ONNX file not found"):
        OnnxPredictor(tmp_path / "nope.onnx", folder / "decoder.onnx")
    corrupt = tmp_path / "encoder.onnx"
    corrupt.write_bytes((folder / "encoder.onnx").read_bytes()[:5000])
    with pytest.raises(BiglSamError, match=r"encoder\.onnx: not a readable ONNX model") as err:
        OnnxPredictor(corrupt, folder / "decoder.onnx")
    assert "\n" not in str(err.value)
    with pytest.raises(BiglSamError, match="not a SAM ONNX decoder"):
        OnnxPredictor(folder / "encoder.onnx", folder / "encoder.onnx")


def test_wrong_image_and_keep_ratio_are_one_line_each(vit_export, bigl_export):
    predictor = OnnxPredictor.from_folder(bigl_export[0])
    with pytest.raises(BiglSamError, match=r"image must be an H x W x 3 uint8 array, got shape \(40, 50\)"):
        predictor.set_image(np.zeros((40, 50), np.uint8))
    with pytest.raises(BiglSamError, match="got shape .40, 50, 4."):
        predictor.set_image(np.zeros((40, 50, 4), np.uint8))
    for bad in (0.0, 1.5, -0.2, float("nan"), True, "0.5"):  # a bool or a string is no ratio (True ran as 1.0)
        with pytest.raises(KeepRatioError, match=r"keep ratio must be in \(0, 1\]"):
            predictor.keep_ratio = bad
    predictor.keep_ratio = np.float32(0.5)  # numpy scalars are numbers
    assert predictor.keep_ratio == 0.5 and type(predictor.keep_ratio) is float
    with pytest.raises(BiglSamError, match="no image set"):
        predictor.predict(point_coords=np.array([[1.0, 2.0]]), point_labels=np.array([1]))
    with pytest.raises(BiglSamError, match="has no keep-ratio input"):
        OnnxPredictor.from_folder(vit_export[0], keep_ratio=0.5)


def test_cli_rejects_a_keep_ratio_outside_the_range_in_one_line(tmp_path, capsys):
    assert main(["export", "onnx", "--model", "bigl_test", "--out", str(tmp_path), "--keep-ratio", "0.25,1.5"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "bigl-sam export: error: --keep-ratio must be in (0, 1], got 1.5 (float)"
    assert not (tmp_path / "encoder.onnx").exists()


@pytest.mark.slow
def test_real_size_student_exports_and_passes_the_check(tmp_path):
    from bigl_sam import build_model
    from bigl_sam.modeling import get_config

    from conftest import randomize_

    record = export_onnx(randomize_(build_model(get_config("bigl_b_t")), 0), tmp_path, check_ratios=[0.25])
    assert record["check"]["passed"], record["check"]
    assert record["check"]["max_abs_diff"]["encoder@0.25"] < 1e-3


def test_bench_times_onnxruntime_and_int8_in_the_same_rounds(tmp_path, capsys):
    out = tmp_path / "bench.json"
    args = ["bench", "--models", "vit_test,bigl_test", "--keep-ratio", "0.25,1.0", "--size", "640x480",
            "--backend", "torch,onnxruntime", "--quantize", "int8", "--runs", "2", "--clicks", "0", "--json", str(out)]
    assert main(args) == 0
    table = capsys.readouterr().out
    assert "| bigl_test @0.25 [onnxruntime int8] | 640x480 |" in table and "int8 max abs diff |" in table
    report = json.loads(out.read_text())
    assert report["settings"]["backends"] == ["torch", "onnxruntime"] and report["settings"]["onnxruntime"]
    rows = {(r["model_type"], r["keep_ratio"], r["backend"]): r for r in report["rows"]}
    assert len(rows) == 9  # (vit_test, bigl_test @0.25, @1) x (torch, onnxruntime, onnxruntime int8)
    assert all(len(r["latencies_ms"]) == 2 and r["latency_ms"] > 0 for r in rows.values())
    torch_row, float32, int8 = (rows["bigl_test", 0.25, b] for b in ("torch", "onnxruntime", "onnxruntime int8"))
    # Same routing; the graph skips the crop of windowed keys and values, so it may count a few more MACs.
    assert torch_row["gmacs"] <= float32["gmacs"] < rows["bigl_test", 1.0, "onnxruntime"]["gmacs"]
    assert float32["max_abs_diff"] is None and 0 < int8["max_abs_diff"] < 10
    # ratios compare rows of the same backend
    assert float32["vs_sam_latency"] == float32["latency_ms"] / rows["vit_test", None, "onnxruntime"]["latency_ms"]
    assert int8["vs_dense_latency"] == int8["latency_ms"] / rows["bigl_test", 1.0, "onnxruntime int8"]["latency_ms"]


@pytest.mark.parametrize("extra, message", [
    (["--quantize", "int8"], "add --backend onnxruntime"),
    (["--backend", "torch,tensorrt"], "--backend must be a comma-separated choice of torch, onnxruntime"),
    (["--backend", "onnxruntime", "--batch", "2"], "times batch 1"),
    (["--backend", "onnxruntime", "--dtype", "bfloat16"], "runs the float32 export"),
    (["--models", "vit_test,mobilesam", "--backend", "onnxruntime"], "peers (mobilesam) are timed in PyTorch only"),
    (["--backend", "onnxruntime", "--compile"], "--compile compiles the PyTorch encoders"),
])
def test_bench_backend_arguments_are_one_line_each(capsys, extra, message):
    assert main(["bench", "--models", "bigl_test", "--clicks", "0", *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err


def test_bench_says_peers_get_torch_rows_only_beside_onnxruntime(capsys):
    parser = argparse.ArgumentParser()
    bench_cli.add_arguments(parser)
    args = parser.parse_args(["--models", "bigl_test,mobilesam", "--backend", "torch,onnxruntime", "--compile"])
    assert bench_cli.backends(args) == ["torch", "onnxruntime"]
    out = capsys.readouterr().out.strip()
    assert out == "note: the peers (mobilesam) have no onnxruntime rows; they are timed in PyTorch only"


def test_missing_onnx_extra_is_one_line_for_export_and_bench(monkeypatch, tmp_path, capsys):
    import importlib.util

    find_spec = importlib.util.find_spec
    hidden = lambda name, *args: None if name == "onnxscript" else find_spec(name, *args)  # noqa: E731
    monkeypatch.setattr(importlib.util, "find_spec", hidden)
    assert main(["export", "onnx", "--model", "vit_test", "--out", str(tmp_path)]) == 2
    assert main(["bench", "--models", "vit_test", "--backend", "onnxruntime", "--clicks", "0"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    expected = 'needs the onnx extra (missing onnxscript): pip install -e ".[onnx]"'
    assert len(lines) == 2 and all(expected in line for line in lines)
    assert not (tmp_path / "encoder.onnx").exists()


def folder_bytes(folder: Path) -> dict:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def copy_export_files(monkeypatch, sources):
    """Replaces the two ONNX exports by copies of fixture files, stamped with the new export id: `sources`
    maps id(model) to the export folder its files come from. The folder handling and the check stay real."""
    import bigl_sam.onnx.export as export

    def stamped(source: Path, path: Path, export_id: str) -> None:
        model = onnx.load(str(source))
        for prop in model.metadata_props:
            if prop.key == EXPORT_ID_KEY:
                prop.value = export_id
        onnx.save(model, str(path))

    monkeypatch.setattr(export, "export_encoder", lambda encoder, path, opset, export_id: stamped(
        sources[id(encoder)] / "encoder.onnx", path, export_id))
    monkeypatch.setattr(export, "export_decoder", lambda model, path, opset, export_id: stamped(
        sources[id(model)] / "decoder.onnx", path, export_id))


def test_an_interrupted_export_leaves_the_previous_export_whole(monkeypatch, tmp_path, vit_export, bigl_export):
    import bigl_sam.onnx.export as export

    out = tmp_path / "out"
    shutil.copytree(vit_export[0], out)
    before = folder_bytes(out)
    student = load_sam(bigl_export[1])
    copy_export_files(monkeypatch, {id(student.image_encoder): bigl_export[0]})

    def killed(*args):  # the new encoder.onnx is written, then the user presses Ctrl-C
        raise KeyboardInterrupt

    monkeypatch.setattr(export, "export_decoder", killed)
    with pytest.raises(KeyboardInterrupt):
        export_onnx(student, out)
    assert folder_bytes(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == [".out.lock", "out"]
    assert not OnnxPredictor.from_folder(out).has_keep_ratio  # still the complete SAM export


def test_a_failed_check_leaves_the_previous_export_and_keeps_the_new_files_apart(monkeypatch, tmp_path, vit_export,
                                                                                   bigl_export):
    import bigl_sam.onnx.export as export

    out = tmp_path / "out"
    shutil.copytree(vit_export[0], out)
    before = folder_bytes(out)
    student = load_sam(bigl_export[1])
    copy_export_files(monkeypatch, {id(student.image_encoder): bigl_export[0], id(student): bigl_export[0]})
    failed = {"passed": False, "failures": ["encoder@0.25: embeddings differ by 0.5 (tolerance 0.001)"]}
    monkeypatch.setattr(export, "check_export", lambda *args: failed)
    with pytest.raises(BiglSamError, match=f"differ by 0.5 .*{out} is unchanged; the new files are in {out}.failed"):
        export_onnx(student, out)
    assert folder_bytes(out) == before
    assert sorted(p.name for p in (tmp_path / "out.failed").iterdir()) == ["decoder.onnx", "encoder.onnx", "export.json"]


def test_two_exports_to_one_folder_at_once_both_land_whole(monkeypatch, tmp_path, vit_export, bigl_export):
    """The second waits for the first instead of checking the first one's half-written files."""
    import bigl_sam.onnx.export as export

    out, started, waiting = tmp_path / "out", threading.Event(), threading.Event()
    sam, student = load_sam(vit_export[1]), load_sam(bigl_export[1])
    copy_export_files(monkeypatch, {id(sam.image_encoder): vit_export[0], id(sam): vit_export[0],
                                    id(student.image_encoder): bigl_export[0], id(student): bigl_export[0]})
    copy_encoder = export.export_encoder

    def slow_encoder(encoder, path, opset, export_id):
        if encoder is sam.image_encoder:  # the first export holds the folder's lock here
            started.set()
            waiting.wait(60)
        copy_encoder(encoder, path, opset, export_id)

    monkeypatch.setattr(export, "export_encoder", slow_encoder)
    first = []
    thread = threading.Thread(target=lambda: first.append(export_onnx(sam, out)))
    thread.start()
    assert started.wait(60)
    second = export_onnx(student, out, waiting=waiting.set)
    thread.join()
    assert waiting.is_set() and first[0]["check"]["passed"] and second["check"]["passed"]
    assert json.loads((out / "export.json").read_text())["export_id"] == second["export_id"]
    assert OnnxPredictor.from_folder(out).has_keep_ratio  # the student's complete export, the last one in


def test_from_folder_refuses_files_that_export_json_does_not_describe(tmp_path, vit_export, bigl_export):
    sam_folder, student_folder = vit_export[0], bigl_export[0]

    def mixed(name: str, **files) -> Path:
        folder = tmp_path / name
        shutil.copytree(student_folder, folder)
        for file, source in files.items():
            shutil.copy(source / file, folder / file)
        return folder

    cases = {
        "sam_encoder": (dict(**{"encoder.onnx": sam_folder}), r"encoder\.onnx: \d+ bytes, export\.json records"),
        "sam_decoder": (dict(**{"decoder.onnx": sam_folder}), r"decoder\.onnx: \d+ bytes, export\.json records"),
        "sam_record": (dict(**{"export.json": sam_folder}), r"\.onnx: \d+ bytes, export\.json records"),
    }
    for name, (files, message) in cases.items():
        with pytest.raises(BiglSamError, match=message) as err:
            OnnxPredictor.from_folder(mixed(name, **files))
        assert "\n" not in str(err.value)
    # A decoder of the same size (one model exported twice has them): the export ids tell them apart.
    same_size = mixed("same_size", **{"decoder.onnx": sam_folder})
    record = json.loads((same_size / "export.json").read_text())
    record["files"]["decoder.onnx"]["bytes"] = (same_size / "decoder.onnx").stat().st_size
    (same_size / "export.json").write_text(json.dumps(record))
    with pytest.raises(BiglSamError, match="come from two different exports"):
        OnnxPredictor.from_folder(same_size)
    with pytest.raises(BiglSamError, match="come from two different exports"):
        OnnxPredictor(student_folder / "encoder.onnx", sam_folder / "decoder.onnx")
    stale = mixed("stale")
    record = json.loads((stale / "export.json").read_text())
    (stale / "export.json").write_text(json.dumps(dict(record, keep_ratio=None)))
    with pytest.raises(BiglSamError, match="describes an encoder without a keep-ratio input, unlike"):
        OnnxPredictor.from_folder(stale)
    record["export_id"] = "0" * 32
    (stale / "export.json").write_text(json.dumps(record))
    with pytest.raises(BiglSamError, match=r"encoder\.onnx: not the file export\.json describes"):
        OnnxPredictor.from_folder(stale)
    del record["files"]
    (stale / "export.json").write_text(json.dumps(record))
    with pytest.raises(BiglSamError, match="does not list encoder.onnx and decoder.onnx with their sizes"):
        OnnxPredictor.from_folder(stale)
    (stale / "export.json").unlink()
    with pytest.raises(BiglSamError, match=r"export\.json: not found"):
        OnnxPredictor.from_folder(stale)


def test_an_encoder_of_another_embedding_shape_is_refused(tmp_path, vit_export):
    """SAM-family encoders all give 1 x 256 x 64 x 64; a model of another shape cannot feed the decoder."""
    image = onnx.helper.make_tensor_value_info("image", onnx.TensorProto.FLOAT, [1, 3, 1024, 1024])
    out = onnx.helper.make_tensor_value_info("image_embeddings", onnx.TensorProto.FLOAT, [1, 256, 32, 32])
    pool = onnx.helper.make_node("AveragePool", ["image"], ["pooled"], kernel_shape=[32, 32], strides=[32, 32])
    project = onnx.helper.make_node("Conv", ["pooled", "weight"], ["image_embeddings"])
    weight = onnx.numpy_helper.from_array(np.ones((256, 3, 1, 1), np.float32), "weight")
    graph = onnx.helper.make_graph([pool, project], "small", [image], [out], [weight])
    onnx.save(onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 18)]), tmp_path / "e.onnx")
    with pytest.raises(BiglSamError, match=r"gives image_embeddings of shape \[1, 256, 32, 32\], .* takes \[1, 256, 64"):
        OnnxPredictor(tmp_path / "e.onnx", vit_export[0] / "decoder.onnx")


@pytest.mark.parametrize("opset", ["0", "5", "17", "24", "99"])
def test_cli_refuses_an_opset_the_exporter_cannot_write(tmp_path, capsys, opset):
    assert main(["export", "onnx", "--model", "vit_test", "--out", str(tmp_path / "x"), "--opset", opset]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"bigl-sam export: error: --opset must be 18 to 23 (the opsets torch's exporter writes these " \
                  f"models at, and onnxruntime runs), got {opset}"
    assert list(tmp_path.iterdir()) == []


def test_cli_refuses_an_out_that_is_a_file_or_holds_other_files(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("mine")
    assert main(["export", "onnx", "--model", "vit_test", "--out", str(tmp_path / "notes.txt")]) == 2
    assert main(["export", "onnx", "--model", "vit_test", "--out", str(tmp_path)]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[0] == f"bigl-sam export: error: {tmp_path / 'notes.txt'}: is a file; give a folder for the export " \
                       f"(new, empty, or an earlier export)"
    assert lines[1].startswith(f"bigl-sam export: error: {tmp_path}: holds 1 file(s) of no export (e.g. notes.txt)")
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"] and (tmp_path / "notes.txt").read_text() == "mine"


BAD_PROMPTS = [
    (dict(point_coords=[[10.0, float("nan")]], point_labels=[1]), "point_coords must be finite, got 1 NaN"),
    (dict(point_coords=[[10.0, float("inf")]], point_labels=[1]), "point_coords must be finite"),
    (dict(box=[10.0, 20.0, float("nan"), 90.0]), "box must be finite"),
    (dict(box=[10.0, 20.0, 30.0]), r"box must be 4 numbers \(x0, y0, x1, y1\), got shape \(3,\)"),
    (dict(point_coords=[[10.0, 20.0]], point_labels=[7]), r"point_labels must be -1, 0, 1, 2, 3 .*got \[7.0\]"),
    (dict(point_coords=[[10.0, 20.0]], point_labels=[0.5]), r"point_labels must be -1, 0, 1, 2, 3"),
    (dict(point_coords=np.zeros((0, 2)), point_labels=np.zeros(0)), "needs at least one point .* or a box"),
    (dict(), "needs at least one point"),
    (dict(point_coords=[["a", "b"]], point_labels=[1]), "point_coords must be numbers, got <U1 values"),
    (dict(point_coords=[[1.0, 2.0], [3.0]], point_labels=[1, 1]), "point_coords must be an array of numbers"),
    (dict(point_coords=[[1.0, 2.0, 3.0]], point_labels=[1]), r"point_coords must be N x 2 and point_labels N"),
    (dict(point_coords=[[1.0, 2.0]], point_labels=[1, 0]), r"got \(1, 2\) and \(2,\)"),
    (dict(point_labels=[1]), "point_coords and point_labels must be given together"),
    (dict(box=[1.0, 2.0, 30.0, 40.0], mask_input=np.full((1, 256, 256), np.nan)), "mask_input must be finite"),
    (dict(box=[1.0, 2.0, 30.0, 40.0], mask_input=np.zeros((256, 256))), r"mask_input must be 1 x 256 x 256"),
]


def test_bad_prompts_are_one_prompt_error_line_each(vit_export):
    predictor = OnnxPredictor.from_folder(vit_export[0])
    predictor.set_image(np.full((60, 80, 3), 128, np.uint8))
    for prompt, message in BAD_PROMPTS:
        with pytest.raises(PromptError, match=message) as err:
            predictor.predict(**prompt)
        assert "\n" not in str(err.value), prompt
    for prompt in (dict(point_coords=np.zeros((0, 2)), point_labels=np.zeros(0), box=[1, 2, 30, 40]),
                   dict(point_coords=[[5, 6], [1, 2], [30, 40]], point_labels=[1, 2, 3])):  # SAM's ONNX labels
        masks, scores, _ = predictor.predict(**prompt)
        assert masks.shape == (3, 60, 80) and np.isfinite(scores).all()


def test_set_image_takes_the_aspect_ratios_load_image_takes(vit_export):
    """One rule (`images.check_size`): 1:64 at most, for a file and for an array alike."""
    predictor = OnnxPredictor.from_folder(vit_export[0])
    with pytest.raises(BiglSamError, match=r"image: 650 x 10 pixels, too thin for SAM \(aspect ratio limit 1:64\)"):
        predictor.set_image(np.zeros((10, 650, 3), np.uint8))
    predictor.set_image(np.zeros((10, 640, 3), np.uint8))
    assert predictor.input_size == (16, 1024)


def test_onnx_predictor_set_from_a_stored_embedding_predicts_as_after_set_image(bigl_export, photo, tmp_path):
    from bigl_sam.embeddings import EmbeddingError, save_embedding, set_embedding

    folder, _ = bigl_export
    reference = OnnxPredictor.from_folder(folder)
    reference.set_image(load_image(photo))
    record = {"image": photo.name, "original_size": list(reference.original_size),
              "input_size": list(reference.input_size), "model_type": "bigl_test", "keep_ratio": reference.keep_ratio}
    path = save_embedding(tmp_path, photo.name, reference.features, record)
    predictor = OnnxPredictor.from_folder(folder)
    set_embedding(predictor, path, model_type="bigl_test")
    for prompt in PROMPTS.values():
        for ours, theirs in zip(predictor.predict(**prompt), reference.predict(**prompt)):
            assert np.array_equal(ours, theirs)
    with pytest.raises(EmbeddingError, match="computed at keep ratio 0.25, this predictor runs at 1.0"):
        set_embedding(OnnxPredictor.from_folder(folder, keep_ratio=1.0), path)
    with pytest.raises(EmbeddingError, match="is an embedding of bigl_test, this predictor runs bigl_b_t"):
        set_embedding(predictor, path, model_type="bigl_b_t")
