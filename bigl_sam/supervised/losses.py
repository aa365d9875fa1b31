"""The losses of SAM's training: focal and dice on the mask logits, MSE between the predicted IoU and the IoU
the mask reaches. Every term is per instance (and per output of a multimask prediction)."""

import torch
import torch.nn.functional as F

FOCAL_ALPHA = 0.25  # the usual sigmoid focal loss (Lin et al.); SAM's paper gives the loss, not its constants
FOCAL_GAMMA = 2.0


def focal(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """logits, target: ... x L x L -> ... (mean over the cells)."""
    p = logits.sigmoid()
    ce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    p_t = p * target + (1 - p) * (1 - target)
    alpha_t = FOCAL_ALPHA * target + (1 - FOCAL_ALPHA) * (1 - target)
    return (alpha_t * ce * (1 - p_t) ** FOCAL_GAMMA).mean(dim=(-2, -1))


def dice(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """logits, target: ... x L x L -> ... (1 - soft Dice, smoothed by 1)."""
    p = logits.sigmoid()
    overlap = (p * target).sum(dim=(-2, -1))
    return 1 - (2 * overlap + 1) / (p.sum(dim=(-2, -1)) + target.sum(dim=(-2, -1)) + 1)


def reached_iou(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The IoU of the thresholded mask (logits > 0) with the target: ... x L x L -> ... (1 where both are
    empty)."""
    pred = logits > 0
    truth = target > 0.5
    inter = (pred & truth).sum(dim=(-2, -1)).float()
    union = (pred | truth).sum(dim=(-2, -1)).float()
    return torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))
