"""The simulated user (RITM's clicker and the presets' variants) on hand-made masks whose answer is known."""

import numpy as np
import pytest

from bigl_sam.evaluation.clicker import Clicker, ClickRule, interior_point
from eval_coco_data import rectangle

RITM = ClickRule("interior", "distance")
AREA = ClickRule("interior", "area", pixel_centre=True)


def ring(size: int = 40) -> np.ndarray:
    return rectangle(size, size, 5, 5, 35, 35) & ~rectangle(size, size, 11, 11, 29, 29)  # a 6-pixel thick band


def c_shape() -> np.ndarray:
    return rectangle(50, 50, 5, 5, 45, 45) & ~rectangle(50, 50, 15, 15, 50, 35)  # open to the right


def test_interior_point_of_a_square_is_its_centre():
    assert interior_point(rectangle(21, 21, 5, 5, 16, 16)) == (10, 10)


def test_interior_point_treats_the_image_edge_as_boundary():
    x, y = interior_point(np.ones((9, 31), dtype=bool))
    assert y == 4 and 4 <= x <= 26


def test_interior_point_of_an_empty_mask_is_an_error():
    with pytest.raises(ValueError):
        interior_point(np.zeros((5, 5), dtype=bool))


@pytest.mark.parametrize("shape", [ring, c_shape], ids=["ring", "c_shape"])
def test_first_click_lies_deep_inside_a_ring_and_a_c(shape):
    mask = shape()
    x, y, positive = Clicker(mask, RITM).first()
    assert positive and mask[y, x]
    assert mask[y - 2 : y + 3, x - 2 : x + 3].all()  # at least 2 pixels from every edge of the band
    assert (x, y) == interior_point(mask)  # RITM's first click is its correction of an empty prediction


def test_first_click_is_the_first_maximum_in_raster_order():
    mask = rectangle(10, 20, 0, 0, 20, 10) & ~rectangle(10, 20, 9, 0, 11, 10)  # two equal 9 x 10 blocks
    x, y, _ = Clicker(mask, RITM).first()
    assert x < 9  # the left block, as numpy's argmax / np.where take the first


def blobs_where_area_and_distance_disagree():
    """Missed: a 3-pixel strip of 300 pixels (max distance 2). False: a 10 x 10 square (100 pixels, max 5)."""
    gt = rectangle(60, 120, 10, 5, 110, 8) | rectangle(60, 120, 20, 30, 30, 40)
    pred = rectangle(60, 120, 20, 30, 30, 40) | rectangle(60, 120, 60, 30, 70, 40)
    return gt, pred


def test_ritm_corrects_the_region_farther_from_its_boundary():
    gt, pred = blobs_where_area_and_distance_disagree()
    x, y, positive = Clicker(gt, RITM).next(pred)
    assert not positive and (x, y) in {(64, 34), (65, 34), (64, 35), (65, 35)}  # the square's centre


def test_area_rule_corrects_the_larger_region():
    gt, pred = blobs_where_area_and_distance_disagree()
    x, y, positive = Clicker(gt, AREA).next(pred)
    assert positive and 5 <= y < 8 and gt[y, x] and not pred[y, x]


def test_a_tie_in_distance_goes_to_the_false_region_as_in_ritm():
    gt = rectangle(30, 60, 0, 0, 10, 10)
    pred = rectangle(30, 60, 30, 0, 40, 10)  # misses a 10 x 10 square, adds another
    assert Clicker(gt, RITM).next(pred).positive is False
    assert Clicker(gt, AREA).next(pred).positive is True


def test_a_clicked_pixel_is_not_clicked_again():
    gt = rectangle(21, 21, 5, 5, 16, 16)
    clicker = Clicker(gt, RITM)
    first = clicker.first()
    again = clicker.next(np.zeros_like(gt))  # the prediction ignored the click
    assert (again.x, again.y) != (first.x, first.y) and again.positive


def test_exact_prediction_needs_no_click():
    gt = rectangle(10, 10, 2, 2, 6, 6)
    assert Clicker(gt, RITM).next(gt.copy()) is None


def test_ignore_band_is_in_neither_error_region():
    gt = rectangle(40, 40, 10, 10, 30, 30)
    band = rectangle(40, 40, 6, 6, 34, 34) & ~rectangle(40, 40, 12, 12, 28, 28)  # around the object's edge
    object_mask = gt & ~band
    pred = rectangle(40, 40, 6, 6, 34, 34)  # object plus the whole band
    assert Clicker(object_mask, RITM, ignore=band).next(pred) is None
    pred[0:4, 0:4] = True  # a false blob outside the band
    x, y, positive = Clicker(object_mask, RITM, ignore=band).next(pred)
    assert not positive and x < 4 and y < 4


def test_random_first_click_is_seeded_per_object():
    gt = rectangle(30, 30, 5, 5, 25, 25)
    rule = ClickRule("random", "distance")
    first = [Clicker(gt, rule, seed=s).first() for s in range(40)]
    assert first[:3] == [Clicker(gt, rule, seed=s).first() for s in range(3)]
    assert all(gt[c.y, c.x] and c.positive for c in first) and len(set(first)) > 20


def test_offset_is_the_pixel_centre_only_when_asked():
    assert RITM.offset == 0.0 and AREA.offset == 0.5
