"""The metric, the size buckets and the protocol presets, on masks whose answer is known by construction."""

import numpy as np
import pytest
import torch

from bigl_sam.errors import BiglSamError
from bigl_sam.evaluation.protocol import PRESETS, Protocol, box_xywh_to_xyxy, mask_iou, size_buckets
from eval_coco_data import rectangle


def test_mask_iou_of_overlapping_rectangles():
    a = torch.from_numpy(rectangle(20, 20, 0, 0, 10, 10))  # 100 pixels
    b = torch.from_numpy(rectangle(20, 20, 5, 0, 15, 10))  # 100 pixels, 50 shared
    assert mask_iou(a, b).item() == pytest.approx(50 / 150)
    assert mask_iou(a, a).item() == 1.0
    assert mask_iou(a, torch.zeros_like(a)).item() == 0.0


def test_mask_iou_broadcasts_over_batch_and_outputs():
    gt = torch.from_numpy(np.stack([rectangle(8, 8, 0, 0, 4, 4), rectangle(8, 8, 0, 0, 8, 8)]))  # B x H x W
    pred = torch.stack([gt, torch.ones_like(gt), torch.zeros_like(gt)], dim=1)  # B x 3 x H x W
    expected = torch.tensor([[1.0, 16 / 64, 0.0], [1.0, 1.0, 0.0]], dtype=torch.double)
    assert torch.equal(mask_iou(pred, gt[:, None]), expected)


def test_two_empty_masks_match_unless_told_otherwise():
    empty = torch.zeros(4, 4, dtype=torch.bool)
    assert mask_iou(empty, empty).item() == 1.0
    assert mask_iou(empty, empty, both_empty=0.0).item() == 0.0  # EfficientViT-SAM's intersection / (union + 1e-7)


@pytest.mark.parametrize(
    "area, bucket",
    [(0, "small"), (32**2 - 1, "small"), (32**2, "medium"), (96**2 - 0.5, "medium"), (96**2, "large"), (1e6, "large")],
)
def test_size_buckets_use_coco_bounds(area, bucket):
    assert size_buckets(area) == (bucket,)


@pytest.mark.parametrize(
    "area, buckets",
    [(32**2 - 1, ("small",)), (32**2, ("small", "medium")), (96**2 - 1, ("medium",)), (96**2, ("medium", "large"))],
)
def test_inclusive_buckets_count_a_bound_in_both(area, buckets):
    """EfficientViT-SAM's `get_iou_metric` keeps `area <= 32**2` as small and `32**2 <= area <= 96**2` as medium."""
    assert size_buckets(area, inclusive=True) == buckets


def test_box_xywh_to_xyxy():
    assert box_xywh_to_xyxy([3, 4, 10, 20]) == (3.0, 4.0, 13.0, 24.0)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"prompt": "scribble"}, "unknown prompt"),
        ({"select": "best"}, "unknown mask selection"),
        ({"prompt": "clicks", "clicks": 0}, "at least 1"),
        ({"prompt": "box", "clicks": 3}, "needs --prompt clicks"),
        ({"preset": "samurai"}, "unknown --protocol"),
        ({"preset": "ours", "select": "argmax"}, "--protocol ours was removed"),
        ({"preset": "efficientsam", "prompt": "clicks", "clicks": 3}, "defines no --prompt clicks"),
    ],
)
def test_protocol_rejects_bad_settings(kwargs, message):
    with pytest.raises(BiglSamError, match=message):
        Protocol(**kwargs)


def test_click_rounds():
    assert Protocol("box").click_rounds == 1
    assert Protocol("point").click_rounds == 1
    assert Protocol("clicks", clicks=4).click_rounds == 4


def test_ignored_pixels_count_nowhere_in_the_iou():
    gt = torch.from_numpy(rectangle(10, 10, 0, 0, 5, 10))  # 50 pixels
    pred = torch.from_numpy(rectangle(10, 10, 0, 0, 6, 10))  # 10 more, all in the ignore band
    counted = ~torch.from_numpy(rectangle(10, 10, 5, 0, 6, 10))
    assert mask_iou(pred, gt).item() == pytest.approx(50 / 60)
    assert mask_iou(pred, gt, counted).item() == 1.0


def test_presets_take_their_papers_settings():
    efficientvit, edgesam, efficientsam = Protocol(), Protocol(preset="edgesam"), Protocol(preset="efficientsam")
    assert efficientvit.preset == "efficientvit" and efficientvit.select == "argmax"
    assert efficientvit.rule.correction == "distance" and not efficientvit.rule.pixel_centre
    assert not efficientvit.feed_logits and efficientvit.score_crowd
    assert efficientvit.score_empty and efficientvit.inclusive_buckets and efficientvit.rule.on_exact == "corner"
    assert not efficientsam.score_empty and not efficientsam.inclusive_buckets and efficientsam.rule.on_exact == "stop"
    assert edgesam.select == "single" and edgesam.rule is None and not edgesam.score_crowd  # edgesam.py's steps
    assert edgesam.to_dict()["click_rule"] is None
    assert Protocol(preset="efficientsam", prompt="point").rule.first == "random"
    assert Protocol(select="oracle").select == "oracle"  # --select overrides the preset's
    assert set(PRESETS) == {"efficientvit", "edgesam", "efficientsam"}
