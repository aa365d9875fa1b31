"""Distillation losses: embedding terms averaged over a region of the embedding grid (`data.loss_region`:
the full grid by default, or only the cells that see the image), and the mask-level term."""

from typing import Dict

import torch
import torch.nn.functional as F
from segment_anything.modeling import Sam


def embedding_loss(student: torch.Tensor, teacher: torch.Tensor, region: torch.Tensor) -> Dict[str, torch.Tensor]:
    """MSE and (1 - cosine similarity over channels) between embeddings.

    Each image's terms are averaged over the cells of its own region, then over the batch, so every image
    weighs the same whatever its shape (and a batch split across processes gives the same loss).

    Args:
        student, teacher: B x C x G x G embeddings.
        region: B x 1 x G x G, 1 on the cells the loss covers.
    Returns:
        {"mse": per-element MSE, "cosine": mean of 1 - cos}.
    """
    cells = region.sum(dim=(1, 2, 3)).clamp(min=1)
    squared = ((student - teacher) ** 2).mean(dim=1, keepdim=True)
    cosine = 1 - F.cosine_similarity(student, teacher, dim=1).unsqueeze(1)
    return {
        "mse": ((squared * region).sum(dim=(1, 2, 3)) / cells).mean(),
        "cosine": ((cosine * region).sum(dim=(1, 2, 3)) / cells).mean(),
    }


def mask_loss(
    sam: Sam, student: torch.Tensor, teacher: torch.Tensor, input_size: torch.Tensor, generator: torch.Generator
) -> torch.Tensor:
    """Student masks vs teacher masks through the frozen prompt encoder and mask decoder.

    Each image gets one random point and one random box inside the image; the loss is the binary
    cross-entropy of the student's low-resolution mask logits against the teacher's mask probabilities.

    Args:
        student, teacher: B x C x G x G embeddings.
        input_size: B x 2, each image's (h, w) in input pixels.
    """
    losses = []
    for b in range(student.shape[0]):
        sparse, dense = _random_prompts(sam, input_size[b], generator, student.device)
        with torch.no_grad():
            target = _decode(sam, teacher[b : b + 1], sparse, dense).sigmoid()
        losses.append(F.binary_cross_entropy_with_logits(_decode(sam, student[b : b + 1], sparse, dense), target))
    return torch.stack(losses).mean()


def _random_prompts(sam: Sam, input_size: torch.Tensor, generator: torch.Generator, device: torch.device):
    """2 prompts (a point, a box) inside `input_size` (h, w) pixels -> sparse 2 x 2 x C and dense
    2 x C x G x G prompt embeddings."""
    h, w = input_size.tolist()
    xy = torch.rand(3, 2, generator=generator) * torch.tensor([w, h])
    point = xy[:1].view(1, 1, 2).to(device)
    box = torch.cat([xy[1:].min(dim=0).values, xy[1:].max(dim=0).values]).view(1, 4).to(device)
    with torch.no_grad():
        point_sparse, point_dense = sam.prompt_encoder(
            points=(point, torch.ones(1, 1, device=device)), boxes=None, masks=None
        )
        box_sparse, box_dense = sam.prompt_encoder(points=None, boxes=box, masks=None)
    return torch.cat([point_sparse, box_sparse]), torch.cat([point_dense, box_dense])


def _decode(sam: Sam, embedding: torch.Tensor, sparse: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
    """1 x C x G x G embedding, P prompts -> P x 1 x 4G x 4G mask logits."""
    masks, _ = sam.mask_decoder(
        image_embeddings=embedding,
        image_pe=sam.prompt_encoder.get_dense_pe(),
        sparse_prompt_embeddings=sparse,
        dense_prompt_embeddings=dense,
        multimask_output=False,
    )
    return masks
