"""Reading COCO annotations: the selection, the skip rules, polygons and RLE as masks, bad files."""

import json
from pathlib import Path

import numpy as np
import pytest

from bigl_sam.errors import BiglSamError
from bigl_sam.evaluation.coco import CocoInstances
from bigl_sam.images import load_image
from eval_coco_data import make_coco_dataset


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_coco_dataset(tmp_path_factory.mktemp("coco"))


@pytest.fixture(scope="module")
def dataset(data):
    return CocoInstances(data["annotations"], data["images"])


def test_selection_is_images_with_scored_instances_in_id_order(dataset, data):
    assert dataset.image_ids() == sorted(i for i, ids in data["scored"].items() if ids)
    assert dataset.image_ids(max_images=2) == [1, 2]


def test_crowd_and_zero_area_annotations_are_counted_not_scored(dataset, data):
    ids = dataset.image_ids()
    assert dataset.skipped_annotations(ids) == data["skipped"]
    for image_id in ids:
        assert [i.ann_id for i in dataset.instances(image_id)] == data["scored"][image_id]


def test_polygon_and_rle_masks_have_their_annotated_area(dataset):
    for image_id in dataset.image_ids():
        for instance in dataset.instances(image_id):
            assert instance.mask.shape == dataset.original_size(image_id)
            assert instance.mask.sum() == instance.area


def test_polygon_mask_and_box_cover_the_same_pixels(dataset):
    instance = dataset.instances(1)[0]  # the polygon (4, 4)-(20, 30)
    assert instance.box == (4.0, 4.0, 20.0, 30.0)
    ys, xs = np.nonzero(instance.mask)
    assert (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1) == (4, 4, 20, 30)


def test_eval_reads_pixels_as_stored_like_coco_annotates_them(dataset):
    """Image 4 carries an EXIF tag "rotate 180": the same size either way, so only the content tells."""
    mask = dataset.instances(4)[0].mask
    as_stored = load_image(dataset.image_path(4), exif=False)
    upright = load_image(dataset.image_path(4))  # the demo's and the Python API's view
    assert as_stored.shape[:2] == upright.shape[:2] == dataset.original_size(4)
    assert ((as_stored[..., 0] > 90) == mask).mean() > 0.98  # JPEG blurs a few edge pixels
    assert ((upright[..., 0] > 90) == mask).mean() < 0.8
    assert np.array_equal(upright, as_stored[::-1, ::-1])


def test_empty_selection_is_an_error(dataset, tmp_path, data):
    with pytest.raises(BiglSamError, match="at least 1"):
        dataset.image_ids(max_images=0)
    crowd_only = json.loads(data["annotations"].read_text())
    crowd_only["annotations"] = [a for a in crowd_only["annotations"] if a["iscrowd"]]
    path = tmp_path / "crowd.json"
    path.write_text(json.dumps(crowd_only))
    with pytest.raises(BiglSamError, match="no image with a scorable"):
        CocoInstances(path, data["images"]).image_ids()


@pytest.mark.parametrize(
    "text, message",
    [("{not json", "malformed JSON"), ("[1, 2]", "not a COCO instances file"), ('{"images": []}', "not a COCO")],
)
def test_bad_annotation_files_are_one_clear_error(tmp_path, data, text, message):
    path = tmp_path / "bad.json"
    path.write_text(text)
    with pytest.raises(BiglSamError, match=message):
        CocoInstances(path, data["images"])


def test_missing_paths_are_named(tmp_path, data):
    with pytest.raises(BiglSamError, match="annotation file not found"):
        CocoInstances(tmp_path / "nope.json", data["images"])
    with pytest.raises(BiglSamError, match="image folder not found"):
        CocoInstances(data["annotations"], tmp_path / "nope")


def _broken(tmp_path, data, change) -> Path:
    dataset = json.loads(data["annotations"].read_text())
    change(dataset)
    path = tmp_path / "broken.json"
    path.write_text(json.dumps(dataset))
    return path


def _set(kind, index, key, value):
    def change(dataset):
        if value is DELETE:
            del dataset[kind][index][key]
        else:
            dataset[kind][index][key] = value
    return change


DELETE = object()


@pytest.mark.parametrize(
    "change, message",
    [
        (_set("annotations", 0, "segmentation", {"size": [48, 64]}), "annotation 1: RLE without counts"),
        (_set("annotations", 0, "area", None), "annotation 1: area must be a number, got None"),
        (_set("annotations", 0, "area", "12"), "annotation 1: area must be a number, got '12'"),
        (_set("annotations", 0, "segmentation", [[1, 2, 3]]), "annotation 1: a polygon needs .* got 3"),
        (_set("annotations", 0, "segmentation", []), r"annotation 1: empty segmentation \(no polygon"),
        (_set("annotations", 1, "segmentation", {"size": [40, 64], "counts": "abc"}),
         r"annotation 2: RLE of size \[40, 64\], but image 1 is \[48, 64\]"),
        (_set("annotations", 0, "bbox", [1, 2, 3]), "annotation 1: bbox must be 4 numbers"),
        (_set("annotations", 0, "bbox", [10, 10, -5, 4]), "annotation 1: bbox .* negative width or height"),
        (_set("annotations", 0, "bbox", [10, 10, 5, -4]), "annotation 1: bbox .* negative width or height"),
        (_set("annotations", 0, "bbox", [60, 10, 30, 4]), "annotation 1: bbox .* reaches outside image 1 "
                                                           r"\(64 x 48 pixels"),
        (_set("annotations", 0, "bbox", [-20, 10, 5, 4]), "annotation 1: bbox .* reaches outside image 1"),
        (_set("annotations", 0, "bbox", [1, 200, 5, 4]), "annotation 1: bbox .* reaches outside image 1"),
        (_set("images", 1, "file_name", DELETE), "image 2 has no file_name"),
        (_set("images", 1, "height", DELETE), "image 2: height must be a positive integer, got None"),
        (_set("images", 1, "width", DELETE), "image 2: width must be a positive integer, got None"),
        (_set("images", 1, "height", "40"), "image 2: height must be a positive integer, got '40'"),
        (_set("images", 2, "id", 1), "image id 1 is given twice \\(gray.png and deep.png\\)"),
    ],
)
def test_malformed_entries_are_one_line_naming_the_id(tmp_path, data, change, message):
    with pytest.raises(BiglSamError, match=message):
        CocoInstances(_broken(tmp_path, data, change), data["images"])


def test_run_identity_is_the_annotation_content_not_its_path(tmp_path, data):
    copy = tmp_path / "same.json"
    copy.write_bytes(data["annotations"].read_bytes())
    assert CocoInstances(copy, data["images"]).sha256 == CocoInstances(data["annotations"], data["images"]).sha256
    copy.write_text(copy.read_text().replace('"area": 416.0', '"area": 417.0', 1))
    assert CocoInstances(copy, data["images"]).sha256 != CocoInstances(data["annotations"], data["images"]).sha256


def test_crowd_annotations_are_scored_when_the_protocol_says(data):
    dataset = CocoInstances(data["annotations"], data["images"], score_crowd=True)
    assert dataset.skipped_annotations(dataset.image_ids())["iscrowd"] == 0
    assert 6 in dataset.image_ids()  # the crowd-only image is selected then
    assert len(dataset.instances(1)) == 3
