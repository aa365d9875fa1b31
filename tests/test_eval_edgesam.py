"""`eval coco --protocol edgesam`: each of EdgeSAM's rules (chongzhou96/EdgeSAM evaluation/eval_mIoU.py and
what it imports), and the job's per-instance IoUs against EdgeSAM's steps written out plainly, batched over
each image's annotations in the padded frame as their loop is, on a tiny random SAM."""

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from pycocotools.coco import COCO
from segment_anything.utils.transforms import ResizeLongestSide

from bigl_sam import SamPredictor, build_model
from bigl_sam.evaluation.clicker import interior_point
from bigl_sam.evaluation.coco import CocoInstances
from bigl_sam.evaluation.decoding import DecoderClock
from bigl_sam.evaluation.edgesam import (IGNORED_LABEL, EdgeSamMiou, cascade_distance, centre_point,
                                         corrective_point, draw_generator, float_resized, frame_mask,
                                         low_res_valid, round_trip, set_float_image)
from bigl_sam.evaluation.protocol import Protocol
from bigl_sam.images import load_image
from conftest import randomize_, small_test_configs
from eval_coco_data import make_coco_dataset, rectangle


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_coco_dataset(tmp_path_factory.mktemp("coco"))


@pytest.fixture(scope="module")
def model(one_thread):
    """A random 256 px SAM (16 x 16 embedding, 64 x 64 low-res masks)."""
    return randomize_(build_model(small_test_configs()[0]), 0).eval()


def test_encoder_input_is_the_float_image_resized_with_antialiasing(model):
    image = np.random.default_rng(0).integers(0, 256, (90, 120, 3), dtype=np.uint8)  # noise: resizing shows
    resized = float_resized(image, 256)
    pixels = torch.from_numpy(image).permute(2, 0, 1).float()[None]
    assert torch.equal(resized, F.interpolate(pixels, (192, 256), mode="bilinear", align_corners=False, antialias=True))
    pillow = torch.from_numpy(ResizeLongestSide(256).apply_image(image)).permute(2, 0, 1).float()[None]
    difference = (resized - pillow).abs()
    assert (difference > 0).float().mean() > 0.5 and difference.max() < 1  # Pillow's, but not rounded to uint8
    predictor = SamPredictor(model)
    with torch.no_grad():
        set_float_image(predictor, image)
        edgesam = predictor.features
        assert torch.equal(edgesam, model.image_encoder(model.preprocess(resized)))
        predictor.set_image(image)
    assert not torch.allclose(edgesam, predictor.features)


def test_ground_truth_is_scored_after_the_round_trip_through_the_frame():
    """30 x 40 -> 48 x 64 nearest, back bilinearly, above 0."""
    mask = rectangle(30, 40, 5, 7, 13, 21)
    mask[15, 30] = True  # a lone pixel
    frame = frame_mask(mask, (48, 64), 64)
    assert frame.shape == (64, 64) and frame[48:].sum() == 0  # zero padding below the image
    upsampled = F.interpolate(torch.from_numpy(mask).to(torch.uint8)[None, None], (48, 64), mode="nearest")
    assert torch.equal(frame[:48], upsampled[0, 0].float())
    scored = round_trip(frame, (48, 64), (30, 40)).numpy()
    assert (scored >= mask).all()  # it only grows: by the row below the rectangle, the pixel to a 2 x 2 block
    added = set(zip(*(v.tolist() for v in np.nonzero(scored & ~mask))))
    assert added == {(21, x) for x in range(5, 13)} | {(15, 31), (16, 30), (16, 31)}


