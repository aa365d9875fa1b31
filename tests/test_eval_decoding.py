"""Batched decoding of one encoded image with a tiny random SAM: batching, selection, clicks, and NoC on a
fake predictor that becomes perfect after a known number of clicks."""

import numpy as np
import pytest
import torch

from bigl_sam import SamPredictor, build_sam
from bigl_sam.evaluation.clicker import ClickRule, interior_point
from bigl_sam.evaluation.coco import CocoInstances
from bigl_sam.evaluation.decoding import DecoderClock, Decoding, Target, box_ious, click_ious
from bigl_sam.evaluation.interactive import click_summary, number_of_clicks
from bigl_sam.evaluation.protocol import PRESETS, RITM_RULE
from bigl_sam.images import load_image
from eval_coco_data import make_coco_dataset, rectangle

RITM = RITM_RULE
EFFICIENTVIT = PRESETS["efficientvit"].rule
AREA = ClickRule("interior", "area", pixel_centre=True)  # no preset's rule: the clicker's other options


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    data = make_coco_dataset(tmp_path_factory.mktemp("coco"))
    return CocoInstances(data["annotations"], data["images"])


@pytest.fixture(scope="module")
def predictor(official_checkpoint, dataset):
    """A random vit_test SAM holding image 3 (two instances) encoded."""
    predictor = SamPredictor(build_sam("vit_test", official_checkpoint("vit_test")))
    predictor.set_image(load_image(dataset.image_path(3), exif=False))
    return predictor


@pytest.fixture(scope="module")
def instances(dataset):
    return dataset.instances(3)


def targets(instances):
    return [Target(i.mask, seed=i.ann_id) for i in instances]


def clock():
    return DecoderClock(torch.device("cpu"))


def test_batching_does_not_change_the_result(predictor, instances):
    one_by_one = click_ious(predictor, targets(instances), RITM, 3, Decoding(), clock(), batch_size=1)
    together = click_ious(predictor, targets(instances), RITM, 3, Decoding(), clock(), batch_size=16)
    assert together.shape == (len(instances), 3)
    assert together == pytest.approx(one_by_one, abs=1e-3)


def test_oracle_is_at_least_the_predicted_best(predictor, instances):
    boxes = np.array([i.box for i in instances])
    argmax = box_ious(predictor, targets(instances), boxes, Decoding("argmax"), clock(), 16)
    oracle = box_ious(predictor, targets(instances), boxes, Decoding("oracle"), clock(), 16)
    assert all(o >= a for o, a in zip(oracle, argmax))
    assert all(0.0 <= v <= 1.0 for v in oracle + argmax)


def record_calls(predictor, monkeypatch) -> list:
    calls = []
    predict = predictor.predict_torch

    def recording(point_coords, point_labels, boxes=None, mask_input=None, **kwargs):
        calls.append((point_coords.clone(), point_labels.clone(), mask_input))
        return predict(point_coords, point_labels, boxes, mask_input, **kwargs)

    monkeypatch.setattr(predictor, "predict_torch", recording)
    return calls


@pytest.mark.parametrize("rule, feed_logits", [(EFFICIENTVIT, False), (AREA, True)], ids=["efficientvit", "area"])
def test_clicks_accumulate_at_the_rules_coordinates(predictor, instances, monkeypatch, rule, feed_logits):
    calls = record_calls(predictor, monkeypatch)
    decoder_time = clock()
    click_ious(predictor, targets(instances), rule, 3, Decoding("argmax", feed_logits), decoder_time, 16)
    assert [c[0].shape[:2] for c in calls] == [(2, 1), (2, 2), (2, 3)]
    assert calls[0][2] is None
    assert all((c[2] is not None) == feed_logits for c in calls[1:])
    assert torch.equal(calls[0][1], torch.ones(2, 1, dtype=torch.long))
    assert decoder_time.seconds > 0
    scale = predictor.transform.target_length / max(predictor.original_size)
    for b, instance in enumerate(instances):
        first = (calls[0][0][b, 0] / scale - rule.offset).tolist()
        assert first == pytest.approx(list(interior_point(instance.mask)), abs=0.05)  # SAM rounds the resize
    assert set(calls[-1][1].flatten().tolist()) <= {-1, 0, 1}


