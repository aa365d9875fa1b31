"""Reading COCO annotations: the selection, the skip rules, polygons and RLE as masks, bad files."""

import json

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
            assert instance.mask.shape == dataset.image_size(image_id)
            assert instance.mask.sum() == instance.area


def test_polygon_mask_and_box_cover_the_same_pixels(dataset):
    instance = dataset.instances(1)[0]  # the polygon (4, 4)-(20, 30)
    assert instance.box == (4.0, 4.0, 20.0, 30.0)
    ys, xs = np.nonzero(instance.mask)
    assert (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1) == (4, 4, 20, 30)


def test_exif_rotated_image_is_upright_like_its_annotation(dataset):
    image = load_image(dataset.image_path(4))
    assert image.shape[:2] == dataset.image_size(4)
    bright = image[..., 0] > 90
    assert (bright == dataset.instances(4)[0].mask).mean() > 0.98  # JPEG blurs a few edge pixels


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


def test_malformed_annotation_names_its_id(tmp_path, data):
    broken = json.loads(data["annotations"].read_text())
    broken["annotations"][0]["segmentation"] = {"size": [48, 64]}  # RLE without counts
    path = tmp_path / "broken.json"
    path.write_text(json.dumps(broken))
    with pytest.raises(BiglSamError, match=f"annotation {broken['annotations'][0]['id']} is malformed"):
        CocoInstances(path, data["images"]).instances(1)
