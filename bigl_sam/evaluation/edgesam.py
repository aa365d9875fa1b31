"""`eval coco --protocol edgesam`: EdgeSAM's COCO mIoU, step by step as its own code computes it
(chongzhou96/EdgeSAM: evaluation/eval_mIoU.py as scripts/eval_mIoU.sh runs it, with
training/data/coco_dataset.py, edge_sam/utils/transforms.py and edge_sam/utils/common.py).

Where that differs from `SamPredictor` and from the other presets:

- images: in the annotation file's order (its draws depend on the order), every non-crowd annotation scored
  (`area < 1` included);
- encoder input: the image as float, resized with `F.interpolate(bilinear, antialias=True)`, not the uint8
  image through Pillow;
- ground truth: nearest-resized into the encoder's frame (S x S, zero-padded), bilinearly resized back to the
  image and thresholded at 0, which widens it a little; that is the mask scored and the points' source;
- the point: the maximum of the cascaded-convolution distance transform of the frame's mask, as kornia 0.7.1
  (the version EdgeSAM pins) computes it, first in raster order, as an integer frame coordinate;
- corrective points: on the low-res (S/4) logits of the previous round and the ground truth bilinearly
  reduced to that size, within the image's part of the frame; one pixel drawn uniformly from the error (a
  missed pixel is positive, a false one negative); under 10 error pixels, an ignored point whose prompt token
  is zero. The draws come from one torch generator per process, seeded 0 and advanced once as their
  DataLoader does, in the order image, round, annotation: EdgeSAM's global generator. Their script runs 3
  rounds (`--refine-iter 3`) and reports each, so `--prompt clicks` draws 3 rounds (more if `--clicks` asks)
  and scores the one after `--clicks` clicks;
- output: the first mask token (single-mask output), no mask input; IoU at the image's resolution, and a
  ground truth and prediction both empty have none (EdgeSAM drops the NaN).
"""

from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from segment_anything import SamPredictor
from segment_anything.utils.transforms import ResizeLongestSide

from .coco import CocoInstances
from .decoding import DecoderClock
from .instances import CocoMiou
from .protocol import Protocol, mask_iou

SEED = 0  # torch.manual_seed(0) before their loop
MIN_ERROR_PIXELS = 10  # fewer error pixels than this at low resolution: no corrective point
IGNORED_LABEL = -2  # their label for "no point": the token is set to zero
DISTANCE_SOFTNESS = 0.35  # kornia's `h`, the soft minimum of its distance transform (kernel size 3)
# scripts/eval_mIoU.sh runs `--refine-iter 3` and reports each round: the third round's draws move the
# generator for the next image, so they are made for `--clicks 2` too.
SCRIPT_ROUNDS = 3


def draw_generator() -> torch.Generator:
    """The state of EdgeSAM's global generator when its first image is scored: seeded 0, then one int64 drawn
    by `iter(DataLoader)` for its workers' base seed."""
    generator = torch.Generator().manual_seed(SEED)
    torch.empty((), dtype=torch.int64).random_(generator=generator)
    return generator


def float_resized(image: np.ndarray, long_side_pixels: int) -> torch.Tensor:
    """H x W x 3 uint8 -> 1 x 3 x h x w float32, the long side `long_side_pixels`, resized as float with
    antialiasing (EdgeSAM's `apply_image_torch`), values not rounded."""
    h, w = ResizeLongestSide.get_preprocess_shape(image.shape[0], image.shape[1], long_side_pixels)
    pixels = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))[None].float()
    return F.interpolate(pixels, (h, w), mode="bilinear", align_corners=False, antialias=True)


def set_float_image(predictor: SamPredictor, image: np.ndarray) -> None:
    """Encodes the H x W x 3 uint8 image in `predictor` from `float_resized` (SAM's normalisation and
    padding follow, as in EdgeSAM's loader)."""
    resized = float_resized(image, predictor.model.image_encoder.img_size)
    predictor.set_torch_image(resized.to(predictor.device), image.shape[:2])


def frame_mask(mask: np.ndarray, input_size: Tuple[int, int], frame_pixels: int) -> torch.Tensor:
    """H x W bool -> S x S float32 (S: `frame_pixels`): nearest-resized to `input_size` (h, w), zero-padded."""
    h, w = input_size
    resized = F.interpolate(torch.from_numpy(mask.astype(np.uint8))[None, None], (h, w), mode="nearest")
    return F.pad(resized, (0, frame_pixels - w, 0, frame_pixels - h))[0, 0].float()


def round_trip(frame: torch.Tensor, input_size: Tuple[int, int], original_size: Tuple[int, int]) -> torch.Tensor:
    """S x S float frame mask -> H x W bool: its h x w part bilinearly resized to the image, above 0."""
    h, w = input_size
    back = F.interpolate(frame[None, None, :h, :w], original_size, mode="bilinear", align_corners=False)
    return back[0, 0] > 0


