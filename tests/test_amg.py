"""`bigl_sam.mask_generator.MaskGenerator` gives segment_anything's `SamAutomaticMaskGenerator` masks, bit for bit."""

import math
import re

import numpy as np
import pytest
import torch
from segment_anything import SamAutomaticMaskGenerator
from torch import nn
from torch.utils.flop_counter import FlopCounterMode
from segment_anything.utils.amg import mask_to_rle_pytorch, rle_to_mask

from bigl_sam import build_model
from bigl_sam import mask_generator_settings as amg_settings
from bigl_sam.errors import BiglSamError
from bigl_sam.mask_generator import MaskGenerator, agreement, masks_to_rles, rle_to_binary_mask, same_masks
from bigl_sam.mask_generator_settings import AmgSettings
from bigl_sam.modeling import get_config
from conftest import randomize_, small_test_configs

# Random weights give small logits and low predicted IoUs: thresholds under which some masks pass and some
# do not; box NMS at 1.0 keeps distinct masks whose boxes all span the image.
SURVIVE = dict(pred_iou_thresh=0.02, stability_score_thresh=0.6, stability_score_offset=0.02, box_nms_thresh=1.0)


def photo(height: int = 120, width: int = 160, seed: int = 0) -> np.ndarray:
    """A photo-like H x W x 3 uint8 image: a background, overlapping discs of flat colours, sensor noise."""
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[:height, :width]
    image = np.zeros((height, width, 3), np.float32) + rng.uniform(0, 255, 3)
    for _ in range(6):
        y, x, radius = rng.uniform(0, height), rng.uniform(0, width), rng.uniform(10, 40)
        image[(rows - y) ** 2 + (cols - x) ** 2 < radius**2] = rng.uniform(0, 255, 3)
    return np.clip(image + rng.normal(0, 8, image.shape), 0, 255).astype(np.uint8)


_models = {}


def random_model(name: str):
    """The same random weights whichever tests ran before (the global generator is seeded apart)."""
    if name not in _models:
        small = {config.name: config for config in small_test_configs()}
        with torch.random.fork_rng():
            torch.manual_seed(0)
            _models[name] = randomize_(build_model(small.get(name) or get_config(name)), 0).eval()
    return _models[name]


def assert_same(model, image, **settings):
    theirs = SamAutomaticMaskGenerator(model, **settings).generate(image)
    ours = MaskGenerator(model, **settings).generate(image)
    assert same_masks(ours, theirs), (len(ours), len(theirs))
    return ours


@pytest.mark.parametrize("name", ["vit_test_256", "bigl_test_256"])
def test_same_masks_where_masks_survive(one_thread, name):
    ours = assert_same(random_model(name), photo(), points_per_side=8, **SURVIVE)
    assert 0 < len(ours) < 3 * 8 * 8  # the filters both kept and dropped masks


@pytest.mark.parametrize("name,points", [("vit_test_256", 8), ("bigl_test", 4)])
def test_same_masks_at_sam_defaults(one_thread, name, points):
    assert_same(random_model(name), photo(), points_per_side=points)


def test_same_masks_with_a_crop_layer(one_thread):
    ours = assert_same(random_model("vit_test_256"), photo(), points_per_side=4, crop_n_layers=1,
                       crop_nms_thresh=1.0, output_mode="coco_rle", **SURVIVE)
    assert ours  # (masks of the 4 crops all touch their crop's inner edges: SAM's crop-edge filter drops them)


def test_same_masks_with_small_regions_removed(one_thread):
    assert_same(random_model("bigl_test_256"), photo(seed=1), points_per_side=8, min_mask_region_area=100,
                output_mode="uncompressed_rle", **SURVIVE)


def test_rles_are_sams():
    generator = torch.Generator().manual_seed(0)
    masks = torch.rand(5, 7, 9, generator=generator) > 0.5
    masks[0] = True
    masks[1] = False
    masks[2, 0, 0] = True
    ours = masks_to_rles(masks)
    assert ours == mask_to_rle_pytorch(masks)
    for rle in ours:
        assert np.array_equal(rle_to_binary_mask(rle), rle_to_mask(rle))


def embedding_bytes(model) -> int:
    return 4 * model.prompt_encoder.embed_dim * math.prod(model.prompt_encoder.image_embedding_size)


