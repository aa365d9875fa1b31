"""`MaskGenerator`: segment_anything's `SamAutomaticMaskGenerator`, the same masks (identical RLEs, scores,
boxes, in the same order), with less work per mask.

SAM's generator upsamples all three masks of every point prompt to the image (through img_size x img_size)
and only then drops those whose *predicted* IoU is under `pred_iou_thresh`; it holds a whole batch of
full-size logits at once and run-length encodes mask by mask. Here, per batch of points:

1. the decoder runs exactly as `SamPredictor.predict_torch` runs it (same batches, same inputs);
2. masks are dropped by predicted IoU on their low-res logits, before any upsampling;
3. the survivors are upsampled in chunks of a few masks (bounded memory), through only the part of the
   img_size x img_size grid the image fills (the padding SAM crops away afterwards is never computed:
   bilinear weights depend on the scale alone, so the kept pixels are bit for bit SAM's);
4. stability, thresholds, boxes and the crop-edge filter as SAM computes them, per chunk;
5. the RLEs of a chunk from one pass over its change points.

NMS within and across crops, the small-region postprocessing and the output records are SAM's own.

Two options compute the decoder's sums in other blocks, so they may round differently from SAM's decoder and
are off by default: `compiled` (the TorchInductor-compiled mask decoder the demo runs too) and `share_image_work` (the
first decoder layer's projections of the image embedding made once per image instead of once per prompt:
`image_work_shared`).
"""

import copy
import math
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from pycocotools import mask as mask_utils
from segment_anything import SamPredictor
from segment_anything.automatic_mask_generator import SamAutomaticMaskGenerator
from segment_anything.modeling import MaskDecoder, Sam
from segment_anything.utils.amg import (
    MaskData,
    area_from_rle,
    batched_mask_to_box,
    box_xyxy_to_xywh,
    build_all_layer_point_grids,
    calculate_stability_score,
    coco_encode_rle,
    is_box_near_crop_edge,
    uncrop_boxes_xyxy,
    uncrop_masks,
    uncrop_points,
)
from torch import nn
from torchvision.ops.boxes import batched_nms, box_area

from .errors import BiglSamError, first_line
from .inference import as_embedding, blank_encoding, compile_decoder
from .mask_generator_settings import AUTO, OUTPUT_MODES, AmgSettings, AmgSettingsError, auto_points_per_batch

# Full-size float logits held at once while upsampling and scoring (SAM holds a whole batch: 64 points x 3
# masks x 4 MB at 1024 x 1024).
CHUNK_BYTES = 64 * 2**20
STAGES = ("encoder", "decoder", "scoring", "encoding")
# Two masks are the same object for `agreement` from this IoU on.
MATCH_IOU = 0.9


