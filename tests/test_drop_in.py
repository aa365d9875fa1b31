"""The unmodified segment_anything predictor and mask generator run on a big.LITTLE SAM."""

import numpy as np
import pytest
import torch

from bigl_sam import SamAutomaticMaskGenerator, SamPredictor, sam_model_registry
from bigl_sam.modeling import routing_map


@pytest.fixture(scope="module")
def student(student_checkpoint):
    return sam_model_registry["bigl_test"](checkpoint=student_checkpoint("bigl_test"))


@pytest.fixture(scope="module")
def image():
    return np.random.default_rng(1).integers(0, 256, size=(240, 320, 3), dtype=np.uint8)


def test_predictor_points_and_boxes(student, image):
    predictor = SamPredictor(student)
    predictor.set_image(image)
    masks, scores, logits = predictor.predict(
        point_coords=np.array([[60, 40]]), point_labels=np.array([1]), box=np.array([10, 10, 200, 150])
    )
    assert masks.shape == (3, 240, 320) and masks.dtype == bool
    assert scores.shape == (3,) and logits.shape == (3, 256, 256)


def test_automatic_mask_generator(student, image):
    generator = SamAutomaticMaskGenerator(
        student, points_per_side=4, pred_iou_thresh=0.0, stability_score_thresh=0.0, box_nms_thresh=1.0
    )
    records = generator.generate(image)
    assert records, "with every threshold open, each point prompt must yield a mask"
    assert {"segmentation", "area", "bbox", "predicted_iou", "point_coords"} <= records[0].keys()
    assert records[0]["segmentation"].shape == (240, 320)


def test_keep_ratio_is_a_runtime_knob(student, image):
    predictor = SamPredictor(student)
    routing = []  # each block returns (tokens, the indexes its P-path updated): what the predictor routed
    hooks = [block.register_forward_hook(lambda module, args, out: routing.append(out[1]))
             for block in student.image_encoder.blocks]  # fmt: skip
    features = {}
    try:
        for ratio in (0.25, 0.5, 0.25):
            student.image_encoder.keep_ratio = ratio
            routing.clear()
            predictor.set_image(image)
            features.setdefault(ratio, []).append(predictor.features.clone())
            counts = routing_map(routing, (64, 64))[0]
            # 240 x 320 fills 768 x 1024 of the input: 48 of 64 token rows hold the image.
            assert counts[:48].mean().item() == pytest.approx(ratio, abs=1e-3)
            assert counts[48:].max().item() == 0, "the P-path budget must not go to padding"
    finally:
        for hook in hooks:
            hook.remove()
    assert torch.equal(*features[0.25]), "the same budget must give the same embedding"
    assert not torch.allclose(features[0.25][0], features[0.5][0])


def test_routing_map_at_full_budget(student):
    with torch.no_grad():
        _, routing = student.image_encoder.forward_with_routing(torch.randn(2, 3, 1024, 1024), keep_ratio=1.0)
    assert torch.equal(routing_map(routing, (64, 64)), torch.ones(1, 64, 64))


def test_bad_keep_ratio(student):
    with pytest.raises(ValueError, match="keep ratio must be in"):
        student.image_encoder(torch.zeros(1, 3, 1024, 1024), keep_ratio=0.0)