@pytest.mark.parametrize(
    "mask, expected",
    [(rectangle(30, 40, 4, 6, 24, 16), (9, 10)), (rectangle(30, 40, 0, 0, 17, 11), (6, 5))],
    ids=["rectangle", "at-the-frame-corner"],
)
def test_centre_point_is_the_cascade_distance_maximum(mask, expected):
    """The expected points are kornia 0.7.1's (EdgeSAM's pinned version; 0.9.0 gives the same here), as
    `get_centroid_from_mask` calls it: the padded frame's inverse, argmax in raster order. The exact Euclidean
    maximum (RITM's first click) is one pixel to the left."""
    frame = torch.from_numpy(mask).float()
    assert centre_point(frame) == expected
    assert interior_point(mask) == (expected[0] - 1, expected[1])
    full = cascade_distance(F.pad(~torch.from_numpy(mask), (1, 1, 1, 1), value=True).float())[1:-1, 1:-1]
    assert divmod(int(full.argmax()), mask.shape[1])[::-1] == expected  # the crop changes nothing
    assert centre_point(torch.zeros(8, 8)) == (0, 0)  # an empty mask: their argmax of all zeros


def test_cascade_distance_adds_kornia_0_7_1_offsets():
    """Along a row into the rectangle, step i adds i * 3 // 2 (0, 1, 3, 4, 6): kornia 0.7.1's values
    (measured; 0.9.0 adds i and gives 0.833, 1.833, 2.833, 3.833, 4.625)."""
    sources = F.pad(~torch.from_numpy(rectangle(30, 40, 4, 6, 24, 16)), (1, 1, 1, 1), value=True).float()
    row = cascade_distance(sources)[12, 5:10].tolist()
    assert row == pytest.approx([0.8327901, 1.8327901, 3.8327901, 4.8327899, 6.6251082], abs=1e-6)


def test_draws_continue_their_global_generator_after_the_data_loader():
    with torch.random.fork_rng():
        torch.manual_seed(0)
        iter(torch.utils.data.DataLoader(range(3)))
        theirs = torch.randint(1000, (8,))
    assert torch.equal(torch.randint(1000, (8,), generator=draw_generator()), theirs)


def test_corrective_point_rule():
    """On 8 x 8: the image covers rows 0..5 of a 32-pixel frame reduced 4x, so row 5 is half valid."""
    valid = low_res_valid((22, 32), 32, 8)
    assert valid[:5].eq(1).all() and valid[5].eq(0.5).all() and valid[6:].eq(0).all()
    truth = torch.zeros(8, 8, dtype=torch.bool)
    truth[2:6, :] = True
    logits = torch.full((8, 8), -1.0)
    logits[2:5, :] = 1.0  # misses row 5 (half valid: not counted) ...
    draws = []
    assert corrective_point(logits, truth, valid, draw_generator(), draws) == ((0, 0), IGNORED_LABEL)
    logits[0, :4] = 1.0  # ... 4 false pixels: still under 10
    assert corrective_point(logits, truth, valid, draw_generator(), draws) == ((0, 0), IGNORED_LABEL)
    assert draws == []
    logits[5, :] = -1.0
    logits[1, :] = 1.0
    logits[2, 6:] = -1.0  # 12 false pixels (rows 0-1), 2 missed (row 2)
    errors = [(x, 0) for x in range(4)] + [(x, 1) for x in range(8)] + [(6, 2), (7, 2)]  # raster order
    generator, twin = draw_generator(), draw_generator()
    for _ in range(20):
        point, label = corrective_point(logits, truth, valid, generator, draws)
        assert point == errors[int(torch.randint(len(errors), (1,), generator=twin))]
        assert label == (1 if point[1] == 2 else 0)
    assert draws == [len(errors)] * 20


