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
    assert "holds masks made with other settings (points_per_side (2 -> 3))" in capsys.readouterr().err


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
    (["--stability-score-offset", "inf"], "stability_score_offset must be a finite number, got inf"),
    (["--pred-iou-thresh", "nan"], "pred_iou_thresh must be a finite number, got nan"),
    (["--keep-ratio", "0.5"], "--keep-ratio: vit_test is SAM's own encoder"),
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
    assert "--points-per-batch N" in out and "--compile" in out and "--share-image-work" in out
    assert "--pred-iou-thresh X keep masks whose predicted IoU is at least X (default: 0.88)" in out
    assert "A smoke run that takes seconds and writes masks: --model vit_test --points-per-side 2" in out


def test_an_image_may_be_named_settings(one_thread, tmp_path, capsys):
    Image.fromarray(photo(seed=0)).save(tmp_path / "settings.png")
    assert amg("--images", tmp_path, "--out", tmp_path / "out", "--max-images", 1, *FAST) == 0
    coco = json.loads((tmp_path / "out" / "masks_coco.json").read_text())
    assert [image["file_name"] for image in coco["images"]] == ["settings.png"] and coco["annotations"]
    assert amg("--images", tmp_path, "--out", tmp_path / "out", "--max-images", 1, *FAST) == 0  # resumes
    assert "1 of 1 images already done" in capsys.readouterr().err


def test_an_image_named_like_the_coco_file_is_refused_in_coco_rle_mode(tmp_path, capsys):
    Image.fromarray(photo(seed=0)).save(tmp_path / "masks_coco.png")
    assert amg("--images", tmp_path, "--out", tmp_path / "out", "--output-mode", "coco_rle", *FAST) == 2
    err = capsys.readouterr().err.strip()
    assert err.endswith("the masks of masks_coco.png would be masks_coco.json, the folder's COCO file: rename the "
                        "image, or use --output-mode binary_mask") and len(err.splitlines()) == 1
    assert not (tmp_path / "out").exists()


def _copy(folder, out):
    for path in folder.rglob("*"):
        target = out / path.relative_to(folder)
        target.parent.mkdir(parents=True, exist_ok=True)
        if path.is_file():
            target.write_bytes(path.read_bytes())


@pytest.mark.parametrize("broken", ['{"file_name": "a.p', "{}", "[1, 2]", '"a record"'])
def test_a_broken_record_is_segmented_again(one_thread, images, segmented, tmp_path, capsys, broken):
    out = tmp_path / "out"
    _copy(segmented, out)
    (out / ".records" / "a.json").write_text(broken)
    assert amg("--images", images, "--out", out, *FAST) == 0
    assert f"{out / '.records' / 'a.json'}: broken record: segmenting a.png again" in capsys.readouterr().err
    assert (out / "masks_coco.json").read_text() == (segmented / "masks_coco.json").read_text()


@pytest.mark.parametrize("broken", ['{"model": "vit', "[1, 2]"])
def test_a_broken_settings_file_is_one_line_saying_what_to_do(images, segmented, tmp_path, capsys, broken):
    out = tmp_path / "out"
    _copy(segmented, out)
    (out / ".records" / "settings").write_text(broken)
    assert amg("--images", images, "--out", out, *FAST) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"{out / '.records' / 'settings'}: broken (" in err[0]
    assert f"delete {out / '.records'} to segment every image again, or give another --out" in err[0]


def test_an_image_replaced_under_its_name_is_segmented_again(one_thread, images, segmented, tmp_path, capsys):
    folder, out = tmp_path / "images", tmp_path / "out"
    _copy(images, folder)
    _copy(segmented, out)
    Image.fromarray(photo(seed=5)).save(folder / "a.png")
    assert amg("--images", folder, "--out", out, *FAST) == 0
    assert f"{folder / 'a.png'}: changed since its masks were made (image (" in capsys.readouterr().err


def test_broken_and_looping_symlinks_are_listed_as_skipped(one_thread, tmp_path, capsys):
    folder = tmp_path / "images"
    folder.mkdir()
    Image.fromarray(photo(seed=0)).save(folder / "a.png")
    (folder / "dangling.png").symlink_to(tmp_path / "nowhere.png")
    (folder / "loop.jpg").symlink_to(folder / "loop.jpg")
    assert amg("--images", folder, "--out", tmp_path / "out", *FAST) == 0
    skipped = json.loads((tmp_path / "out" / "masks_coco.json").read_text())["info"]["skipped"]
    assert [reason.split(":")[0] for reason in skipped] == [str(folder / "dangling.png"), str(folder / "loop.jpg")]
    assert "1 of 3 images segmented" in capsys.readouterr().err


def test_no_mask_passing_the_thresholds_is_said(one_thread, tmp_path, capsys):
    """SAM's thresholds on random weights: the run finishes, and says why there is no mask."""
    Image.fromarray(photo(seed=0)).save(tmp_path / "a.png")
    assert amg("--images", tmp_path, "--out", tmp_path / "out", "--model", "vit_test", "--points-per-side", 2) == 0
    err = capsys.readouterr().err
    assert "1 of 1 images segmented (0 masks)" in err
    assert "note: in 1 of 1 images no mask passed the thresholds (--pred-iou-thresh 0.88, " in err


def test_bench_checks_the_masks_against_sams(one_thread, images, capsys):
    assert amg("--images", images, "--bench", "--max-images", "1", "--share-image-work", *FAST) == 0
    out = capsys.readouterr().out
    assert "| sam | " in out and "| bigl-sam --share-image-work | " in out
    assert re.search(r"\| bigl-sam \| [0-9.]+% \| 1 of 1 \| 100\.0% \| 1\.0000 \|", out)  # the same masks