class PerfectAfter:
    """A fake SamPredictor: its mask is empty until the k-th click of an object, then exactly the object.
    It reads the object from the first click's position (one object per row of the test image)."""

    def __init__(self, objects, perfect_after, size=(40, 60)):
        self.objects, self.perfect_after = objects, perfect_after
        self.original_size = size
        self.device = torch.device("cpu")
        self.transform = self  # apply_coords: identity, so clicks arrive as pixel coordinates

    def apply_coords(self, coords, original_size):
        return coords

    def predict_torch(self, coords, labels, boxes=None, mask_input=None, multimask_output=True):
        n = coords.shape[0]
        masks = torch.zeros(n, 3, *self.original_size, dtype=torch.bool)
        for b in range(n):
            clicks = int((labels[b] >= 0).sum())
            x, y = coords[b, 0].long().tolist()
            index = next(i for i, m in enumerate(self.objects) if m[y, x])
            if clicks >= self.perfect_after[index]:
                masks[b, :] = torch.from_numpy(self.objects[index])
        return masks, torch.tensor([[0.1, 0.9, 0.5]]).repeat(n, 1), torch.zeros(n, 3, 256, 256)


def test_noc_and_nof_on_a_predictor_perfect_after_known_clicks():
    objects = [rectangle(40, 60, 2, 2 + 12 * k, 58, 10 + 12 * k) for k in range(3)]
    fake = PerfectAfter(objects, perfect_after=[1, 4, 30])  # the third object is never segmented
    curves = click_ious(fake, [Target(m) for m in objects], RITM, 20, Decoding(), clock(), batch_size=2)
    assert curves[0].tolist() == [1.0] * 20
    assert curves[1].tolist() == [0.0] * 3 + [1.0] * 17
    assert curves[2].tolist() == [0.0] * 20
    assert [number_of_clicks(c, 0.9, 20) for c in curves] == [1, 4, 20]
    records = [{"image_id": 0, "file": "x.png", "objects": [{"id": k, "ious": c.tolist()} for k, c in enumerate(curves)]}]
    summary = click_summary(records, 20)
    assert summary["noc"] == {"85": pytest.approx(25 / 3), "90": pytest.approx(25 / 3)}
    assert summary["nof"] == {"85": 1, "90": 1}
    assert summary["miou_per_click"][0] == pytest.approx(100 / 3) and summary["miou_per_click"][3] == pytest.approx(200 / 3)


def test_nof_counts_reaching_the_threshold_only_at_the_last_click_as_ritm_does():
    assert number_of_clicks([0.0] * 19 + [0.95], 0.9, 20) == 20
    summary = click_summary([{"image_id": 0, "file": "x", "objects": [{"id": 1, "ious": [0.0] * 19 + [0.95]}]}], 20)
    assert summary["nof"]["90"] == 1


def test_ignore_band_does_not_count_in_the_curve():
    obj = rectangle(40, 60, 10, 10, 30, 30)
    band = rectangle(40, 60, 8, 8, 32, 32) & ~rectangle(40, 60, 12, 12, 28, 28)
    fake = PerfectAfter([obj | band], perfect_after=[1])  # predicts object and band
    curves = click_ious(fake, [Target(obj & ~band, ignore=band)], RITM, 2, Decoding(), clock(), 1)
    assert curves.tolist() == [[1.0, 1.0]]


def test_single_mask_output(predictor, instances):
    boxes = np.array([i.box for i in instances])
    ious = box_ious(predictor, targets(instances), boxes, Decoding("single"), clock(), 16)
    assert len(ious) == len(instances) and all(0.0 <= v <= 1.0 for v in ious)


def test_random_first_click_is_inside_the_mask(predictor, instances, monkeypatch):
    calls = record_calls(predictor, monkeypatch)
    click_ious(predictor, targets(instances), ClickRule("random", "distance"), 1, Decoding(), clock(), 16)
    scale = predictor.transform.target_length / max(predictor.original_size)
    for b, instance in enumerate(instances):
        x, y = (calls[0][0][b, 0] / scale).round().long().tolist()
        assert instance.mask[y, x]
