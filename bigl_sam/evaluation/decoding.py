"""Decoding all instances of one encoded image in batches, with box, point or click prompts.

The predictor holds one image's embedding (`SamPredictor.set_image`); every call here only runs the prompt
encoder and mask decoder (`predict_torch`) on B instances at once.
"""

from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch
from segment_anything import SamPredictor

from .coco import Instance
from .protocol import Protocol, interior_point, mask_iou, next_click

PADDING_LABEL = -1  # SAM's "not a point": keeps click tensors rectangular once an instance is exact


def score_instances(
    predictor: SamPredictor, instances: Sequence[Instance], protocol: Protocol, batch_size: int
) -> List[float]:
    """The IoU of each instance's chosen mask with its ground truth, at the original image resolution."""
    ious: List[float] = []
    for start in range(0, len(instances), batch_size):
        batch = instances[start : start + batch_size]
        gt = torch.from_numpy(np.stack([instance.mask for instance in batch])).to(predictor.device)
        masks = _prompted_masks(protocol)(predictor, batch, gt, protocol)
        ious.extend(mask_iou(masks, gt).tolist())
    return ious


def _prompted_masks(protocol: Protocol):
    """Points are the first of the clicks, so `point` and `clicks` share one path."""
    return _box_masks if protocol.prompt == "box" else _click_masks


def _box_masks(predictor: SamPredictor, batch: Sequence[Instance], gt: torch.Tensor, protocol: Protocol):
    boxes = torch.tensor([instance.box for instance in batch], dtype=torch.float, device=predictor.device)
    boxes = predictor.transform.apply_boxes_torch(boxes, predictor.original_size)
    masks, _ = _decode(predictor, protocol, gt, boxes=boxes)
    return masks


def _click_masks(predictor: SamPredictor, batch: Sequence[Instance], gt: torch.Tensor, protocol: Protocol):
    """One positive click at each mask's interior point, then `protocol.clicks - 1` corrections, each decoded
    with all clicks so far and the previous round's low-res logits. An exact mask is kept as it is."""
    clicks = [[(*interior_point(instance.mask), 1)] for instance in batch]
    masks, logits = _decode(predictor, protocol, gt, clicks=clicks)
    for _ in range(protocol.click_rounds - 1):
        exact = _add_corrections(clicks, masks.cpu().numpy(), batch)
        new_masks, new_logits = _decode(predictor, protocol, gt, clicks=clicks, mask_input=logits)
        keep = torch.from_numpy(exact).to(masks.device)
        masks = torch.where(keep[:, None, None], masks, new_masks)
        logits = torch.where(keep[:, None, None, None], logits, new_logits)
    return masks


def _add_corrections(clicks: List[list], masks: np.ndarray, batch: Sequence[Instance]) -> np.ndarray:
    """Appends each instance's next simulated click; B bool: which masks are already exact."""
    exact = np.zeros(len(batch), dtype=bool)
    for b, instance in enumerate(batch):
        click = next_click(masks[b], instance.mask)
        exact[b] = click is None
        clicks[b].append((0, 0, PADDING_LABEL) if click is None else click)
    return exact


def _decode(
    predictor: SamPredictor,
    protocol: Protocol,
    gt: torch.Tensor,
    boxes: Optional[torch.Tensor] = None,
    clicks: Optional[List[list]] = None,
    mask_input: Optional[torch.Tensor] = None,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """-> the chosen mask per instance (B x H x W bool) and its low-res logits (B x 1 x 256 x 256)."""
    coords, labels = _click_tensors(predictor, clicks) if clicks is not None else (None, None)
    masks, predicted_iou, low_res = predictor.predict_torch(
        coords, labels, boxes, mask_input, multimask_output=protocol.select != "single"
    )
    if protocol.select == "oracle":
        choice = mask_iou(masks, gt[:, None]).argmax(dim=1)
    else:
        choice = predicted_iou.argmax(dim=1)  # "single" has one output, so this picks it
    rows = torch.arange(len(choice), device=choice.device)
    return masks[rows, choice], low_res[rows, choice].unsqueeze(1)


def _click_tensors(predictor: SamPredictor, clicks: List[list]) -> Tuple[torch.Tensor, torch.Tensor]:
    """B lists of (x, y, label) pixel clicks -> B x N x 2 input-frame coordinates at pixel centres, B x N labels."""
    table = torch.tensor(clicks, dtype=torch.float, device=predictor.device)
    coords = predictor.transform.apply_coords_torch(table[..., :2] + 0.5, predictor.original_size)
    return coords, table[..., 2].long()