class MaskGenerator:
    """`SamAutomaticMaskGenerator(model, ...)` with the same arguments and defaults (a `BiglSamError` for a
    setting out of range) and the same `generate(image)` output.

    `seconds` adds up, over `generate` calls, the time spent in each of `STAGES`: the image encoder, the
    prompt encoder and mask decoder, upsampling and scoring (stability, boxes, NMS, small regions), and
    encoding (RLEs and the output form). `masks` counts the masks decoded and those upsampled (the ones
    over `pred_iou_thresh`).

    `points_per_batch="auto"` picks the batch from the device's free memory (`mask_generator_settings.auto_points_per_batch`;
    `points_per_batch` holds the number chosen). `compiled` compiles the model's mask decoder in place, as the
    demo does (`compile_seconds`: the compile and its warm-up); `share_image_work` decodes with
    `image_work_shared(model.mask_decoder)`.
    """

    def __init__(
        self,
        model: Sam,
        points_per_side: Optional[int] = AmgSettings.points_per_side,
        points_per_batch: int = AmgSettings.points_per_batch,
        pred_iou_thresh: float = AmgSettings.pred_iou_thresh,
        stability_score_thresh: float = AmgSettings.stability_score_thresh,
        stability_score_offset: float = AmgSettings.stability_score_offset,
        box_nms_thresh: float = AmgSettings.box_nms_thresh,
        crop_n_layers: int = AmgSettings.crop_n_layers,
        crop_nms_thresh: float = AmgSettings.crop_nms_thresh,
        crop_overlap_ratio: float = AmgSettings.crop_overlap_ratio,
        crop_n_points_downscale_factor: int = AmgSettings.crop_n_points_downscale_factor,
        point_grids: Optional[List[np.ndarray]] = None,
        min_mask_region_area: int = AmgSettings.min_mask_region_area,
        output_mode: str = "binary_mask",
        compiled: bool = False,
        share_image_work: bool = False,
    ) -> None:
        if (points_per_side is None) == (point_grids is None):
            raise AmgSettingsError("give exactly one of points_per_side and point_grids")
        if output_mode not in OUTPUT_MODES:
            raise AmgSettingsError(f"output_mode must be one of {', '.join(OUTPUT_MODES)}, got {output_mode!r}")
        self.settings = AmgSettings(
            points_per_side=AmgSettings.points_per_side if points_per_side is None else points_per_side,
            points_per_batch=points_per_batch, pred_iou_thresh=pred_iou_thresh,
            stability_score_thresh=stability_score_thresh, stability_score_offset=stability_score_offset,
            box_nms_thresh=box_nms_thresh, crop_n_layers=crop_n_layers, crop_nms_thresh=crop_nms_thresh,
            crop_overlap_ratio=crop_overlap_ratio, crop_n_points_downscale_factor=crop_n_points_downscale_factor,
            min_mask_region_area=min_mask_region_area,
        )
        if point_grids is None:
            point_grids = build_all_layer_point_grids(points_per_side, crop_n_layers, crop_n_points_downscale_factor)
        elif len(point_grids) < crop_n_layers + 1:
            raise AmgSettingsError(f"point_grids has {len(point_grids)} grids; crop_n_layers {crop_n_layers} needs "
                                   f"{crop_n_layers + 1}")
        if compiled and share_image_work:
            raise AmgSettingsError("compiled and share_image_work cannot be combined: choose one")
        self.point_grids = point_grids
        self.output_mode = output_mode
        self.predictor = SamPredictor(model)
        self.seconds = dict.fromkeys(STAGES, 0.0)
        self.masks = {"decoded": 0, "upsampled": 0}
        self.points_per_batch = points_per_batch
        if points_per_batch == AUTO:
            embedding = model.prompt_encoder.embed_dim * math.prod(model.prompt_encoder.image_embedding_size)
            self.points_per_batch = auto_points_per_batch(4 * embedding, self.predictor.device)
        self.compiled = compiled
        self.decoder = image_work_shared(model.mask_decoder) if share_image_work else model.mask_decoder
        self.compile_seconds = self._compile() if compiled else 0.0

    @property
    def model(self) -> Sam:
        return self.predictor.model

    def _compile(self) -> float:
        """Compiles the decoder (`inference.compile_decoder`, as the demo does) and warms it up on a batch of
        points, so that `generate` compiles nothing more (the batch size is dynamic, the embedding's layout fixed)."""
        start = time.perf_counter()
        side = self.model.image_encoder.img_size
        points = np.random.default_rng(0).uniform(0, side, (max(2, self.points_per_batch), 2))
        try:
            compile_decoder(self.model)
            with torch.inference_mode():
                self._decode(points, (side, side), blank_encoding(self.model).features)
        except Exception as err:  # inductor's failures have many types (no compiler, unsupported op, ...)
            self.model.mask_decoder.__dict__.pop("forward", None)  # eager again
            raise BiglSamError(f"compiling the mask decoder failed ({first_line(err, with_type=True)})") from err
        return time.perf_counter() - start

    @torch.inference_mode()
    def generate(self, image: np.ndarray) -> List[Dict[str, Any]]:
        """Masks of an H x W x 3 uint8 image: SAM's records (segmentation, area, bbox XYWH, predicted_iou,
        point_coords, stability_score, crop_box XYWH), in SAM's order."""
        s = self.settings
        height, width = image.shape[:2]
        crop_boxes, layers = s.crop_boxes(height, width)
        data = MaskData()
        for crop_box, layer in zip(crop_boxes, layers):
            data.cat(self._crop_masks(image, crop_box, layer))
        start = self._now()
        if len(crop_boxes) > 1:  # duplicates between crops: the mask from the smaller crop wins
            scores = (1 / box_area(data["crop_boxes"])).to(data["boxes"].device)
            data.filter(batched_nms(data["boxes"].float(), scores, torch.zeros(len(data["boxes"])),
                                    iou_threshold=s.crop_nms_thresh))
        data.to_numpy()
        if s.min_mask_region_area > 0:
            data = SamAutomaticMaskGenerator.postprocess_small_regions(
                data, s.min_mask_region_area, max(s.box_nms_thresh, s.crop_nms_thresh))
        encoding = self._add(start, "scoring")
        records = self._records(data)
        self._add(encoding, "encoding")
        return records

    def _crop_masks(self, image: np.ndarray, crop_box: List[int], layer: int) -> MaskData:
        s = self.settings
        x0, y0, x1, y1 = crop_box
        start = self._now()
        crop = image[y0:y1, x0:x1, :]
        self.predictor.set_image(crop)
        self._add(start, "encoder")
        crop_size = crop.shape[:2]
        points = self.point_grids[layer] * np.array(crop_size)[None, ::-1]
        data = MaskData()
        for first in range(0, len(points), self.points_per_batch):
            data.cat(self._batch_masks(points[first:first + self.points_per_batch], crop_size, crop_box,
                                       image.shape[:2]))
        self.predictor.reset_image()
        start = self._now()
        data.filter(batched_nms(data["boxes"].float(), data["iou_preds"], torch.zeros(len(data["boxes"])),
                                iou_threshold=s.box_nms_thresh))
        data["boxes"] = uncrop_boxes_xyxy(data["boxes"], crop_box)
        data["points"] = uncrop_points(data["points"], crop_box)
        data["crop_boxes"] = torch.tensor([crop_box for _ in range(len(data["rles"]))])
        self._add(start, "scoring")
        return data

    def _batch_masks(self, points: np.ndarray, crop_size: Tuple[int, int], crop_box: List[int],
                     original_size: Tuple[int, int]) -> MaskData:
        """Masks of a batch of P points (pixels of the crop): the decoder's 3 per point, filtered and scored
        as SAM's `_process_batch` does, in its order (point-major)."""
        s = self.settings
        start = self._now()
        features = self.predictor.features
        if self.compiled:  # the layout the compiled graph was made for
            features = as_embedding(features)
        low_res, iou_preds = self._decode(points, crop_size, features)  # (P*3) x h x w logits, P*3
        scoring = self._add(start, "decoder")
        point_of_mask = torch.as_tensor(points.repeat(3, axis=0))
        self.masks["decoded"] += len(low_res)
        if s.pred_iou_thresh > 0.0:
            keep = iou_preds > s.pred_iou_thresh
            low_res, iou_preds, point_of_mask = low_res[keep], iou_preds[keep], point_of_mask[keep.cpu()]
        self.masks["upsampled"] += len(low_res)
        per_chunk = max(1, CHUNK_BYTES // (4 * max(self.model.image_encoder.img_size**2, crop_size[0] * crop_size[1])))
        kept, scores, boxes, rles = [], [], [], []
        encoding = 0.0
        for first in range(0, len(low_res), per_chunk):
            logits = self._upsample(low_res[first:first + per_chunk], crop_size)  # k x H x W
            stability = calculate_stability_score(logits, self.model.mask_threshold, s.stability_score_offset)
            index = torch.arange(first, first + len(logits), device=logits.device)
            if s.stability_score_thresh > 0.0:
                stable = stability >= s.stability_score_thresh
                logits, stability, index = logits[stable], stability[stable], index[stable]
            if len(logits) == 0:  # SAM's boxes of no mask are float: only chunks with masks add boxes
                continue
            masks = logits > self.model.mask_threshold
            del logits
            chunk_boxes = batched_mask_to_box(masks)
            inside = ~is_box_near_crop_edge(chunk_boxes, crop_box, [0, 0, original_size[1], original_size[0]])
            masks, stability, index, chunk_boxes = masks[inside], stability[inside], index[inside], chunk_boxes[inside]
            rle_start = self._now()
            rles.extend(masks_to_rles(uncrop_masks(masks, crop_box, original_size[0], original_size[1])))
            encoding += self._now() - rle_start
            kept.append(index)
            scores.append(stability)
            boxes.append(chunk_boxes)
        if not kept:  # as SAM's scoring of no mask: float scores and float boxes
            kept, scores, boxes = [torch.zeros(0, dtype=torch.long)], [torch.zeros(0)], [torch.zeros(0, 4)]
        keep = torch.cat(kept).to(iou_preds.device)
        data = MaskData(
            iou_preds=iou_preds[keep],
            points=point_of_mask[keep.cpu()],
            stability_score=torch.cat(scores).to(iou_preds.device),
            boxes=torch.cat(boxes).to(iou_preds.device),
            rles=rles,
        )
        self._add(scoring, "scoring")
        self.seconds["scoring"] -= encoding
        self.seconds["encoding"] += encoding
        return data

    def _decode(self, points: np.ndarray, crop_size: Tuple[int, int],
                features: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """The decoder's low-res logits ((P*3) x h x w) and predicted IoUs (P*3) for P single-point prompts
        (P x 2 pixels of the crop) on the 1 x C x h x w embedding `features`, computed as
        `SamPredictor.predict_torch` computes them."""
        predictor = self.predictor
        coords = torch.as_tensor(predictor.transform.apply_coords(points, crop_size), device=predictor.device)
        labels = torch.ones(coords.shape[0], dtype=torch.int, device=coords.device)
        sparse, dense = self.model.prompt_encoder(points=(coords[:, None, :], labels[:, None]), boxes=None, masks=None)
        low_res, iou_preds = self.decoder(
            image_embeddings=features,
            image_pe=self.model.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=True,
        )
        return low_res.flatten(0, 1), iou_preds.flatten(0, 1)

    def _upsample(self, low_res: torch.Tensor, crop_size: Tuple[int, int]) -> torch.Tensor:
        """k x h x w low-res logits -> k x H x W logits of the crop, equal to `Sam.postprocess_masks`.

        SAM resizes to S x S (S = img_size), keeps the top-left part the image fills, and resizes that to the
        crop. Here only enough low-res rows and columns for that part are resized, by the same integer factor
        S / h: the scale, hence every kept pixel, is SAM's; the clamp at the cut edge touches only pixels past
        the part kept.
        """
        size = self.model.image_encoder.img_size
        filled = self.predictor.input_size  # (h, w) in pixels: the part of the S x S input the crop fills
        low_h, low_w = low_res.shape[-2:]
        factor = size // low_h
        if factor * low_h != size or factor * low_w != size:
            needed = (low_h, low_w)
        else:
            needed = tuple(min(n, -(-f // factor) + 1) for n, f in zip((low_h, low_w), filled))
        x = low_res[:, None, : needed[0], : needed[1]]
        x = F.interpolate(x, (needed[0] * size // low_h, needed[1] * size // low_w), mode="bilinear",
                          align_corners=False)
        x = x[..., : filled[0], : filled[1]]
        return F.interpolate(x, tuple(crop_size), mode="bilinear", align_corners=False)[:, 0]

    def _records(self, data: MaskData) -> List[Dict[str, Any]]:
        if self.output_mode == "coco_rle":
            segmentations = [coco_encode_rle(rle) for rle in data["rles"]]
        elif self.output_mode == "binary_mask":
            segmentations = [rle_to_binary_mask(rle) for rle in data["rles"]]
        else:
            segmentations = data["rles"]
        return [
            {
                "segmentation": segmentation,
                "area": area_from_rle(data["rles"][i]),
                "bbox": box_xyxy_to_xywh(data["boxes"][i]).tolist(),
                "predicted_iou": data["iou_preds"][i].item(),
                "point_coords": [data["points"][i].tolist()],
                "stability_score": data["stability_score"][i].item(),
                "crop_box": box_xyxy_to_xywh(data["crop_boxes"][i]).tolist(),
            }
            for i, segmentation in enumerate(segmentations)
        ]

    def _now(self) -> float:
        if self.predictor.device.type == "cuda":
            torch.cuda.synchronize(self.predictor.device)
        return time.perf_counter()

    def _add(self, start: float, stage: str) -> float:
        """Adds the time since `start` to `stage`; returns now."""
        now = self._now()
        self.seconds[stage] += now - start
        return now


class _OncePerImage(nn.Module):
    """A projection whose B x N x C input is the same for every prompt of the batch: it projects the first
    and broadcasts the result (B x N x C', a view)."""

    def __init__(self, projection: nn.Module) -> None:
        super().__init__()
        self.projection = projection

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.projection(x[:1]).expand(x.shape[0], -1, -1)


def image_work_shared(decoder: MaskDecoder) -> MaskDecoder:
    """SAM's mask decoder over the same weights (new modules, the same tensors), with the first two-way
    layer's image-side projections made once per image rather than once per prompt.

    The decoder repeats the image embedding (+ the dense prompt embedding: the same "no mask" vector for every
    prompt without a mask input) and its positional encoding for each prompt. The first layer's token -> image
    attention projects them to keys and values, and its image -> token attention to queries, before any
    prompt has touched them: three (h*w) x C x C/2 projections per prompt, the same for all. Here they are
    made for the first prompt and broadcast. Only for prompts without a mask input.
    """
    shared = copy.deepcopy(decoder, memo={id(t): t for t in [*decoder.parameters(), *decoder.buffers()]})
    layer = shared.transformer.layers[0]
    for attention, name in ((layer.cross_attn_token_to_image, "k_proj"), (layer.cross_attn_token_to_image, "v_proj"),
                            (layer.cross_attn_image_to_token, "q_proj")):
        setattr(attention, name, _OncePerImage(getattr(attention, name)))
    return shared


def masks_to_rles(masks: torch.Tensor) -> List[Dict[str, Any]]:
    """k x H x W bool masks -> COCO's uncompressed RLEs ({"size": [H, W], "counts": [...]}, column-major runs
    starting with a run of 0s), from one pass over all masks' change points."""
    k, height, width = masks.shape
    if k == 0:
        return []
    flat = masks.transpose(1, 2).reshape(k, height * width).cpu().numpy()
    mask_of_change, where = np.nonzero(flat[:, 1:] != flat[:, :-1])
    bounds = np.searchsorted(mask_of_change, np.arange(k + 1))
    rles = []
    for i in range(k):
        ends = np.concatenate(([0], where[bounds[i]:bounds[i + 1]] + 1, [height * width]))
        counts = np.diff(ends).tolist()
        rles.append({"size": [height, width], "counts": ([0] + counts) if flat[i, 0] else counts})
    return rles


def rle_to_binary_mask(rle: Dict[str, Any]) -> np.ndarray:
    """An uncompressed RLE -> H x W bool mask (SAM's `rle_to_mask`, without a Python loop over runs)."""
    height, width = rle["size"]
    counts = np.asarray(rle["counts"], dtype=np.int64)
    values = np.zeros(len(counts), dtype=bool)
    values[1::2] = True
    return np.repeat(values, counts).reshape(width, height).transpose()


def same_masks(ours: Sequence[Dict[str, Any]], theirs: Sequence[Dict[str, Any]]) -> bool:
    """True when two generators' records are equal field by field, in the same order."""
    if len(ours) != len(theirs):
        return False
    for a, b in zip(ours, theirs):
        if a.keys() != b.keys():
            return False
        for key in a:
            if isinstance(a[key], np.ndarray) or isinstance(b[key], np.ndarray):
                if not np.array_equal(a[key], b[key]):
                    return False
            elif a[key] != b[key]:
                return False
    return True


def agreement(ours: Sequence[Dict[str, Any]], theirs: Sequence[Dict[str, Any]]) -> Tuple[int, float]:
    """How far two generators' records (COCO RLE segmentations) of one image agree: the number of `theirs`
    whose closest mask in `ours` has an IoU of at least MATCH_IOU, and the sum over `theirs` of that closest
    IoU (0 without a mask in `ours`); divide by len(theirs) for shares."""
    if not theirs or not ours:
        return 0, 0.0
    ious = mask_utils.iou([m["segmentation"] for m in ours], [m["segmentation"] for m in theirs],
                          [0] * len(theirs))
    closest = np.asarray(ious).reshape(len(ours), len(theirs)).max(axis=0)
    return int((closest >= MATCH_IOU).sum()), float(closest.sum())