def cascade_distance(sources: torch.Tensor) -> torch.Tensor:
    """H x W float (1: a source pixel, 0: not) -> H x W float32 distance to the nearest source, by kornia
    0.7.1's `distance_transform` rule: 3 x 3 taps exp(-d / h), replicated border; at round i every pixel
    newly reached (its soft minimum -h log(sum of taps over reached pixels) above 0) takes that value plus
    i * 3 // 2, and becomes a source. It stops when a round reaches no pixel."""
    offsets = torch.arange(3, dtype=torch.float32) - 1
    taps = torch.exp(torch.hypot(offsets[None, :], offsets[:, None]) / -DISTANCE_SOFTNESS)[None, None]
    reached = sources[None, None].float()
    distance = torch.zeros_like(reached)
    for step in range(max(sources.shape)):
        window = F.conv2d(F.pad(reached, (1, 1, 1, 1), mode="replicate"), taps)
        soft_min = torch.nan_to_num(-DISTANCE_SOFTNESS * torch.log(window), posinf=0.0)
        new = (soft_min > 0).float()
        if not new.any():
            break
        distance = distance + (step * 3 // 2 + soft_min) * new
        reached = torch.where(new == 1, torch.ones_like(reached), reached)
    return distance[0, 0]


def centre_point(frame: torch.Tensor) -> Tuple[int, int]:
    """S x S mask -> (x, y): the first pixel in raster order at the maximum of `cascade_distance` from the
    pixels outside it, the frame's edge counting as outside; (0, 0) for an empty mask. Computed on the mask's
    bounding box and a one-pixel ring: outside that every pixel is a source, so the result is the same."""
    ys, xs = torch.nonzero(frame > 0, as_tuple=True)
    if len(ys) == 0:
        return 0, 0
    y0, x0 = int(ys.min()), int(xs.min())
    inside = frame[y0 : int(ys.max()) + 1, x0 : int(xs.max()) + 1] > 0
    distance = cascade_distance(F.pad((~inside).float(), (1, 1, 1, 1), value=1.0))[1:-1, 1:-1]
    y, x = divmod(int(distance.argmax()), distance.shape[1])
    return x0 + x, y0 + y


def low_res_valid(input_size: Tuple[int, int], frame_pixels: int, low_res_pixels: int) -> torch.Tensor:
    """L x L float: the image's part of the frame (1 in its h x w corner) bilinearly reduced to L x L."""
    valid = torch.zeros(1, 1, frame_pixels, frame_pixels)
    valid[..., : input_size[0], : input_size[1]] = 1
    return F.interpolate(valid, (low_res_pixels, low_res_pixels), mode="bilinear", align_corners=False)[0, 0]


def low_res_truth(frame: torch.Tensor, low_res_pixels: int) -> torch.Tensor:
    """S x S float frame mask -> L x L bool: bilinearly reduced, above 0."""
    reduced = F.interpolate(frame[None, None], (low_res_pixels, low_res_pixels), mode="bilinear",
                            align_corners=False)
    return reduced[0, 0] > 0


def corrective_point(logits: torch.Tensor, truth: torch.Tensor, valid: torch.Tensor, generator: torch.Generator,
                     draws: List[int]) -> Tuple[Tuple[int, int], int]:
    """logits: L x L low-res logits of the previous round; truth: L x L bool (`low_res_truth`); valid: L x L
    (`low_res_valid`) -> ((x, y) in low-res pixels, label): 1 on a missed pixel, 0 on a false one, or
    ((0, 0), IGNORED_LABEL) when the error has under MIN_ERROR_PIXELS pixels. The error is compared as
    EdgeSAM does, masks times `valid`: where `valid` is fractional, a false pixel counts and a missed one does
    not. The size of the error drawn from is appended to `draws`."""
    predicted = (logits.float().cpu() > 0) * valid
    expected = truth * valid
    differ = predicted != expected
    false, missed = differ & (expected == 0), differ & (expected == 1)
    ys, xs = torch.nonzero(false | missed, as_tuple=True)
    if len(ys) < MIN_ERROR_PIXELS:
        return (0, 0), IGNORED_LABEL
    pick = int(torch.randint(len(ys), (1,), generator=generator))
    draws.append(len(ys))
    y, x = int(ys[pick]), int(xs[pick])
    return (x, y), int(missed[y, x])


def frame_box(box_xywh: Sequence[float], original_size: Tuple[int, int], input_size: Tuple[int, int]) -> List[float]:
    """An annotation's [x, y, w, h] -> XYXY in the frame: x, y, w, h scaled in float32, then the corners
    added (EdgeSAM's loader)."""
    pairs = torch.tensor(list(box_xywh), dtype=torch.float64).reshape(2, 2).float()  # (x, y), (w, h)
    pairs[:, 0] = pairs[:, 0] * (input_size[1] / original_size[1])
    pairs[:, 1] = pairs[:, 1] * (input_size[0] / original_size[0])
    return torch.cat([pairs[0], pairs[0] + pairs[1]]).tolist()


class EdgeSamMiou(CocoMiou):
    """`eval coco --protocol edgesam`: the job, with EdgeSAM's steps (module docstring)."""

    min_area = 0.0  # their loader keeps every non-crowd annotation
    file_order = True  # their draws continue from image to image

    def __init__(self, dataset: CocoInstances, protocol: Protocol, batch_size: int,
                 max_images: Optional[int] = None) -> None:
        super().__init__(dataset, protocol, batch_size, max_images)
        self.resume([], {})

    @property
    def results_depend_on_sharding(self) -> bool:
        """Corrective points come from one generator per process, so they depend on which images it takes."""
        return self.protocol.prompt == "clicks"

    def resume(self, mine: Sequence[int], done: Dict[int, dict]) -> None:
        """Before a model's run: this process's images in order and their records on disk. The generator
        starts afresh and replays the draws of the records it passes before each image it scores."""
        self._generator = draw_generator()
        self._order, self._records, self._position = list(mine), dict(done), 0

    def encode(self, predictor: SamPredictor, image: np.ndarray) -> None:
        set_float_image(predictor, image)

    def score(self, predictor: SamPredictor, image_id: int, clock: DecoderClock) -> dict:
        self._catch_up(image_id)
        model = predictor.model
        frame_pixels = model.image_encoder.img_size
        low_res_pixels = model.prompt_encoder.mask_input_size[0]
        original_size, input_size = predictor.original_size, predictor.input_size
        instances = self.dataset.instances(image_id)
        truths, low_truths, points = [], [], []
        for instance in instances:
            frame = frame_mask(instance.mask, input_size, frame_pixels)
            truths.append(round_trip(frame, input_size, original_size))
            low_truths.append(low_res_truth(frame, low_res_pixels))
            points.append(centre_point(frame) if self.protocol.prompt != "box" else None)
        boxes = None
        if self.protocol.prompt == "box":
            ann_boxes = [self.dataset.box_xywh(i.ann_id) for i in instances]
            boxes = torch.tensor([frame_box(b, original_size, input_size) for b in ann_boxes])
            clicks: List[List[tuple]] = [[] for _ in instances]
        else:
            clicks = [[(x, y, 1)] for x, y in points]
        valid = low_res_valid(input_size, frame_pixels, low_res_pixels)
        draws: List[int] = []
        scale = frame_pixels / low_res_pixels
        logits = self._decode(predictor, clicks, boxes, clock)
        scored_logits = logits
        rounds = max(self.protocol.click_rounds, SCRIPT_ROUNDS) if self.protocol.prompt == "clicks" else 1
        for finished in range(2, rounds + 1):  # the rounds done once this one is decoded
            for k in range(len(instances)):
                (x, y), label = corrective_point(logits[k, 0], low_truths[k], valid, self._generator, draws)
                clicks[k].append((int(x * scale), int(y * scale), label))
            logits = self._decode(predictor, clicks, boxes, clock)
            if finished == self.protocol.click_rounds:
                scored_logits = logits
        self._position += 1
        logits = scored_logits
        scored, empty = [], []
        for start in range(0, len(instances), self.batch_size):
            batch = slice(start, start + self.batch_size)
            masks = model.postprocess_masks(logits[batch], input_size, original_size)[:, 0] > model.mask_threshold
            gt = torch.stack(truths[batch]).to(masks.device)
            for instance, iou, mask, truth in zip(instances[batch], mask_iou(masks, gt).tolist(), masks, gt):
                if not (mask.any() or truth.any()):
                    empty.append(instance.ann_id)  # no IoU: their 0 / 0 is a NaN, left out of the mean
                else:
                    scored.append({"id": instance.ann_id, "area": instance.area, "iou": iou})
        return {"instances": scored, "empty_masks": empty, "draws": draws}

    def _catch_up(self, image_id: int) -> None:
        """Replays the draws of this process's images before `image_id` that were scored in an earlier run."""
        while self._order[self._position] != image_id:
            for size in self._records.get(self._order[self._position], {}).get("draws", []):
                torch.randint(size, (1,), generator=self._generator)
            self._position += 1

    def _decode(self, predictor: SamPredictor, clicks: List[List[tuple]], boxes: Optional[torch.Tensor],
                clock: DecoderClock) -> torch.Tensor:
        """N lists of (x, y, label) frame points and N x 4 frame boxes (or None) -> N x 1 x L x L low-res
        logits of the first mask token; ignored points' tokens are zero."""
        model, device = predictor.model, predictor.device
        parts = []
        for start in range(0, len(clicks), self.batch_size):
            points = None
            if clicks[start]:
                table = torch.tensor(clicks[start : start + self.batch_size], dtype=torch.float, device=device)
                points = (table[..., :2], table[..., 2])
            box = None if boxes is None else boxes[start : start + self.batch_size].to(device)
            begin = clock.now()
            sparse, dense = model.prompt_encoder(points=points, boxes=box, masks=None)
            if points is not None:
                sparse[:, : points[1].shape[1]][points[1] == IGNORED_LABEL] = 0.0
            low_res, _ = model.mask_decoder(image_embeddings=predictor.features,
                                            image_pe=model.prompt_encoder.get_dense_pe(),
                                            sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense,
                                            multimask_output=False)
            clock.seconds += clock.now() - begin
            parts.append(low_res)
        return torch.cat(parts)
