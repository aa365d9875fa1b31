"""The key property: a student fresh from a SAM ViT checkpoint, at keep ratio 1.0, *is* that SAM.

Checked on SAM ViT-B's real architecture with random weights saved in the official checkpoint layout.
"""

import numpy as np
import pytest
import segment_anything
import torch

import bigl_sam

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def vit_b_pair(official_checkpoint):
    path = official_checkpoint("vit_b")
    teacher = segment_anything.sam_model_registry["vit_b"]()  # SAM's own builder, as shipped
    teacher.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    student = bigl_sam.build_student_from_sam("bigl_b_t", encoder_weights=path)
    student.image_encoder.keep_ratio = 1.0
    return teacher, student


@pytest.fixture(scope="module")
def predictions(vit_b_pair):
    image = np.random.default_rng(0).integers(0, 256, size=(300, 400, 3), dtype=np.uint8)
    results = []
    for model in vit_b_pair:
        predictor = bigl_sam.SamPredictor(model)
        predictor.set_image(image)
        masks, scores, logits = predictor.predict(
            point_coords=np.array([[120, 80], [300, 200]]), point_labels=np.array([1, 0]), multimask_output=True
        )
        results.append((predictor.features, masks, logits))
    return results


def test_embeddings_equal_sam_vit_b(predictions):
    (teacher_features, _, _), (student_features, _, _) = predictions
    assert student_features.shape == (1, 256, 64, 64)
    torch.testing.assert_close(student_features, teacher_features, atol=1e-4, rtol=1e-4)


def test_masks_equal_sam_vit_b(predictions):
    (_, teacher_masks, teacher_logits), (_, student_masks, student_logits) = predictions
    np.testing.assert_allclose(student_logits, teacher_logits, atol=1e-3, rtol=1e-3)
    # Pixels whose logit sits within rounding of the threshold may flip; there must be next to none.
    assert (student_masks != teacher_masks).mean() < 1e-4


def test_routing_changes_the_embedding(vit_b_pair):
    """The counter-check: at keep 0.25 the student is no longer SAM (else the tests above prove little)."""
    _, student = vit_b_pair
    image = torch.randn(1, 3, 1024, 1024)
    with torch.no_grad():
        dense = student.image_encoder(image, keep_ratio=1.0)
        routed, routing = student.image_encoder.forward_with_routing(image, keep_ratio=0.25)
    assert routed.shape == dense.shape == (1, 256, 64, 64)
    assert (routed - dense).abs().mean() > 1e-3
    assert len(routing) == 12
    assert all(index.shape == (1, 1024) for index in routing)


def test_small_sam_student_is_the_small_sam_at_keep_one(official_checkpoint):
    """The small SAM of `bigl-sam train` (512-pixel input, 32 x 32 tokens, 8 x 8 windows): its student is
    exact at keep 1.0 too, embeddings and masks through `SamPredictor`."""
    path = official_checkpoint("vit_mini")
    teacher = bigl_sam.load_sam(path)
    student = bigl_sam.build_student_from_sam("bigl_mini", encoder_weights=path)
    student.image_encoder.keep_ratio = 1.0
    image = np.random.default_rng(1).integers(0, 256, size=(200, 300, 3), dtype=np.uint8)
    outputs = []
    for model in (teacher, student):
        predictor = bigl_sam.SamPredictor(model)
        predictor.set_image(image)
        _, _, logits = predictor.predict(point_coords=np.array([[100, 60]]), point_labels=np.array([1]))
        outputs.append((predictor.features, logits))
    assert outputs[0][0].shape == (1, 256, 32, 32) and outputs[0][1].shape == (3, 128, 128)
    torch.testing.assert_close(outputs[1][0], outputs[0][0], atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(outputs[1][1], outputs[0][1], atol=1e-3, rtol=1e-3)
