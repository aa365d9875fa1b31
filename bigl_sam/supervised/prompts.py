"""The prompts of each training round, as SAM's paper draws them (appendix A, "Training algorithm").

Round 0: an instance's box with noise on each coordinate (std `box_noise` x the box side, at most 20 pixels
of a 1024-pixel input), or one point drawn uniformly from the mask. Each corrective round adds one point
drawn uniformly from the error region of the previous round's mask (positive where the mask missed the
object, negative where it spilled over) and feeds the previous low-res logits back as the mask prompt;
a mask-only round feeds the logits back and adds no point. Points are drawn on the low-res grid (cells of
4 x 4 input pixels) and placed at the centre of their cell.

Every draw comes from the step's seeded generator (on the CPU), so a resumed run replays the same prompts.
"""

from typing import List, Optional, Tuple

import torch

from .data import LOW_RES_SCALE

BOX_NOISE_MAX = 20 / 1024  # SAM's cap on the box noise, 20 pixels of its 1024-pixel input, as a share of it
NOT_A_POINT = -1  # segment_anything's label of a padding point (ignored by the prompt encoder)


def round_kinds(click_rounds: int, mask_rounds: int, generator: torch.Generator) -> List[bool]:
    """Whether each round after the first adds a point (True) or only feeds the mask back (False): one
    mask-only round last, the others at random places among the corrective rounds."""
    kinds = [True] * click_rounds
    for _ in range(max(0, mask_rounds - 1)):
        place = int(torch.randint(len(kinds) + 1, (1,), generator=generator))
        kinds.insert(place, False)
    return kinds + [False] * min(1, mask_rounds)


def noisy_boxes(boxes: torch.Tensor, box_noise: float, img_size: int, generator: torch.Generator) -> torch.Tensor:
    """M x 4 XYXY boxes in input pixels -> the same with Gaussian noise of std `box_noise` x the side (x
    coordinates by the width, y by the height), each shift capped at 20 pixels of a 1024 input, kept inside
    the input frame and at least one pixel wide."""
    sides = (boxes[:, 2:] - boxes[:, :2]).repeat(1, 2)
    shift = torch.randn(boxes.shape, generator=generator) * box_noise * sides
    cap = BOX_NOISE_MAX * img_size
    noisy = (boxes + shift.clamp(-cap, cap)).clamp(0, img_size)
    low, high = noisy[:, :2], torch.maximum(noisy[:, 2:], noisy[:, :2] + 1)
    return torch.cat([low, high], dim=1)


def points_in(regions: torch.Tensor, generator: torch.Generator) -> Tuple[torch.Tensor, torch.Tensor]:
    """M x L x L bool -> M x 2 (x, y) input-pixel centres of one cell drawn uniformly from each region, and
    M bool: whether the region had any cell (where not, the point is meaningless)."""
    flat = regions.reshape(len(regions), -1).float()
    found = flat.sum(dim=1) > 0
    weights = torch.where(found[:, None], flat, torch.ones_like(flat))
    cells = torch.multinomial(weights, 1, generator=generator).squeeze(1)
    side = regions.shape[-1]
    centre = (LOW_RES_SCALE - 1) / 2  # pixel-index centre of a cell, as SAM's prompt encoder reads pixel indexes
    xy = torch.stack([cells % side, cells // side], dim=1).float() * LOW_RES_SCALE + centre
    return xy, found


def corrective_points(pred: torch.Tensor, gt: torch.Tensor, generator: torch.Generator):
    """pred, gt: M x L x L bool -> M x 1 x 2 points from the error region and M x 1 labels (1: missed object,
    0: spill-over, NOT_A_POINT where the mask is already exact)."""
    xy, found = points_in(pred ^ gt, generator)
    side = gt.shape[-1]
    cells = (xy // LOW_RES_SCALE).long()
    positive = gt.reshape(len(gt), -1)[torch.arange(len(gt)), cells[:, 1] * side + cells[:, 0]]
    labels = torch.where(found, positive.float(), torch.full_like(positive, NOT_A_POINT, dtype=torch.float))
    return xy[:, None], labels[:, None]


def first_points(gt: torch.Tensor, generator: torch.Generator):
    """gt: M x L x L bool -> M x 1 x 2 points drawn uniformly inside each mask, M x 1 labels (all 1)."""
    xy, _ = points_in(gt, generator)
    return xy[:, None], torch.ones(len(gt), 1)


def join(points: Optional[Tuple[torch.Tensor, torch.Tensor]], new: Tuple[torch.Tensor, torch.Tensor]):
    """The points so far with one more per instance appended."""
    if points is None:
        return new
    return torch.cat([points[0], new[0]], dim=1), torch.cat([points[1], new[1]], dim=1)