@pytest.mark.parametrize("points,expected", [(40, 40), (0.5, 1), (10**6, amg_settings.MAX_AUTO_POINTS)])
def test_auto_batch_is_the_points_that_fit_in_free_memory(monkeypatch, points, expected):
    per_point = amg_settings.DECODER_EMBEDDINGS_PER_POINT * 4096
    free = points * per_point / amg_settings.AUTO_MEMORY_SHARE
    monkeypatch.setattr(amg_settings, "free_memory_bytes", lambda device: free)
    assert amg_settings.auto_points_per_batch(4096, torch.device("cpu")) == expected


def test_auto_batch_gives_the_masks_of_sams_batch(one_thread, monkeypatch):
    model = random_model("vit_test_256")
    fits_40 = 40 * amg_settings.DECODER_EMBEDDINGS_PER_POINT * embedding_bytes(model) / amg_settings.AUTO_MEMORY_SHARE
    monkeypatch.setattr(amg_settings, "free_memory_bytes", lambda device: fits_40)
    generator = MaskGenerator(model, points_per_side=8, points_per_batch="auto", **SURVIVE)
    assert generator.points_per_batch == 40  # 64 points: batches of 40 and 24, where SAM's is one of 64
    theirs = SamAutomaticMaskGenerator(model, points_per_side=8, **SURVIVE).generate(photo())
    assert theirs and same_masks(generator.generate(photo()), theirs)


def test_shared_image_work_skips_the_first_layers_image_projections(one_thread):
    model = random_model("vit_test_256")
    generator = MaskGenerator(model, points_per_side=8, output_mode="coco_rle", share_image_work=True, **SURVIVE)
    attention = model.mask_decoder.transformer.layers[0].cross_attn_token_to_image
    assert isinstance(attention.k_proj, nn.Linear)  # the model's own decoder is untouched...
    assert generator.decoder.transformer.layers[0].cross_attn_token_to_image.k_proj.projection.weight is \
        attention.k_proj.weight  # ... and its weights are shared, not copied
    prompts = 5
    sparse, dense = model.prompt_encoder(points=(torch.rand(prompts, 1, 2) * 200, torch.ones(prompts, 1)),
                                         boxes=None, masks=None)
    channels, grid = model.prompt_encoder.embed_dim, model.prompt_encoder.image_embedding_size
    inputs = dict(image_embeddings=torch.randn(1, channels, *grid), image_pe=model.prompt_encoder.get_dense_pe(),
                  sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense, multimask_output=True)
    macs = []
    for decoder in (model.mask_decoder, generator.decoder):
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            decoder(**inputs)
        macs.append(counter.get_total_flops() // 2)
    tokens = math.prod(grid)
    assert macs[0] - macs[1] == (prompts - 1) * 3 * tokens * channels * channels // 2  # k, v; and q of image -> token
    theirs = SamAutomaticMaskGenerator(model, points_per_side=8, output_mode="coco_rle", **SURVIVE).generate(photo())
    matched, iou_sum = agreement(generator.generate(photo()), theirs)
    assert theirs and matched == len(theirs) and iou_sum / len(theirs) > 0.99


def test_failed_compile_is_one_error_and_leaves_the_decoder_eager(monkeypatch):
    model = random_model("vit_test_256")

    def broken_compile(function, **kwargs):
        def fails(*args, **kw):
            raise RuntimeError("no C++ compiler")
        return fails

    monkeypatch.setattr(torch, "compile", broken_compile)
    with pytest.raises(BiglSamError, match=re.escape("compiling the mask decoder failed (RuntimeError: no C++ "
                                                     "compiler)")):
        MaskGenerator(model, points_per_side=2, compiled=True)
    assert "forward" not in vars(model.mask_decoder)


@pytest.mark.parametrize("settings,message", [
    (dict(pred_iou_thresh=-0.1), "pred_iou_thresh must be in [0, 1]"),
    (dict(points_per_side=0), "points_per_side must be at least 1"),
    (dict(crop_n_layers=4), "makes 341 crops per image; the limit is 85"),
    (dict(points_per_batch=2.5), "points_per_batch must be a whole number of at least 1 or auto, got 2.5"),
])
def test_bad_settings_are_one_error(settings, message):
    with pytest.raises(BiglSamError, match=re.escape(message)):
        AmgSettings(**settings)


def test_generator_refuses_what_sams_would_run_wrongly():
    with pytest.raises(BiglSamError, match=re.escape("points_per_side must be at least 1, got 0")):
        MaskGenerator(random_model("vit_test_256"), points_per_side=0)
