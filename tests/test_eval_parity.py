"""The rules in which the presets follow their peers' code, each on a fixture where the rule shows: mask AP by
mask area (detectron2, EfficientViT-SAM), EfficientViT-SAM's size buckets, empty masks, click on an exact
mask and float64 prompt scaling, and RITM's dataset readers for `eval interactive --dataset`."""

import json

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_utils

from bigl_sam import SamPredictor, build_sam
from bigl_sam.cli import main
from bigl_sam.evaluation.clicker import Click, Clicker, interior_point
from bigl_sam.evaluation.coco import CocoInstances
from bigl_sam.evaluation.decoding import DecoderClock, Decoding, Target, box_masks, click_ious
from bigl_sam.evaluation.detections import coco_ap
from bigl_sam.evaluation.instances import CocoMiou, miou_summary
from bigl_sam.evaluation.masks import DATASETS, MaskFolders
from bigl_sam.evaluation.protocol import PRESETS, RITM_RULE, Protocol
from bigl_sam.images import load_image
from eval_coco_data import polygon_annotation, rectangle

EFFICIENTVIT = PRESETS["efficientvit"].rule


def write_coco(root, height, width, annotations, picture=None):
    """One image (id 1, `picture.png`) and its annotations as a COCO instances file under `root`."""
    images = root / "images"
    images.mkdir(parents=True)
    pixels = np.full((height, width), 60, np.uint8) if picture is None else picture
    Image.fromarray(pixels, "L").save(images / "picture.png")
    for k, ann in enumerate(annotations, start=1):
        ann.update(id=k, image_id=1, category_id=1)
    dataset = {"images": [{"id": 1, "file_name": "picture.png", "height": height, "width": width}],
               "annotations": annotations, "categories": [{"id": 1, "name": "thing"}]}
    (root / "instances.json").write_text(json.dumps(dataset))
    return CocoInstances(root / "instances.json", images)


def segmentation(mask: np.ndarray) -> dict:
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": rle["size"], "counts": rle["counts"].decode("ascii")}


def test_segm_ap_sorts_detections_by_mask_area_not_box_area(tmp_path):
    """A false positive whose box is large (100 x 100) but whose mask is small (a 2-pixel frame, 784 pixels)
    is a small detection for detectron2 and EfficientViT-SAM: it halves APs. Taking the box's area would
    leave it out of the small range and give APs 100."""
    size = 130
    dataset = write_coco(tmp_path, size, size, [polygon_annotation(5, 5, 25, 25)])  # one small object
    frame = rectangle(size, size, 28, 28, 128, 128) & ~rectangle(size, size, 30, 30, 126, 126)
    assert frame.sum() < 32**2 < 100 * 100
    results = [
        {"image_id": 1, "category_id": 1, "bbox": [5, 5, 20, 20], "score": 0.9,
         "segmentation": segmentation(rectangle(size, size, 5, 5, 25, 25))},
        {"image_id": 1, "category_id": 1, "bbox": [28, 28, 100, 100], "score": 0.95, "segmentation": segmentation(frame)},
    ]
    ap = coco_ap(dataset, results, [1])
    assert ap["APs"] == pytest.approx(50.0) and ap["AP"] == pytest.approx(50.0)
    assert ap["APl"] is None  # no large ground truth


@pytest.fixture(scope="module")
def coco_fixture(tmp_path_factory):
    """A 64 x 80 image with an instance of exactly 32^2 pixels, a medium one, and an annotation whose polygon
    is too thin to cover a pixel (area field 2, empty mask)."""
    root = tmp_path_factory.mktemp("parity-coco")
    height, width = 64, 80
    thin = {"segmentation": [[50.0, 10.0, 60.0, 10.0, 60.0, 10.2, 50.0, 10.2]], "area": 2.0,
            "bbox": [50.0, 10.0, 10.0, 0.2], "iscrowd": 0}
    annotations = [polygon_annotation(2, 2, 34, 34), polygon_annotation(36, 20, 78, 60), thin]
    picture = np.full((height, width), 60, np.uint8)
    picture[2:34, 2:34], picture[20:60, 36:78] = 140, 200
    return write_coco(root, height, width, annotations, picture)


@pytest.fixture(scope="module")
def predictor(official_checkpoint, coco_fixture):
    predictor = SamPredictor(build_sam("vit_test", official_checkpoint("vit_test")))
    predictor.set_image(load_image(coco_fixture.image_path(1), exif=False))
    return predictor


def clock():
    return DecoderClock(torch.device("cpu"))


