"""`bigl-sam amg`: SAM's per-image outputs and one COCO file, resume, torchrun shards, bad settings."""

import json
import re

import cv2
import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from bigl_sam.cli import main
from conftest import as_ranks
from test_amg import photo

# 2 x 2 points on vit_test: seconds per image; thresholds under which random weights keep masks.
FAST = ["--model", "vit_test", "--points-per-side", "2", "--pred-iou-thresh", "0.02", "--stability-score-thresh",
        "0.6", "--stability-score-offset", "0.02", "--box-nms-thresh", "1.0"]


def amg(*args) -> int:
    return main(["amg", *map(str, args)])


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("amg-images")
    Image.fromarray(photo(seed=0)).save(folder / "a.png")
    Image.fromarray(photo(90, 160, seed=1)).save(folder / "b.jpg")
    (folder / "broken.jpg").write_bytes(b"not an image")
    return folder


@pytest.fixture(scope="module")
def segmented(images, tmp_path_factory):
    out = tmp_path_factory.mktemp("amg-out")
    assert amg("--images", images, "--out", out, *FAST) == 0
    return out


def test_coco_file_loads_and_decodes_to_the_pngs(one_thread, segmented):
    coco = COCO(str(segmented / "masks_coco.json"))
    assert [image["file_name"] for image in coco.dataset["images"]] == ["a.png", "b.jpg"]
    [skipped] = coco.dataset["info"]["skipped"]
    assert "broken.jpg: not a readable image" in skipped
    for image in coco.dataset["images"]:
        annotations = coco.loadAnns(coco.getAnnIds(imgIds=image["id"]))
        assert annotations
        folder = segmented / image["file_name"].rsplit(".", 1)[0]
        rows = (folder / "metadata.csv").read_text().splitlines()[1:]
        assert len(rows) == len(annotations)
        for i, annotation in enumerate(annotations):
            png = cv2.imread(str(folder / f"{i}.png"), cv2.IMREAD_GRAYSCALE)
            assert png.shape == (image["height"], image["width"])
            assert np.array_equal(coco.annToMask(annotation), png // 255)
            assert annotation["area"] == int(mask_utils.area(annotation["segmentation"]))
            assert rows[i].split(",")[1] == str(annotation["area"])
            assert 0 <= annotation["stability_score"] <= 1 and "predicted_iou" in annotation


def test_resume_redoes_only_unfinished_images(one_thread, images, segmented, tmp_path, capsys):
    out = tmp_path / "out"
    for path in segmented.rglob("*"):  # a copy of a finished run...
        target = out / path.relative_to(segmented)
        target.parent.mkdir(parents=True, exist_ok=True)
        if path.is_file():
            target.write_bytes(path.read_bytes())
    (out / ".records" / "b.json").unlink()  # ... killed while writing b's masks
    for png in sorted((out / "b").glob("*.png"))[1:]:
        png.unlink()
    finished = (out / ".records" / "a.json").stat().st_mtime_ns
    assert amg("--images", images, "--out", out, *FAST) == 0
    assert "1 of 3 images already done" in capsys.readouterr().err  # b.jpg and broken.jpg are tried again
    assert (out / ".records" / "a.json").stat().st_mtime_ns == finished
    assert (out / "masks_coco.json").read_text() == (segmented / "masks_coco.json").read_text()
    for png in (segmented / "b").glob("*.png"):
        assert (out / "b" / png.name).read_bytes() == png.read_bytes()


def test_other_settings_in_the_same_out_are_refused(one_thread, images, segmented, capsys):
    assert amg("--images", images, "--out", segmented, *FAST, "--points-per-side", "3") == 2
    assert "holds masks made with other settings (points_per_side differ)" in capsys.readouterr().err


def test_two_ranks_give_each_image_once(one_thread, images, tmp_path, monkeypatch):
    out = tmp_path / "out"
    command = ["--images", images, "--out", out, "--output-mode", "coco_rle", *FAST]
    assert as_ranks(monkeypatch, lambda: amg(*command)) == {1: 0, 0: 0}
    coco = json.loads((out / "masks_coco.json").read_text())
    assert [image["file_name"] for image in coco["images"]] == ["a.png", "b.jpg"]
    assert len(coco["info"]["skipped"]) == 1
    for name in ("a", "b"):
        per_image = json.loads((out / f"{name}.json").read_text())
        assert per_image and all("counts" in record["segmentation"] for record in per_image)


@pytest.mark.parametrize("option,message", [
    (["--pred-iou-thresh", "-0.5"], "pred_iou_thresh must be in [0, 1], got -0.5"),
    (["--stability-score-offset", "-1"], "stability_score_offset must be at least 0, got -1.0"),
    (["--points-per-side", "0"], "points_per_side must be at least 1, got 0"),
    (["--crop-n-layers", "4"], "crop_n_layers 4 makes 341 crops per image; the limit is 85"),
    (["--max-images", "0"], "--max-images must be at least 1"),
    (["--points-per-batch", "many"], "points_per_batch must be a whole number of at least 1 or auto, got 'many'"),
    (["--compile", "--share-image-work"], "compiled and share_image_work cannot be combined"),
])
def test_bad_settings_are_one_line(images, tmp_path, capsys, option, message):
    assert amg("--images", images, "--out", tmp_path / "out", "--model", "vit_test", *option) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"bigl-sam amg: error: {message}" or (message in err and len(err.splitlines()) == 1)
    assert not (tmp_path / "out").exists()


def test_help_lists_the_options(capsys):
    with pytest.raises(SystemExit) as done:
        amg("--help")
    assert done.value.code == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "--points-per-batch N|auto" in out and "--compile" in out and "--share-image-work" in out


def test_bench_checks_the_masks_against_sams(one_thread, images, capsys):
    assert amg("--images", images, "--bench", "--max-images", "1", "--share-image-work", *FAST) == 0
    out = capsys.readouterr().out
    assert "| sam | " in out and "| bigl-sam --share-image-work | " in out
    assert re.search(r"\| bigl-sam \| [0-9.]+% \| 1 of 1 \| 100\.0% \| 1\.0000 \|", out)  # the same masks
