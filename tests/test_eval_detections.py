"""`bigl-sam eval coco --boxes`: detections in, COCO segmentation results out, COCOeval's AP; resume,
torchrun and bad detection files."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from bigl_sam.cli import main
from bigl_sam.evaluation.coco import CocoInstances
from bigl_sam.evaluation.detections import coco_ap, read_detections
from conftest import as_ranks
from eval_coco_data import detections_for, make_coco_dataset


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    data = make_coco_dataset(tmp_path_factory.mktemp("coco"))
    data["boxes"] = data["annotations"].parent / "detections.json"
    data["boxes"].write_text(json.dumps(detections_for(data)))
    return data


@pytest.fixture(scope="module")
def model(official_checkpoint):
    return ["--model", "vit_test", "--checkpoint", str(official_checkpoint("vit_test"))]


def boxes_args(data, model, out=None, boxes=None, *extra):
    args = ["eval", "coco", "--images", str(data["images"]), "--annotations", str(data["annotations"]), *model,
            "--boxes", str(boxes or data["boxes"]), "--score-threshold", "0.1"]
    return args + (["--out", str(out)] if out else []) + list(extra)


def test_perfect_masks_give_ap_100(data):
    dataset = CocoInstances(data["annotations"], data["images"])
    image_ids = [1, 3, 4]  # image 2 holds a zero-area annotation that no mask can match
    results = []
    for image_id in image_ids:
        for instance in dataset.instances(image_id):
            rle = mask_utils.encode(np.asfortranarray(instance.mask.astype(np.uint8)))
            results.append({"image_id": image_id, "category_id": 1, "score": 0.9,
                            "segmentation": {"size": rle["size"], "counts": rle["counts"].decode("ascii")}})
    ap = coco_ap(dataset, results, image_ids)
    assert ap["AP"] == pytest.approx(100.0) and ap["AP50"] == pytest.approx(100.0)
    worse = coco_ap(dataset, results[1:], image_ids)  # one instance missed
    assert worse["AP"] < 100.0


def test_threshold_keeps_the_confident_boxes(data):
    dataset = CocoInstances(data["annotations"], data["images"])
    kept = read_detections(data["boxes"], dataset, 0.1)
    assert sum(len(d) for d in kept.values()) == len(detections_for(data)) - 1
    assert sum(len(d) for d in read_detections(data["boxes"], dataset, 0.0).values()) == len(detections_for(data))


@pytest.fixture(scope="module")
def first_run(data, model, tmp_path_factory):
    out = tmp_path_factory.mktemp("boxes-out")
    assert main(boxes_args(data, model, out)) == 0
    return out, json.loads((out / "results.json").read_text())


def test_segmentation_results_and_ap_are_written(first_run, data):
    out, report = first_run
    (model,) = report["models"]
    assert set(model["ap"]) == {"AP", "AP50", "AP75", "APs", "APm", "APl"}
    assert all(v is None or 0.0 <= v <= 100.0 for v in model["ap"].values())
    results = json.loads(Path(model["segmentation_results"]).read_text())
    assert len(results) == model["masks"] == len(detections_for(data)) - 2  # one below threshold, one on the missing file
    assert set(results[0]) == {"image_id", "category_id", "score", "segmentation"}  # no bbox: areas are the masks'
    assert report["dataset"]["detections_sha256"] and report["protocol"]["score_threshold"] == 0.1
    assert model["skipped_images"][0]["file"] == "missing.png"


def test_rerun_resumes(first_run, data, model, tmp_path, capsys):
    out = tmp_path / "out"
    shutil.copytree(first_run[0], out)
    assert main(boxes_args(data, model, out)) == 0
    assert "already done" in capsys.readouterr().err
    assert json.loads((out / "results.json").read_text())["models"][0]["ap"] == first_run[1]["models"][0]["ap"]


@pytest.mark.parametrize(
    "content, message",
    [
        ({"image_id": 1}, "not a COCO results file"),
        ([{"image_id": 99, "category_id": 1, "bbox": [0, 0, 4, 4], "score": 0.9}], "names image id 99"),
        ([{"image_id": 1, "category_id": 7, "bbox": [0, 0, 4, 4], "score": 0.9}], "names category id 7"),
        ([{"image_id": 1, "category_id": 1, "bbox": [0, 0, 4], "score": 0.9}], "bbox must be"),
        ([{"image_id": 1, "category_id": 1, "bbox": [0, 0, 4, 4]}], "has no 'score'"),
        ([{"image_id": 1, "category_id": 1, "bbox": [0, 0, float("inf"), 4], "score": 0.9}],
         "detection 0: bbox must be 4 finite numbers [x, y, width, height] with width, height >= 0, got [0, 0, inf, 4]"),
        ([{"image_id": 1, "category_id": 1, "bbox": [0, 0, 4, 4], "score": 2.5}],
         "detection 0: score must be a detector's confidence in [0, 1] (as --score-threshold), got 2.5"),
        ([{"image_id": 1, "category_id": 1, "bbox": [0, 0, 4, 4], "score": -1}], "score must be a detector's confidence"),
        ([{"image_id": 1, "category_id": 1, "bbox": [0, 0, 4, 4], "score": 0.01}], "no detection with score >= 0.1"),
    ],
)
def test_bad_detection_files_are_one_line_and_lose_nothing(first_run, data, model, tmp_path, capsys, content, message):
    out = tmp_path / "out"
    shutil.copytree(first_run[0], out)
    before = sorted((p.relative_to(out), p.read_bytes()) for p in out.rglob("*") if p.is_file())
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(content))
    code = main(boxes_args(data, model, out, bad))
    stdout, err = capsys.readouterr()
    errors = [line for line in err.splitlines() if "error:" in line]
    assert code == 2 and stdout == "" and len(errors) == 1 and message in errors[0]
    assert sorted((p.relative_to(out), p.read_bytes()) for p in out.rglob("*") if p.is_file()) == before


def test_two_ranks_shard_like_one_process(first_run, data, model, tmp_path, monkeypatch):
    out = tmp_path / "sharded"
    assert as_ranks(monkeypatch, lambda: main(boxes_args(data, model, out))) == {1: 0, 0: 0}
    alone, together = first_run[1]["models"][0], json.loads((out / "results.json").read_text())["models"][0]
    assert together["masks"] == alone["masks"]
    assert together["ap"] == pytest.approx(alone["ap"], abs=0.5)
