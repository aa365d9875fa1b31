"""`bigl-sam export onnx` takes its weights by the rule every command follows, refuses a keep ratio for SAM's
own encoder, and `OnnxPredictor.from_folder` names what it was given. The export itself is replaced by a
recorder here (tests/test_onnx.py runs real exports)."""

import json
import shutil

import pytest
import torch

pytest.importorskip("onnxruntime")

import bigl_sam.onnx.export  # noqa: E402
from bigl_sam.cli import main  # noqa: E402
from bigl_sam.errors import BiglSamError  # noqa: E402
from bigl_sam.onnx import OnnxPredictor  # noqa: E402
from bigl_sam.weights import sha256_of  # noqa: E402


@pytest.fixture
def exports(monkeypatch):
    """What `export_onnx` was called with, instead of exporting."""
    calls = []

    def record(model, out, **kwargs):
        calls.append({"model": model, **kwargs})
        return {"check": {"max_abs_diff": {"encoder": 0.0}}}

    monkeypatch.setattr(bigl_sam.onnx.export, "export_onnx", record)
    return calls


def test_export_without_a_checkpoint_follows_the_weights_rule(exports, student_checkpoint, tmp_path, monkeypatch,
                                                              capsys):
    weights = tmp_path / "weights"
    weights.mkdir()
    shutil.copy(student_checkpoint("bigl_test"), weights / "bigl_test.pth")
    monkeypatch.setenv("BIGL_SAM_WEIGHTS", str(weights))
    assert main(["export", "onnx", "--model", "bigl_test", "--out", str(tmp_path / "out")]) == 0
    (call,) = exports
    assert call["checkpoint"] == {"path": str(weights / "bigl_test.pth"),
                                  "sha256": sha256_of(weights / "bigl_test.pth", progress=False)}
    saved = torch.load(weights / "bigl_test.pth", map_location="cpu", weights_only=True)["model"]
    assert all(torch.equal(call["model"].state_dict()[k], v) for k, v in saved.items())
    captured = capsys.readouterr()
    assert f"bigl_test: weights from {weights / 'bigl_test.pth'}" in captured.err
    assert "random weights" not in captured.out


def test_export_with_nothing_in_the_weights_folder_says_random_weights(exports, tmp_path, capsys):
    assert main(["export", "onnx", "--model", "vit_test", "--out", str(tmp_path / "out")]) == 0
    assert exports[0]["checkpoint"] is None
    captured = capsys.readouterr()
    assert "vit_test: RANDOM WEIGHTS" in captured.err and "untrained random weights" in captured.out


def test_a_keep_ratio_for_sams_own_encoder_is_refused(exports, tmp_path, capsys):
    assert main(["export", "onnx", "--model", "vit_test", "--keep-ratio", "0.5", "--out", str(tmp_path / "out")]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and "--keep-ratio: vit_test is SAM's own encoder" in error[0], error
    assert not exports


def test_from_folder_names_a_file_given_for_the_folder(tmp_path):
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "export.json").write_text(json.dumps({}))
    with pytest.raises(BiglSamError, match=r"x/export\.json: is a file, not an export folder; give the folder that "
                                           r"holds it \(.*x\)"):
        OnnxPredictor.from_folder(tmp_path / "x" / "export.json")