def reference_ious(model, image, masks, boxes_xywh, prompt, rounds):
    """EdgeSAM's steps for one image (N annotations), straight: N x 1 x S x S padded frame tensors, the
    kornia-rule distance on the whole frame, the global generator, the prompt encoder's -2 tokens zeroed.
    -> rounds x N IoUs (NaN where both masks are empty)."""
    frame = model.image_encoder.img_size
    height, width = image.shape[:2]
    h, w = ResizeLongestSide.get_preprocess_shape(height, width, frame)
    pixels = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))[None].float()
    pixels = F.interpolate(pixels, (h, w), mode="bilinear", align_corners=False, antialias=True)
    embedding = model.image_encoder(F.pad((pixels - model.pixel_mean) / model.pixel_std, (0, frame - w, 0, frame - h)))
    gt = F.interpolate(torch.from_numpy(np.stack(masks).astype(np.uint8))[:, None], (h, w), mode="nearest")
    gt = F.pad(gt, (0, frame - w, 0, frame - h)).float()
    boxes = torch.tensor(boxes_xywh, dtype=torch.float64).reshape(-1, 2, 2).float()
    boxes[..., 0] = boxes[..., 0] * (w / width)
    boxes[..., 1] = boxes[..., 1] * (h / height)
    boxes = boxes.reshape(-1, 4)
    boxes = torch.cat([boxes[:, :2], boxes[:, :2] + boxes[:, 2:]], dim=1)
    points = None
    if prompt != "box":
        boxes = None
        centres = []
        for g in gt[:, 0] > 0.5:
            distance = cascade_distance((~F.pad(g, (1, 1, 1, 1), value=False)).float())[1:-1, 1:-1]
            index = int(distance.argmax())
            centres.append([index % frame, index // frame])
        points = (torch.tensor(centres, dtype=torch.float)[:, None], torch.ones(len(centres), 1))
    valid = torch.zeros(len(masks), 1, frame, frame)
    valid[..., :h, :w] = 1
    truth = F.interpolate(gt[..., :h, :w], (height, width), mode="bilinear", align_corners=False) > 0
    ious = []
    for step in range(rounds):
        if step > 0:
            low = logits.shape[-1]
            valid_low = F.interpolate(valid, (low, low), mode="bilinear", align_corners=False)
            gt_low = F.interpolate(gt, (low, low), mode="bilinear", align_corners=False)
            predicted, expected = (logits > 0) * valid_low, (gt_low > 0) * valid_low
            false = (predicted != expected) & (expected == 0)
            missed = (predicted != expected) & (expected == 1)
            ys, xs = torch.meshgrid(torch.arange(low), torch.arange(low), indexing="ij")
            grid = torch.stack([xs, ys], dim=-1)
            new_points, new_labels = [], []
            for f, m in zip(false[:, 0], missed[:, 0]):
                point, label = torch.zeros(2), -2.0
                if (f | m).sum() >= 10:
                    candidates = grid[f | m]
                    pick = int(torch.randint(len(candidates), (1,)))  # the global generator
                    x, y = candidates[pick].tolist()
                    point, label = candidates[pick].float() / low * frame, float(m[y, x])
                new_points.append(point)
                new_labels.append(label)
            points = (torch.cat([points[0], torch.stack(new_points)[:, None]], dim=1),
                      torch.cat([points[1], torch.tensor(new_labels)[:, None]], dim=1))
        sparse, dense = model.prompt_encoder(points=points, boxes=boxes, masks=None)
        if points is not None:
            sparse[:, : points[1].shape[1]][points[1] == -2] = 0.0
        logits, _ = model.mask_decoder(image_embeddings=embedding, image_pe=model.prompt_encoder.get_dense_pe(),
                                       sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense,
                                       multimask_output=False)
        pred = F.interpolate(logits, (frame, frame), mode="bilinear", align_corners=False)[..., :h, :w]
        pred = F.interpolate(pred, (height, width), mode="bilinear", align_corners=False) > 0
        ious.append(((pred & truth).sum(dim=(1, 2, 3)) / (pred | truth).sum(dim=(1, 2, 3))).tolist())
    return ious


def run_job(job, model, ids, done=None):
    """The job's records of `ids` (in order), as the runner drives it; `done`: records of an earlier run."""
    predictor = SamPredictor(model)
    job.resume(ids, done or {})
    records = dict(done or {})
    for image_id in ids:
        if image_id not in records:
            job.encode(predictor, load_image(job.image_path(image_id), exif=False))
            records[image_id] = job.score(predictor, image_id, DecoderClock(torch.device("cpu")))
    return records


@pytest.mark.parametrize("prompt, clicks", [("box", 1), ("point", 1), ("clicks", 2), ("clicks", 3)])
def test_per_instance_ious_equal_edgesam_steps(data, model, prompt, clicks):
    """`--clicks 2` is their second round of a 3-round run (scripts/eval_mIoU.sh): the third round's draws
    move the generator before the next image."""
    dataset = CocoInstances(data["annotations"], data["images"], min_area=EdgeSamMiou.min_area)
    job = EdgeSamMiou(dataset, Protocol(prompt, clicks, preset="edgesam"), batch_size=2)
    readable = [i for i in job.image_ids if dataset.image_path(i).exists()]
    coco = COCO()
    coco.dataset = json.loads(data["annotations"].read_text())
    coco.createIndex()
    expected = {}
    with torch.no_grad(), torch.random.fork_rng():
        records = run_job(job, model, readable)
        torch.manual_seed(0)
        for image_id in iter(torch.utils.data.DataLoader(readable, batch_size=None)):
            anns = [a for a in coco.imgToAnns[int(image_id)] if not a["iscrowd"]]
            image = load_image(dataset.image_path(int(image_id)), exif=False)
            ious = reference_ious(model, image, [coco.annToMask(a) for a in anns], [a["bbox"] for a in anns], prompt,
                                  3 if prompt == "clicks" else 1)
            expected.update({a["id"]: iou for a, iou in zip(anns, ious[clicks - 1])})
    got = {i["id"]: i["iou"] for r in records.values() for i in r["instances"]}
    unscored = [i for r in records.values() for i in r["empty_masks"]]
    assert set(got) | set(unscored) == set(expected) and len(got) >= 6
    assert all(np.isnan(expected[i]) for i in unscored)  # their 0 / 0, left out of their mean
    assert [got[i] for i in got] == pytest.approx([expected[i] for i in got], abs=1e-6)
    draws = sum(len(r["draws"]) for r in records.values())
    assert draws > 0 if prompt == "clicks" else draws == 0


def test_resumed_run_replays_the_draws_it_skips(data, model):
    dataset = CocoInstances(data["annotations"], data["images"], min_area=EdgeSamMiou.min_area)
    protocol = Protocol("clicks", 3, preset="edgesam")
    readable = [i for i in EdgeSamMiou(dataset, protocol, 4).image_ids if dataset.image_path(i).exists()]
    with torch.no_grad():
        whole = run_job(EdgeSamMiou(dataset, protocol, 4), model, readable)
        first_two = {i: whole[i] for i in readable[:2]}
        resumed = run_job(EdgeSamMiou(dataset, protocol, 4), model, readable, done=first_two)
    assert resumed == whole
    assert EdgeSamMiou(dataset, protocol, 4).results_depend_on_sharding
    assert not EdgeSamMiou(dataset, Protocol("point", preset="edgesam"), 4).results_depend_on_sharding


def test_images_in_file_order_and_every_non_crowd_annotation(data):
    raw = json.loads(data["annotations"].read_text())
    raw["images"] = raw["images"][::-1]
    path = data["annotations"].with_name("reversed.json")
    path.write_text(json.dumps(raw))
    dataset = CocoInstances(path, data["images"], min_area=EdgeSamMiou.min_area)
    job = EdgeSamMiou(dataset, Protocol("point", preset="edgesam"), 4)
    assert job.image_ids == [5, 4, 3, 2, 1]  # image 6 has only a crowd annotation
    assert [i.area for i in dataset.instances(2)][-1] == 0.0  # their loader keeps it; the other presets do not
