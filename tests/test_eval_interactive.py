"""`bigl-sam eval interactive` on generated mask folders (binary, GrabCut-style ignore band, palette) with a
tiny random SAM: the mask reader, the report and plot, resume, torchrun, and bad input."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bigl_sam.cli import main
from bigl_sam.evaluation.masks import MaskFolders
from conftest import as_ranks
from eval_coco_data import make_coco_dataset, make_mask_folders

CLICKS = "3"


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    return make_mask_folders(tmp_path_factory.mktemp("interactive"))


@pytest.fixture(scope="module")
def model(official_checkpoint):
    return ["--model", "vit_test", "--checkpoint", str(official_checkpoint("vit_test"))]


def interactive_args(folders, model, out=None, *extra):
    args = ["eval", "interactive", "--images", str(folders["images"]), "--masks", str(folders["masks"]), *model,
            "--max-clicks", CLICKS, "--ignore-value", "128"]
    return args + (["--out", str(out)] if out else []) + list(extra)


def run(capsys, args):
    code = main(args)
    out, err = capsys.readouterr()
    return code, out, err


def test_palette_masks_give_one_object_per_id_or_one_union(folders):
    each = MaskFolders(folders["images"], folders["masks"], ignore_value=128)
    assert each.stems == ["binary", "grabcut", "palette"]
    assert [len(each.objects(i)) for i in each.image_ids()] == [1, 1, 3]
    assert [o.object_id for o in each.objects(2)] == [1, 2, 3]
    union = MaskFolders(folders["images"], folders["masks"], ignore_value=128, union=True)
    assert [len(union.objects(i)) for i in union.image_ids()] == [1, 1, 1]
    assert union.objects(2)[0].mask.sum() == sum(o.mask.sum() for o in each.objects(2))


def test_grabcut_band_is_ignored_not_object(folders):
    (obj,) = MaskFolders(folders["images"], folders["masks"], ignore_value=128).objects(1)
    assert np.array_equal(obj.ignore, folders["band"])
    assert np.array_equal(obj.mask, folders["blob"] & ~folders["band"])
    (counted_as_object,) = MaskFolders(folders["images"], folders["masks"]).objects(1)[1:]  # no --ignore-value
    assert counted_as_object.object_id == 255


@pytest.fixture(scope="module")
def first_run(folders, model, tmp_path_factory):
    out = tmp_path_factory.mktemp("interactive-out")
    assert main(interactive_args(folders, model, out)) == 0
    return out, json.loads((out / "results.json").read_text())


def test_report_has_noc_nof_curve_and_plot(first_run):
    out, report = first_run
    (model,) = report["models"]
    assert model["objects"] == 5 and model["images"] == 3
    assert len(model["miou_per_click"]) == 3 and all(0 <= v <= 100 for v in model["miou_per_click"])
    assert 1 <= model["noc"]["85"] <= 3 and 0 <= model["nof"]["90"] <= 5
    assert set(model["time_split"]["parts"]) == {"load", "encoder", "decoder", "scoring"}
    assert report["protocol"]["max_clicks"] == 3 and report["protocol"]["click_rule"]["correction"] == "distance"
    assert report["arguments"]["max_clicks"] == 3 and report["arguments"]["select"] == "argmax"
    assert report["dataset"]["preset"] is None and report["plot"] == str(out / "iou_per_click.png")
    with Image.open(out / "iou_per_click.png") as plot:
        assert plot.format == "PNG" and plot.size[0] > 300


def test_rerun_says_what_is_done_and_encodes_nothing(first_run, folders, model, tmp_path, capsys, monkeypatch):
    out = tmp_path / "out"
    shutil.copytree(first_run[0], out)
    from bigl_sam.evaluation import runner
    calls = []
    monkeypatch.setattr(runner.SamPredictor, "set_image", lambda self, image: calls.append(image.shape))
    code, stdout, err = run(capsys, interactive_args(folders, model, out))
    assert code == 0 and calls == []
    assert "3 of 3 images already done" in err
    assert json.loads((out / "results.json").read_text())["models"][0]["noc"] == first_run[1]["models"][0]["noc"]


def test_coco_json_is_a_source_too(model, tmp_path, capsys):
    data = make_coco_dataset(tmp_path / "coco")
    args = ["eval", "interactive", "--images", str(data["images"]), "--annotations", str(data["annotations"]),
            *model, "--max-clicks", "2", "--max-images", "1"]
    code, stdout, _ = run(capsys, args)
    assert code == 0 and "| vit_test |" in stdout


def break_folders(folders, tmp_path, how):
    root = tmp_path / "broken"
    shutil.copytree(folders["images"], root / "images")
    shutil.copytree(folders["masks"], root / "masks")
    how(root)
    return {"images": root / "images", "masks": root / "masks"}


@pytest.mark.parametrize(
    "how, message",
    [
        (lambda r: (r / "masks" / "palette.png").unlink(), "no mask for 1 image(s)"),
        (lambda r: shutil.copy(r / "masks" / "binary.png", r / "masks" / "extra.png"), "1 mask(s) without an image"),
        (lambda r: Image.new("L", (20, 20)).save(r / "masks" / "binary.png"), "mask is 20x20 (HxW), its image binary.jpg is 40x56"),
        (lambda r: Image.new("L", (56, 40)).save(r / "masks" / "binary.png"), "empty mask"),
        (lambda r: Image.new("L", (56, 40), 128).save(r / "masks" / "binary.png"), "empty mask"),
        (lambda r: (r / "images" / "binary.jpg").rename(r / "images" / "binary.jp2"),
         "e.g. binary.png (masks are matched by file stem; images are .jpg, .jpeg, .png, .bmp, .tif, .tiff, .webp, .gif)"),
    ],
    ids=["missing", "extra", "size", "empty", "only-ignored", "image-suffix"],
)
def test_bad_mask_folders_are_one_line_and_lose_nothing(first_run, folders, model, tmp_path, capsys, how, message):
    out = tmp_path / "out"
    shutil.copytree(first_run[0], out)
    before = sorted((p.relative_to(out), p.read_bytes()) for p in out.rglob("*") if p.is_file())
    code, stdout, err = run(capsys, interactive_args(break_folders(folders, tmp_path, how), model, out))
    errors = [line for line in err.splitlines() if "error:" in line]
    assert code == 2 and stdout == "" and len(errors) == 1 and message in errors[0]
    assert sorted((p.relative_to(out), p.read_bytes()) for p in out.rglob("*") if p.is_file()) == before


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--max-clicks", "0"], "--max-clicks must be at least 1"),
        (["--ignore-value", "300"], "--ignore-value must be a value of an 8-bit mask in 1..255 (0 is the background), got 300"),
        (["--ignore-value", "-1"], "--ignore-value must be a value of an 8-bit mask in 1..255 (0 is the background), got -1"),
        (["--ignore-value", "0"], "--ignore-value must be a value of an 8-bit mask in 1..255 (0 is the background), got 0"),
    ],
)
def test_bad_arguments_are_one_line(folders, model, capsys, extra, message):
    code, stdout, err = run(capsys, interactive_args(folders, model) + extra)
    errors = [line for line in err.splitlines() if "error:" in line]
    assert code == 2 and stdout == "" and len(errors) == 1 and message in errors[0]


@pytest.mark.parametrize("extra", [["--ignore-value", "128"], ["--union"]])
def test_mask_value_options_with_coco_annotations_are_refused(model, tmp_path, capsys, extra):
    data = make_coco_dataset(tmp_path / "coco")
    args = ["eval", "interactive", "--images", str(data["images"]), "--annotations", str(data["annotations"]),
            *model, "--max-clicks", "1", "--max-images", "1", *extra]
    code, stdout, err = run(capsys, args)
    errors = [line for line in err.splitlines() if "error:" in line]
    assert code == 2 and stdout == "" and len(errors) == 1
    assert "--ignore-value and --union read mask values of --masks; with --annotations each annotation is one object" in errors[0]


def test_gif_images_are_read(folders, model, tmp_path, capsys):
    gif = break_folders(folders, tmp_path, lambda r: Image.open(r / "images" / "binary.jpg").save(r / "images" / "binary.gif"))
    (gif["images"] / "binary.jpg").unlink()
    assert MaskFolders(gif["images"], gif["masks"]).image_path(0).name == "binary.gif"
    code, stdout, _ = run(capsys, interactive_args(gif, model, tmp_path / "out", "--max-images", "1"))
    (scored,) = json.loads((tmp_path / "out" / "results.json").read_text())["models"]
    assert code == 0 and scored["images"] == 1 and scored["objects"] == 1


def test_two_ranks_shard_like_one_process(first_run, folders, model, tmp_path, monkeypatch):
    out = tmp_path / "sharded"
    assert as_ranks(monkeypatch, lambda: main(interactive_args(folders, model, out))) == {1: 0, 0: 0}
    parts = [[json.loads(line)["image_id"] for line in p.read_text().splitlines()]
             for p in sorted(Path(out, "runs").glob("vit_test-*/part-*.jsonl"))]
    assert sorted(parts[0] + parts[1]) == [0, 1, 2] and all(parts)
    alone, together = first_run[1]["models"][0], json.loads((out / "results.json").read_text())["models"][0]
    assert together["noc"] == pytest.approx(alone["noc"]) and together["nof"] == alone["nof"]
    assert together["miou_per_click"] == pytest.approx(alone["miou_per_click"], abs=1e-6)