def test_fixture_has_a_1024_pixel_instance_and_an_empty_mask(coco_fixture):
    instances = coco_fixture.instances(1)
    assert [i.area for i in instances] == [1024.0, 42.0 * 40.0, 2.0]
    assert instances[0].mask.sum() == 1024 and not instances[2].mask.any()


@pytest.mark.parametrize("prompt", ["box", "point"])
def test_efficientvit_scores_empty_masks_and_counts_bounds_in_both_buckets(coco_fixture, predictor, prompt):
    efficientvit, disjoint = (CocoMiou(coco_fixture, Protocol(prompt, preset=p), 16) for p in ("efficientvit", "efficientsam"))
    record = {"image_id": 1, "file": "picture.png", **efficientvit.score(predictor, 1, clock())}
    assert [i["id"] for i in record["instances"]] == [1, 2, 3] and record["empty_masks"] == [3]
    assert record["instances"][2]["iou"] == 0.0  # scored, at IoU 0 whatever SAM predicts
    summary = miou_summary([record], efficientvit.protocol.inclusive_buckets)
    assert summary["instances"] == {"all": 3, "small": 2, "medium": 2, "large": 0}
    other = {"image_id": 1, "file": "picture.png", **disjoint.score(predictor, 1, clock())}
    assert [i["id"] for i in other["instances"]] == [1, 2] and other["empty_masks"] == [3]
    assert miou_summary([other], disjoint.protocol.inclusive_buckets)["instances"] == {"all": 2, "small": 0, "medium": 2, "large": 0}


def test_empty_mask_gets_ritms_click_under_efficientvit():
    """RITM's clicker on an empty object and an empty prediction: both distance maxima are 0, so a negative
    click at (0, 0)."""
    empty = np.zeros((10, 12), dtype=bool)
    assert Clicker(empty, EFFICIENTVIT).first() == Click(0, 0, False)
    with pytest.raises(ValueError, match="empty object mask"):
        Clicker(empty, RITM_RULE)


class ExactPredictor:
    """A fake SamPredictor whose every mask is exactly `mask`; it records each call's points and labels."""

    def __init__(self, mask):
        self.mask = torch.from_numpy(mask)
        self.original_size = mask.shape
        self.device = torch.device("cpu")
        self.transform = self  # apply_coords: identity, so clicks arrive as pixel coordinates
        self.calls = []

    def apply_coords(self, coords, original_size):
        return coords

    def predict_torch(self, coords, labels, boxes=None, mask_input=None, multimask_output=True):
        self.calls.append((coords.clone(), labels.clone()))
        n = coords.shape[0]
        masks = self.mask.expand(n, 3, *self.mask.shape)
        return masks, torch.tensor([[0.1, 0.9, 0.5]]).repeat(n, 1), torch.zeros(n, 3, 256, 256)


@pytest.mark.parametrize("rule, second_label", [(EFFICIENTVIT, 0), (RITM_RULE, -1), (PRESETS["efficientsam"].rule, -1)],
                         ids=["efficientvit", "interactive", "efficientsam"])
def test_click_on_an_exact_mask(rule, second_label):
    """EfficientViT-SAM's clicker adds a negative click at (0, 0) once the mask is exact, and the decoder
    gets it; the interactive job and `efficientsam` keep the exact mask (the second point is SAM's padding, -1)."""
    obj = rectangle(20, 24, 6, 4, 18, 16)
    assert Clicker(obj, rule).next(obj) == (Click(0, 0, False) if rule is EFFICIENTVIT else None)
    fake = ExactPredictor(obj)
    ious = click_ious(fake, [Target(obj)], rule, 2, Decoding(), clock(), batch_size=1)
    coords, labels = fake.calls[1]
    assert labels.tolist() == [[1, second_label]] and ious.tolist() == [[1.0, 1.0]]
    if second_label == 0:
        assert coords[0, 1].tolist() == [0.0, 0.0]


