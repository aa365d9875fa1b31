"""Batched decoding of one encoded image with a tiny random SAM: batching, selection and clicks."""

import pytest
import torch

from bigl_sam import SamPredictor, build_sam
from bigl_sam.evaluation.coco import CocoInstances
from bigl_sam.evaluation.decoding import score_instances
from bigl_sam.evaluation.protocol import Protocol, interior_point
from bigl_sam.images import load_image
from eval_coco_data import make_coco_dataset


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    data = make_coco_dataset(tmp_path_factory.mktemp("coco"))
    return CocoInstances(data["annotations"], data["images"])


@pytest.fixture(scope="module")
def predictor(official_checkpoint, dataset):
    """A random vit_test SAM holding image 3 (two instances) encoded."""
    predictor = SamPredictor(build_sam("vit_test", official_checkpoint("vit_test")))
    predictor.set_image(load_image(dataset.image_path(3)))
    return predictor


@pytest.fixture(scope="module")
def instances(dataset):
    return dataset.instances(3)


def test_batching_does_not_change_the_result(predictor, instances):
    protocol = Protocol("point")
    one_by_one = score_instances(predictor, instances, protocol, batch_size=1)
    together = score_instances(predictor, instances, protocol, batch_size=16)
    assert len(together) == len(instances)
    assert together == pytest.approx(one_by_one, abs=1e-3)


def test_oracle_is_at_least_the_predicted_best(predictor, instances):
    argmax = score_instances(predictor, instances, Protocol("box", select="argmax"), batch_size=16)
    oracle = score_instances(predictor, instances, Protocol("box", select="oracle"), batch_size=16)
    assert all(o >= a for o, a in zip(oracle, argmax))
    assert all(0.0 <= v <= 1.0 for v in oracle + argmax)


def test_one_click_is_the_point_prompt(predictor, instances):
    point = score_instances(predictor, instances, Protocol("point"), batch_size=16)
    one_click = score_instances(predictor, instances, Protocol("clicks", clicks=1), batch_size=16)
    assert one_click == point


def test_clicks_accumulate_and_feed_back_the_logits(predictor, instances, monkeypatch):
    calls = []
    predict = predictor.predict_torch

    def recording(point_coords, point_labels, boxes=None, mask_input=None, **kwargs):
        calls.append((point_coords.clone(), point_labels.clone(), mask_input))
        return predict(point_coords, point_labels, boxes, mask_input, **kwargs)

    monkeypatch.setattr(predictor, "predict_torch", recording)
    score_instances(predictor, instances, Protocol("clicks", clicks=3), batch_size=16)
    assert [c[0].shape[:2] for c in calls] == [(2, 1), (2, 2), (2, 3)]
    assert calls[0][2] is None and all(c[2].shape == (2, 1, 256, 256) for c in calls[1:])
    assert torch.equal(calls[0][1], torch.ones(2, 1, dtype=torch.long))
    scale = predictor.transform.target_length / max(predictor.original_size)
    for b, instance in enumerate(instances):
        first = calls[0][0][b, 0] / scale - 0.5  # back to pixel indexes
        assert tuple(first.round().long().tolist()) == interior_point(instance.mask)
        for x, y in (calls[-1][0][b, 1:] / scale - 0.5).round().long().tolist():
            assert 0 <= x < instance.mask.shape[1] and 0 <= y < instance.mask.shape[0]
    assert set(calls[-1][1].flatten().tolist()) <= {-1, 0, 1}


def test_single_mask_output(predictor, instances):
    ious = score_instances(predictor, instances, Protocol("box", select="single"), batch_size=16)
    assert len(ious) == len(instances) and all(0.0 <= v <= 1.0 for v in ious)
