"""The study's plots from synthetic points, and the `bigl-sam study` steps as the CLI runs them."""

import json

import numpy as np
import pytest
from PIL import Image

from bigl_sam import cli
from bigl_sam.errors import BiglSamError
from bigl_sam.study.curves import lines_of, plot_against_keep_ratio, plot_against_steps, read_points


@pytest.fixture
def study_command(monkeypatch):
    monkeypatch.setitem(cli.COMMANDS, "study", ("bigl_sam.study.cli", "the quality study's steps"))


def coloured_pixels(png):
    with Image.open(png) as image:
        pixels = np.asarray(image.convert("RGB")).astype(int)
    return int((pixels.max(axis=2) - pixels.min(axis=2) > 60).sum())


def test_steps_plot_from_csv(tmp_path):
    points = tmp_path / "steps.csv"
    points.write_text("row,x,miou,low,high\n4,500,60,58,62\n4,0,40,38,42\n5,0,35,33,37\n5,500,45,43,47\n")
    lines = lines_of(read_points(points))
    assert [line.label for line in lines] == ["4", "5"] and lines[0].xs == [0.0, 500.0]
    assert lines[0].intervals == [(38.0, 42.0), (58.0, 62.0)]
    png = plot_against_steps(points, tmp_path / "steps.png")
    with Image.open(png) as image:
        assert image.format == "PNG"
    assert coloured_pixels(png) > 100  # the lines were drawn


def test_keep_ratio_plot_from_json(tmp_path):
    points = tmp_path / "keep.json"
    points.write_text(json.dumps({"points": [{"row": "4", "x": k / 10, "miou": 50 + 4 * k} for k in range(1, 11)]}))
    assert lines_of(read_points(points))[0].intervals is None
    assert coloured_pixels(plot_against_keep_ratio(points, tmp_path / "keep.png")) > 100
    points.write_text(json.dumps([{"row": "4", "x": 1.5, "miou": 50}]))
    with pytest.raises(BiglSamError, match="keep ratio 1.5"):
        plot_against_keep_ratio(points, tmp_path / "keep.png")


@pytest.mark.parametrize("text, message", [
    ("row,x\n4,0\n", "has no miou"),
    ("row,x,miou\n4,0,abc\n", "not a number"),
    ("row,x,miou\n4,0,140\n", r"in \[0, 100\]"),
    ("row,x,miou,low,high\n4,0,40,38,\n", "one end"),
    ("row,x,miou\n", "no points"),
])
def test_bad_points_are_one_line(tmp_path, text, message):
    points = tmp_path / "p.csv"
    points.write_text(text)
    with pytest.raises(BiglSamError, match=message):
        read_points(points)


def test_cli_plot_and_intervals(tmp_path, study_command, capsys):
    points = tmp_path / "steps.csv"
    points.write_text("row,x,miou\n4,0,40\n4,100,50\n")
    assert cli.main(["study", "plot", "steps", str(points), "--out", str(tmp_path / "s.png")]) == 0
    assert (tmp_path / "s.png").exists()
    for name, ious in (("teacher", [0.8, 0.6, 0.9]), ("row", [0.7, 0.6, 0.8])):
        run = tmp_path / name
        run.mkdir()
        record = {"image_id": 1, "instances": [{"id": n, "area": 1.0, "iou": v} for n, v in enumerate(ious)]}
        (run / "part-0.jsonl").write_text(json.dumps(record) + "\n")
    capsys.readouterr()
    out = tmp_path / "intervals.json"
    argv = ["study", "intervals", "--teacher", str(tmp_path / "teacher"), "--row", f"4={tmp_path / 'row'}",
            "--resamples", "200", "--out", str(out)]
    assert cli.main(argv) == 0
    result = json.loads(out.read_text())
    assert result["4"]["miou"]["value"] == pytest.approx(70.0) and result["4"]["instances"] == 3
    assert json.loads(capsys.readouterr().out) == result
    points = tmp_path / "points.csv"
    for x in ("500", "0", "500"):  # the second 500 replaces the first
        assert cli.main(argv + ["--points", str(points), "--x", x]) == 0
    (line,) = lines_of(read_points(points))
    assert line.label == "4" and line.xs == [0.0, 500.0] and line.ys == [pytest.approx(70.0)] * 2
    assert line.intervals == [(result["4"]["miou"]["low"], result["4"]["miou"]["high"])] * 2


def test_cli_errors_are_one_line_exit_2(tmp_path, study_command, capsys):
    assert cli.main(["study", "plot", "steps", str(tmp_path / "missing.csv"), "--out", str(tmp_path / "x.png")]) == 2
    assert cli.main(["study", "intervals", "--teacher", str(tmp_path), "--row", "oops"]) == 2
    assert cli.main(["study", "keep-rate", "--student", "vit_test"]) == 2
    assert cli.main(["study", "intervals", "--teacher", str(tmp_path), "--row", f"a={tmp_path}", "--x", "1"]) == 2
    errors = capsys.readouterr().err.strip().splitlines()
    assert len(errors) == 4 and all(line.startswith("bigl-sam study: error: ") for line in errors)
    assert "go together" in errors[3]
    assert "missing.csv" in errors[0] and "part-" in errors[1] and "not a big.LITTLE student" in errors[2]


def test_cli_keep_rate_matches_the_student(study_command, capsys):
    assert cli.main(["study", "keep-rate", "--student", "bigl_test", "--prune-layers", "0"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["sam"] == "vit_test" and result["prune_layers"] == [0]
    assert result["pruned_gmacs"] <= result["student_gmacs"] < result["sam_gmacs"]
    assert 0 < result["keep_rate"] < 1 and result["input"] == "square"
    assert cli.main(["study", "keep-rate", "--student", "bigl_test", "--prune-layers", "0", "--size", "640x480"]) == 0
    photo = json.loads(capsys.readouterr().out)
    # a padded photo has fewer image tokens: the student's budget, and so the keep rate, is smaller
    assert photo["student_gmacs"] < result["student_gmacs"] and photo["keep_rate"] < result["keep_rate"]
    assert photo["sam_gmacs"] == result["sam_gmacs"] and photo["pruned_gmacs"] <= photo["student_gmacs"]
