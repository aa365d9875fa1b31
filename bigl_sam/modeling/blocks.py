"""Transformer blocks: SAM's ViT block, and the big.LITTLE block built on it."""

import math
from typing import Optional, Tuple

import torch
from torch import nn

from segment_anything.modeling.common import MLPBlock

from .attention import Attention, gather_tokens


class Block(nn.Module):
    """SAM's ViT block (pre-norm attention + MLP), attention computed with SDPA.

    Parameter names and shapes match `segment_anything.modeling.image_encoder.Block`.
    """

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


class BigLittleBlock(Block):
    """One big.LITTLE layer: a router picks the top-K tokens for the P-path (this `Block`'s own weights,
    as in SAM), then the E-path updates every token.
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
    ) -> None:
        super().__init__(dim, num_heads, mlp_ratio, window_size, grid_size)
        self.router = nn.Linear(dim, 1)
        self.little = LittleBlock(dim, little_dim, little_heads, little_mlp_ratio, window_size, grid_size)

    def forward(self, x: torch.Tensor, keep_ratio: float = 1.0) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """
        Args:
            x: B x H x W x C tokens.
            keep_ratio: share of tokens the P-path updates, K = ceil(keep_ratio * H * W).
        Returns:
            B x H x W x C tokens, and the B x K raster indexes of the tokens the P-path updated
            (None when it updated all of them).
        """
        B, H, W, C = x.shape
        normed = self.norm1(x)
        scores = self.router(normed).view(B, H * W).softmax(dim=-1)
        keep = math.ceil(keep_ratio * H * W)
        if keep >= H * W:
            x = self._dense_big(x, normed, straight_through(scores).view(B, H, W, 1))
            index = None
        else:
            index = torch.topk(scores, keep, dim=1, sorted=False).indices.sort(dim=1).values
            x = self._routed_big(x, normed, index, straight_through(torch.gather(scores, 1, index))[..., None])
        return x + self.little(x), index

    def _dense_big(self, x: torch.Tensor, normed: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
        x = x + gate * self.attn(normed, self.window_size)
        return x + gate * self.mlp(self.norm2(x))

    def _routed_big(
        self, x: torch.Tensor, normed: torch.Tensor, index: torch.Tensor, gate: torch.Tensor
    ) -> torch.Tensor:
        """Updates only the selected tokens; the others pay for nothing but being keys and values."""
        B, H, W, C = x.shape
        tokens = x.reshape(B, H * W, C)
        selected = gather_tokens(tokens, index)
        selected = selected + gate * self.attn.routed(normed, index, self.window_size)
        selected = selected + gate * self.mlp(self.norm2(selected))
        expanded = index[..., None].expand(-1, -1, C)
        return tokens.scatter(1, expanded, selected).view(B, H, W, C)


def straight_through(scores: torch.Tensor) -> torch.Tensor:
    """1 in the forward pass; carries the gradient of a hard top-K choice back to the router scores."""
    return scores / scores.detach()
