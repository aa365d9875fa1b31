"""Who may take the P-path, and how many: the routing plan every layer of one forward pass shares.

SAM resizes the longest side to 1024 and zero-pads the rest (bottom and right) of the *normalised* image, so
a 640 x 480 photo leaves 25% of the 64 x 64 tokens on padding. The P-path budget goes to image tokens only:
image b gets K_b = ceil(keep_ratio x its image tokens) P-path slots, chosen by the router among its image
tokens. The image's extent is read once per forward pass (one host sync, before the layer loop); every layer
then runs with static shapes, so `torch.compile` and CUDA graphs see no data-dependent size inside the loop.
For ONNX export the keep ratio is a graph input and the plan is computed in the graph
(`plan_routing_in_graph`): then K is the one data-dependent size.
"""

import math
from dataclasses import dataclass
from typing import Optional, Sequence, Tuple, Union

import torch

# An image's (h, w) in input pixels, inside the S x S square (as `SamPredictor.input_size`); or one per image.
InputSize = Union[Tuple[int, int], Sequence[Tuple[int, int]]]


@dataclass(frozen=True)
class RoutingPlan:
    """The P-path budget of one batch.

    Attributes:
        slots: K, P-path slots per image: the largest image's budget (static for the whole pass).
        budget: B, each image's own budget K_b <= K; slots past it are inactive (their update is gated to 0).
        image_tokens: B x N bool, tokens that hold image pixels (N = H x W, raster order).
        token_extent: (h, w) in tokens, the largest image's; windowed layers skip windows outside it.
    """

    slots: int
    budget: torch.Tensor
    image_tokens: torch.Tensor
    token_extent: Tuple[int, int]

    def active(self) -> torch.Tensor:
        """B x K bool: which of the K slots (in router-score order) each image really uses."""
        return torch.arange(self.slots, device=self.budget.device) < self.budget[:, None]


def plan_routing(
    token_extents: Sequence[Tuple[int, int]], keep_ratio: float, grid_hw: Tuple[int, int], device
) -> RoutingPlan:
    """The plan for images whose image tokens cover `token_extents` (per image, (h, w) in tokens, top-left)."""
    H, W = grid_hw
    token_extents = [(min(h, H), min(w, W)) for h, w in token_extents]
    budgets = [max(1, math.ceil(keep_ratio * h * w)) for h, w in token_extents]
    image_tokens = token_extent_mask(torch.tensor(token_extents, device=device), grid_hw).flatten(1)
    largest = (max(h for h, _ in token_extents), max(w for _, w in token_extents))
    return RoutingPlan(max(budgets), torch.tensor(budgets, device=device), image_tokens, largest)


def plan_routing_in_graph(
    images: torch.Tensor, keep_ratio: torch.Tensor, patch_size: int, grid_hw: Tuple[int, int]
) -> RoutingPlan:
    """The plan with the keep ratio a 0-dim tensor (the ONNX encoder's runtime input), computed with tensor
    ops only, so that `torch.export` records it in the graph.

    Same budgets and image tokens as `token_extents` + `plan_routing` (the budget is computed in float64
    from the tensor's value), and at keep >= 1 every token, padding included, as the dense path of keep 1.0.
    The slot count K = the largest budget is the graph's only data-dependent size (one `.item()`, bounded
    to [1, H x W]). The plan's token extent is the whole grid, so every other shape stays static: windowed
    layers then project keys and values for every window, not only those overlapping the image; no selected
    token's output changes.
    """
    H, W = grid_hw
    tokens = torch.minimum(token_extent(_input_sizes(images), patch_size), torch.tensor([H, W], device=images.device))
    everything = keep_ratio >= 1.0
    budget = torch.ceil(keep_ratio.double() * tokens[:, 0] * tokens[:, 1]).long().clamp(min=1)
    budget = torch.where(everything, H * W, budget)
    image_tokens = token_extent_mask(tokens, grid_hw).flatten(1) | everything
    slots = budget.max().item()
    torch._check(slots >= 1)
    torch._check(slots <= H * W)
    return RoutingPlan(slots, budget, image_tokens, (H, W))


