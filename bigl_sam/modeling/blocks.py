"""Transformer blocks: SAM's ViT block, and the big.LITTLE block built on it."""

from typing import Optional, Tuple

import torch
from torch import nn

from segment_anything.modeling.common import MLPBlock
from segment_anything.modeling.image_encoder import window_partition

from .attention import Attention, gather_tokens
from .routing import RoutingPlan, router_log_scores, score_gate, top_slots


class _SamBlockParts(nn.Module):
    """The parameters of SAM's ViT block (pre-norm attention + MLP), with SAM's names and shapes, so that
    `segment_anything.modeling.image_encoder.Block`'s state dict loads unchanged. No forward of its own:
    `Block` and `BigLittleBlock` each define how the tokens flow through them."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, window_size: int, grid_size: int) -> None:
        """
        Args:
            window_size: side of the attention windows; 0 for global attention over the grid.
            grid_size: side of the token grid (64 for a 1024 x 1024 input).
        """
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads, window_size if window_size > 0 else grid_size)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = MLPBlock(embedding_dim=dim, mlp_dim=int(dim * mlp_ratio))
        self.window_size = window_size


class Block(_SamBlockParts):
    """SAM's ViT block, attention computed with SDPA."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: B x H x W x C -> B x H x W x C."""
        x = x + self.attn(self.norm1(x), self.window_size)
        return x + self.mlp(self.norm2(x))


class LittleBlock(nn.Module):
    """The E-path: C -> c, a ViT block of width c, c -> C, added with a layer scale that starts at zero."""

    def __init__(
        self, dim: int, little_dim: int, num_heads: int, mlp_ratio: float, window_size: int, grid_size: int
    ) -> None:
        super().__init__()
        self.down = nn.Linear(dim, little_dim)
        self.block = Block(little_dim, num_heads, mlp_ratio, window_size, grid_size)
        self.up = nn.Linear(little_dim, dim)
        # Zero start: a student fresh from a SAM checkpoint computes exactly that SAM.
        self.scale = nn.Parameter(torch.zeros(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: B x H x W x C -> the residual update, B x H x W x C."""
        return self.scale * self.up(self.block(self.down(x)))


class BigLittleBlock(_SamBlockParts):
    """One big.LITTLE layer: a router picks the tokens for the P-path (SAM's block, with SAM's parameter
    names), then the E-path updates every token.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float,
        window_size: int,
        grid_size: int,
        little_dim: int,
        little_heads: int,
        little_mlp_ratio: float,
        little_window_size: int,
    ) -> None:
        """`little_window_size`: the E-path's attention windows (0: global, like a global P-path layer)."""
        super().__init__(dim, num_heads, mlp_ratio, window_size, grid_size)
        self.router = nn.Linear(dim, 1)
        self.little = LittleBlock(dim, little_dim, little_heads, little_mlp_ratio, little_window_size, grid_size)

    def forward(
        self, x: torch.Tensor, plan: Optional[RoutingPlan] = None
    ) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """
        Args:
            x: B x H x W x C tokens.
            plan: the P-path budget (`routing.plan_routing`); None: every token takes the P-path (keep 1.0).
        Returns:
            B x H x W x C tokens, and the B x K raster indexes of the tokens the P-path updated, in router
            order, -1 in slots an image did not use (None when the P-path updated every token).
        """
        B, H, W, C = x.shape
        normed = self.norm1(x)
        logits = self.router(normed).view(B, H * W)
        if plan is None:
            gate = score_gate(router_log_scores(logits, None)).to(x.dtype)
            x = self._dense_big(x, normed, gate.view(B, H, W, 1))
            index = None
        else:
            log_scores = router_log_scores(logits, plan.image_tokens)
            values, top = top_slots(log_scores, plan.slots)  # sorted: an image's first K_b slots are its own
            active = plan.active()
            gate = (score_gate(values) * active).to(x.dtype)
            x = self._routed_big(x, normed, top, gate[..., None], plan.token_extent)
            index = top.masked_fill(~active, -1)
        return x + self.little(x), index

    def attention_map(self, x: torch.Tensor, index: Optional[torch.Tensor]) -> torch.Tensor:
        """What the P-path's attention looked at, in SAM's layout: (B * fields * heads) x N x N probabilities,
        N the tokens of one field (window, or the whole grid in a global layer).

        x: B x H x W x C, this block's input tokens; index: what `forward` returned for them. A token the
        P-path updated attended exactly as in SAM's dense attention over its field (the same keys), so its
        row is SAM's; at keep < 1 the rows of the tokens the P-path skipped are zero (they attended nothing).
        """
        probabilities = self.attn.probabilities(self.norm1(x), self.window_size)
        if index is None:
            return probabilities
        B, H, W, _ = x.shape
        spare = H * W  # unused slots (-1) land in a spare column that is dropped
        updated = x.new_zeros(B, spare + 1).scatter(1, index.masked_fill(index < 0, spare), 1.0)
        updated = updated[:, :spare].view(B, H, W, 1)
        if self.window_size > 0:
            updated, _ = window_partition(updated, self.window_size)
        rows = updated.flatten(1)  # F x N, 1 on the rows of updated tokens
        return (probabilities.unflatten(0, (rows.shape[0], -1)) * rows[:, None, :, None]).flatten(0, 1)

    def _dense_big(self, x: torch.Tensor, normed: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
        x = x + gate * self.attn(normed, self.window_size)
        return x + gate * self.mlp(self.norm2(x))

    def _routed_big(
        self,
        x: torch.Tensor,
        normed: torch.Tensor,
        index: torch.Tensor,
        gate: torch.Tensor,
        token_extent: Tuple[int, int],
    ) -> torch.Tensor:
        """Updates only the selected tokens; the others pay for nothing but being keys and values.

        x, normed: B x H x W x C; index: B x K (distinct per image); gate: B x K x 1, 0 for inactive slots
        (they keep their value); token_extent: (h, w) in tokens that every selected token lies in.
        Returns B x H x W x C.
        """
        B, H, W, C = x.shape
        tokens = x.reshape(B, H * W, C)
        selected = gather_tokens(tokens, index)
        selected = selected + gate * self.attn.routed(normed, index, self.window_size, token_extent)
        selected = selected + gate * self.mlp(self.norm2(selected))
        expanded = index[..., None].expand(-1, -1, C)
        return tokens.scatter(1, expanded, selected.to(tokens.dtype)).view(B, H, W, C)