def test_prompt_coordinates_are_scaled_in_float64_as_sam_predictor_predict(predictor, monkeypatch):
    """`SamPredictor.predict` scales numpy prompts in float64 and then makes them float32; scaling float32
    tensors (`apply_boxes_torch`, `apply_coords_torch`) lands on other float32s for this box and click."""
    box = np.array([[4.3, 7.1, 33.9, 47.7]])
    size = predictor.original_size
    transform = predictor.transform
    expected = torch.as_tensor(transform.apply_boxes(box, size), dtype=torch.float)
    assert not torch.equal(expected, transform.apply_boxes_torch(torch.as_tensor(box, dtype=torch.float), size))
    obj = rectangle(*size, 3, 2, 35, 34)
    first = np.array([[interior_point(obj)]])
    expected_click = torch.as_tensor(transform.apply_coords(first, size), dtype=torch.float)
    assert not torch.equal(expected_click, transform.apply_coords_torch(torch.as_tensor(first, dtype=torch.float), size))
    seen = []
    predict = predictor.predict_torch

    def recording(point_coords, point_labels, boxes=None, mask_input=None, **kwargs):
        seen.append(boxes if boxes is not None else point_coords)
        return predict(point_coords, point_labels, boxes, mask_input, **kwargs)

    monkeypatch.setattr(predictor, "predict_torch", recording)
    box_masks(predictor, box, Decoding(), clock())
    assert torch.equal(seen[0], expected)
    click_ious(predictor, [Target(obj)], RITM_RULE, 1, Decoding(), clock(), 1)
    assert torch.equal(seen[1], expected_click)


def palette_frame(root, values: np.ndarray):
    """One image and its mask (palette PNG, DAVIS-style) under root/img and root/gt."""
    (root / "img").mkdir(parents=True)
    (root / "gt").mkdir()
    Image.fromarray(np.repeat((40 + 60 * values).astype(np.uint8)[..., None], 3, axis=2)).save(root / "img" / "00000.jpg")
    mask = Image.fromarray(values.astype(np.uint8), "P")
    mask.putpalette([0, 0, 0, 128, 0, 0, 0, 128, 0] + [0] * (256 - 3) * 3)
    mask.save(root / "gt" / "00000.png")
    return root / "img", root / "gt"


@pytest.fixture
def davis_frame(tmp_path):
    values = np.zeros((40, 56), dtype=np.uint8)
    values[rectangle(40, 56, 4, 4, 20, 30)], values[rectangle(40, 56, 28, 6, 52, 34)] = 1, 2
    return palette_frame(tmp_path / "davis", values)


def test_davis_preset_scores_two_palette_objects_as_one(davis_frame):
    """RITM's `DavisDataset` makes every non-zero value of a frame one object."""
    images, masks = davis_frame
    assert len(MaskFolders(images, masks).objects(0)) == 2
    davis = DATASETS["davis"]
    (frame,) = MaskFolders(images, masks, davis.ignore_value, davis.union, davis.object_above).objects(0)
    assert frame.mask.sum() == 16 * 26 + 24 * 28 and frame.ignore is None
    mval = DATASETS["coco-mval"]  # RITM reads COCO-MVal with its DAVIS reader
    assert (mval.ignore_value, mval.union, mval.object_above) == (davis.ignore_value, davis.union, davis.object_above)


def test_grabcut_preset_takes_only_values_above_128_as_object(tmp_path):
    """RITM's `GrabCutDataset`: 128 is ignored, > 128 is the object, anything else (here 100) background."""
    values = np.zeros((30, 40), dtype=np.uint8)
    values[5:25, 5:35], values[10:20, 10:30], values[0:3, 0:3] = 128, 255, 100
    images, masks = tmp_path / "data_GT", tmp_path / "boundary_GT"
    images.mkdir(), masks.mkdir()
    Image.fromarray(values).save(images / "a.png")
    Image.fromarray(values).save(masks / "a.png")
    grabcut = DATASETS["grabcut"]
    (obj,) = MaskFolders(images, masks, grabcut.ignore_value, grabcut.union, grabcut.object_above).objects(0)
    assert np.array_equal(obj.mask, values == 255) and np.array_equal(obj.ignore, values == 128)
    assert len(MaskFolders(images, masks, ignore_value=128).objects(0)) == 2  # without the preset, 100 is an object


def test_dataset_option_end_to_end_and_its_conflicts(davis_frame, official_checkpoint, tmp_path, capsys):
    images, masks = davis_frame
    args = ["eval", "interactive", "--images", str(images), "--masks", str(masks), "--dataset", "davis",
            "--model", "vit_test", "--checkpoint", str(official_checkpoint("vit_test")), "--max-clicks", "1"]
    assert main(args + ["--out", str(tmp_path / "out")]) == 0
    report = json.loads((tmp_path / "out" / "results.json").read_text())
    assert report["models"][0]["objects"] == 1 and report["dataset"]["preset"] == "davis"
    assert "--dataset davis" in report["command"]
    capsys.readouterr()
    for conflict in (["--union"], ["--ignore-value", "128"]):
        assert main(args + conflict) == 2
        errors = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
        assert len(errors) == 1 and "--dataset davis sets the mask rule" in errors[0]
