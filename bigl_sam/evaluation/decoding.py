"""Decoding all prompts of one encoded image in batches: boxes, or click sessions driven by the simulated user.

The predictor holds one image's embedding (`SamPredictor.set_image`); every call here only runs the prompt
encoder and mask decoder (`predict_torch`) on B prompts at once. Prompt coordinates are scaled to SAM's
input frame as `SamPredictor.predict` scales them (in float64, then handed over as float32), so a batch
gets the coordinates that one `predict` call per prompt would. The time spent in the decoder is added to
`DecoderClock.seconds`, so that a report can split the rest (the click simulator and the IoU) from it.
"""

import time
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch
from segment_anything import SamPredictor

from .clicker import Clicker, ClickRule
from .protocol import mask_iou

PADDING_LABEL = -1  # SAM's "not a point": keeps click tensors rectangular once a mask needs no more clicks


@dataclass
class DecoderClock:
    """Seconds spent in `predict_torch` (synchronised on GPU)."""

    device: torch.device
    seconds: float = 0.0

    def now(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter()


@dataclass(frozen=True)
class Decoding:
    """How each round is decoded and scored. select: argmax | oracle | single; feed_logits: the previous
    round's low-res logits of the chosen mask go back in as `mask_input`; both_empty_iou: the IoU when the
    ground truth and the mask are both empty (`mask_iou`)."""

    select: str = "argmax"
    feed_logits: bool = False
    both_empty_iou: float = 1.0


@dataclass
class Target:
    """One object to segment: H x W bool mask, the H x W bool pixels that do not count (None: none), and the
    seed of its random clicks."""

    mask: np.ndarray
    ignore: Optional[np.ndarray] = None
    seed: int = 0


def box_masks(
    predictor: SamPredictor, boxes: np.ndarray, decoding: Decoding, clock: DecoderClock,
    gt: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """boxes: B x 4 XYXY pixels -> B x H x W bool chosen masks (`gt`, B x H x W, only for `oracle`)."""
    boxes = predictor.transform.apply_boxes(np.asarray(boxes, dtype=np.float64), predictor.original_size)
    boxes = torch.as_tensor(boxes, dtype=torch.float, device=predictor.device)
    masks, _ = _decode(predictor, decoding, clock, gt, boxes=boxes)
    return masks


def box_ious(predictor, targets: Sequence[Target], boxes: np.ndarray, decoding: Decoding, clock, batch_size: int):
    """The IoU of each target's box-prompted mask, at the original image resolution."""
    ious: List[float] = []
    for start in range(0, len(targets), batch_size):
        batch = targets[start : start + batch_size]
        gt, counted = _ground_truth(predictor, batch)
        masks = box_masks(predictor, boxes[start : start + batch_size], decoding, clock, gt)
        ious.extend(mask_iou(masks, gt, counted, decoding.both_empty_iou).tolist())
    return ious


def click_ious(
    predictor: SamPredictor, targets: Sequence[Target], rule: ClickRule, rounds: int, decoding: Decoding,
    clock: DecoderClock, batch_size: int,
) -> np.ndarray:
    """N x rounds: each target's IoU after each click (1..rounds). Each round is decoded with all clicks so
    far; a mask that needs no more clicks (exact outside the ignore mask) keeps its result."""
    rows = []
    for start in range(0, len(targets), batch_size):
        rows.append(_click_session(predictor, targets[start : start + batch_size], rule, rounds, decoding, clock))
    return np.concatenate(rows) if rows else np.zeros((0, rounds))


def _click_session(predictor, batch: Sequence[Target], rule: ClickRule, rounds: int, decoding: Decoding, clock):
    gt, counted = _ground_truth(predictor, batch)
    clickers = [Clicker(t.mask, rule, t.ignore, t.seed) for t in batch]
    clicks = [[clicker.first()] for clicker in clickers]
    masks, logits = _decode(predictor, decoding, clock, gt, clicks=clicks, offset=rule.offset)
    ious = [mask_iou(masks, gt, counted, decoding.both_empty_iou)]
    for _ in range(rounds - 1):
        done = np.zeros(len(batch), dtype=bool)
        host_masks = masks.cpu().numpy()
        for b, clicker in enumerate(clickers):
            click = clicker.next(host_masks[b])
            done[b] = click is None
            clicks[b].append((0, 0, PADDING_LABEL) if click is None else click)
        mask_input = logits if decoding.feed_logits else None
        new_masks, new_logits = _decode(predictor, decoding, clock, gt, clicks=clicks, mask_input=mask_input,
                                        offset=rule.offset)
        keep = torch.from_numpy(done).to(masks.device)
        masks = torch.where(keep[:, None, None], masks, new_masks)
        logits = torch.where(keep[:, None, None, None], logits, new_logits)
        ious.append(mask_iou(masks, gt, counted, decoding.both_empty_iou))
    return torch.stack(ious, dim=1).cpu().numpy()


def _ground_truth(predictor: SamPredictor, batch: Sequence[Target]) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """B x H x W bool object masks and the B x H x W bool counted pixels (None when nothing is ignored)."""
    gt = torch.from_numpy(np.stack([t.mask for t in batch])).to(predictor.device)
    if all(t.ignore is None for t in batch):
        return gt, None
    ignored = np.stack([np.zeros_like(t.mask) if t.ignore is None else t.ignore for t in batch])
    return gt, ~torch.from_numpy(ignored).to(predictor.device)


def _decode(
    predictor: SamPredictor,
    decoding: Decoding,
    clock: DecoderClock,
    gt: Optional[torch.Tensor],
    boxes: Optional[torch.Tensor] = None,
    clicks: Optional[List[list]] = None,
    mask_input: Optional[torch.Tensor] = None,
    offset: float = 0.0,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """-> the chosen mask per prompt (B x H x W bool) and its low-res logits (B x 1 x 256 x 256)."""
    coords, labels = _click_tensors(predictor, clicks, offset) if clicks is not None else (None, None)
    start = clock.now()
    masks, predicted_iou, low_res = predictor.predict_torch(
        coords, labels, boxes, mask_input, multimask_output=decoding.select != "single"
    )
    clock.seconds += clock.now() - start
    if decoding.select == "oracle":
        choice = mask_iou(masks, gt[:, None]).argmax(dim=1)
    else:
        choice = predicted_iou.argmax(dim=1)  # "single" has one output, so this picks it
    rows = torch.arange(len(choice), device=choice.device)
    return masks[rows, choice], low_res[rows, choice].unsqueeze(1)


def _click_tensors(predictor: SamPredictor, clicks: List[list], offset: float) -> Tuple[torch.Tensor, torch.Tensor]:
    """B lists of (x, y, label) pixel clicks -> B x N x 2 input-frame coordinates, B x N labels."""
    table = np.array([[tuple(map(int, c)) for c in row] for row in clicks], dtype=np.int64)
    coords = predictor.transform.apply_coords(table[..., :2] + offset, predictor.original_size)
    return (torch.as_tensor(coords, dtype=torch.float, device=predictor.device),
            torch.as_tensor(table[..., 2], device=predictor.device))
