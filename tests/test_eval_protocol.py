"""The metric and the prompt simulators, on masks whose answer is known by construction."""

import numpy as np
import pytest
import torch

from bigl_sam.errors import BiglSamError
from bigl_sam.evaluation.protocol import Protocol, box_xywh_to_xyxy, interior_point, mask_iou, next_click, size_bucket
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


def test_two_empty_masks_match():
    empty = torch.zeros(4, 4, dtype=torch.bool)
    assert mask_iou(empty, empty).item() == 1.0


@pytest.mark.parametrize(
    "area, bucket",
    [(0, "small"), (32**2 - 1, "small"), (32**2, "medium"), (96**2 - 0.5, "medium"), (96**2, "large"), (1e6, "large")],
)
def test_size_buckets_use_coco_bounds(area, bucket):
    assert size_bucket(area) == bucket


def test_box_xywh_to_xyxy():
    assert box_xywh_to_xyxy([3, 4, 10, 20]) == (3.0, 4.0, 13.0, 24.0)


def test_interior_point_of_a_square_is_its_centre():
    x, y = interior_point(rectangle(21, 21, 5, 5, 16, 16))
    assert (x, y) == (10, 10)


def test_interior_point_treats_the_image_edge_as_boundary():
    x, y = interior_point(np.ones((9, 31), dtype=bool))
    assert y == 4 and 4 <= x <= 26


def test_interior_point_of_a_ring_lies_on_the_ring():
    ring = rectangle(40, 40, 5, 5, 35, 35) & ~rectangle(40, 40, 11, 11, 29, 29)  # a 6-pixel thick band
    x, y = interior_point(ring)
    assert ring[y, x]
    assert min(abs(v - edge) for v in (x, y) for edge in (5, 34, 11, 28)) >= 2  # in the band's middle


def test_interior_point_of_a_c_shape_lies_in_the_c():
    c_shape = rectangle(50, 50, 5, 5, 45, 45) & ~rectangle(50, 50, 15, 15, 50, 35)  # open to the right
    x, y = interior_point(c_shape)
    assert c_shape[y, x]


def test_interior_point_of_an_empty_mask_is_an_error():
    with pytest.raises(ValueError):
        interior_point(np.zeros((5, 5), dtype=bool))


def test_next_click_is_positive_in_the_missed_region():
    gt = rectangle(30, 30, 0, 0, 30, 30)
    pred = rectangle(30, 30, 0, 0, 15, 30)  # misses the right half
    x, y, label = next_click(pred, gt)
    assert label == 1 and gt[y, x] and not pred[y, x]


def test_next_click_is_negative_in_the_false_region():
    gt = rectangle(30, 30, 0, 0, 10, 10)
    pred = gt | rectangle(30, 30, 15, 15, 30, 30)  # an extra blob
    x, y, label = next_click(pred, gt)
    assert label == 0 and pred[y, x] and not gt[y, x]


def test_next_click_goes_to_the_larger_error():
    gt = rectangle(40, 40, 0, 0, 20, 40)
    pred = rectangle(40, 40, 0, 0, 20, 30) | rectangle(40, 40, 30, 35, 32, 37)  # misses 200, adds 4 pixels
    assert next_click(pred, gt)[2] == 1
    pred = gt | rectangle(40, 40, 20, 0, 40, 40)  # adds 800 pixels
    pred[0, 0] = False  # misses 1
    assert next_click(pred, gt)[2] == 0


def test_next_click_on_an_exact_mask_is_none():
    gt = rectangle(10, 10, 2, 2, 6, 6)
    assert next_click(gt.copy(), gt) is None


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"prompt": "scribble"}, "unknown prompt"),
        ({"select": "best"}, "unknown mask selection"),
        ({"prompt": "clicks", "clicks": 0}, "at least 1"),
        ({"prompt": "box", "clicks": 3}, "needs --prompt clicks"),
    ],
)
def test_protocol_rejects_bad_settings(kwargs, message):
    with pytest.raises(BiglSamError, match=message):
        Protocol(**kwargs)


def test_click_rounds():
    assert Protocol("box").click_rounds == 1
    assert Protocol("point").click_rounds == 1
    assert Protocol("clicks", clicks=4).click_rounds == 4