def token_extent(input_size, patch_size: int):
    """An image's extent in pixels -> in tokens: the rows and columns of tokens that hold any of its pixels,
    ceil(h / patch_size) x ceil(w / patch_size).

    Args:
        input_size: (h, w) in input pixels, or a ... x 2 integer tensor of them.
        patch_size: the side of one token, in pixels.
    Returns:
        (h, w) in tokens: a tuple of ints, or a ... x 2 tensor for a tensor `input_size`.
    """
    if isinstance(input_size, torch.Tensor):
        return -(-input_size // patch_size)
    h, w = input_size
    return -(-int(h) // patch_size), -(-int(w) // patch_size)


def token_extent_mask(token_extents: torch.Tensor, grid_hw: Tuple[int, int]) -> torch.Tensor:
    """B x 2 token extents (h, w) -> B x H x W bool, True on the tokens inside each (the top-left h x w)."""
    H, W = grid_hw
    rows = torch.arange(H, device=token_extents.device)[None, :, None] < token_extents[:, 0, None, None]
    cols = torch.arange(W, device=token_extents.device)[None, None, :] < token_extents[:, 1, None, None]
    return rows & cols


def token_extents(
    images: torch.Tensor, patch_size: int, input_size: Optional[InputSize] = None
) -> Sequence[Tuple[int, int]]:
    """Per image, (h, w) in tokens of the top-left region that holds image pixels.

    Args:
        images: B x 3 x S x S SAM-preprocessed input. SAM pads the normalised image with exact zeros, and a
            uint8 pixel never normalises to exactly 0 (SAM's means are not integers), so the last row and
            column with a non-zero value end the image.
        input_size: the extent in input pixels, (h, w) for every image or one per image, when known (as
            `SamPredictor.input_size`); skips the scan and its host sync.
    """
    if input_size is None:
        input_size = _input_sizes(images).tolist()  # the one host sync of a forward pass
    elif isinstance(input_size[0], int):
        input_size = [tuple(input_size)] * images.shape[0]
    if len(input_size) != images.shape[0]:
        raise ValueError(f"input_size names {len(input_size)} extents for a batch of {images.shape[0]}")
    if any(int(h) < 1 or int(w) < 1 for h, w in input_size):
        raise ValueError(f"input_size must be at least 1 x 1 pixels, got {list(input_size)}")
    return [token_extent(size, patch_size) for size in input_size]


def _input_sizes(images: torch.Tensor) -> torch.Tensor:
    """B x 3 x S x S SAM-preprocessed input -> B x 2, per image (h, w) in pixels: one past the last row and
    column with a non-zero value.

    An all-zero image (a warm-up, tracing or FLOP-counting input) has no padding to read: it is the whole
    S x S square, so it runs, and costs, what a square image does.
    """
    nonzero = images.ne(0).any(dim=1)  # B x S x S
    sizes = torch.stack([_last_true(nonzero.any(dim=2)), _last_true(nonzero.any(dim=1))], dim=1)
    square = torch.tensor(images.shape[-2:], device=images.device)
    return torch.where(sizes > 0, sizes, square)  # h and w are 0 together: no non-zero value at all


def _last_true(flags: torch.Tensor) -> torch.Tensor:
    """B x L bool -> B, one past the last True (0 if none)."""
    positions = torch.arange(1, flags.shape[1] + 1, device=flags.device)
    return (flags * positions).amax(dim=1)


def router_log_scores(logits: torch.Tensor, image_tokens: Optional[torch.Tensor]) -> torch.Tensor:
    """B x N router logits -> B x N log-softmax over each image's image tokens (float32).

    Padding tokens get the most negative finite float, so they are chosen last and nothing becomes NaN,
    even for an image with no image token at all.
    """
    logits = logits.float()
    if image_tokens is not None:
        logits = logits.masked_fill(~image_tokens, torch.finfo(torch.float32).min)
    return logits.log_softmax(dim=-1)


def top_slots(log_scores: torch.Tensor, slots: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """B x N log-scores -> the B x K (K = `slots`) highest, in descending order, and their raster indexes.

    Equal scores (a flat image: identical tokens score alike) go to the lower index first, in every backend
    and batch size: `torch.topk` promises no order among ties, ONNX TopK takes the lower index first. A
    stable descending sort gives that order; the ONNX graph records it as a TopK over all N.
    """
    values, indices = torch.sort(log_scores, dim=1, descending=True, stable=True)
    return values[:, :slots], indices[:, :slots]


def score_gate(log_scores: torch.Tensor) -> torch.Tensor:
    """exp(log s - stop_gradient(log s)): exactly 1 in the forward pass, and d gate / d s = 1 / s, the
    gradient of s / stop_gradient(s), so the hard top-K choice still trains the router. Computed from the
    log-scores, it stays finite where a score underflows to 0 (where s / s would be 0 / 0)."""
    return torch.exp(log_scores - log_scores.detach())
