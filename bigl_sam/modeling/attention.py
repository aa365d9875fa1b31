"""Attention with SAM's decomposed relative positions, computed by `scaled_dot_product_attention`.

Tokens are attended inside *fields*: a field is one 14 x 14 window (windowed layers) or the whole
64 x 64 token grid (global layers). Keys and values are always every token of the field. Queries are
either every token of the field (dense) or a selected subset with their true grid positions (routed,
the P-path's semi-cross attention). The relative position terms only need each query's row and column,
so both cases share one code path.
"""

from typing import Tuple

import torch
import torch.nn.functional as F
from torch import nn

from segment_anything.modeling.image_encoder import window_partition, window_unpartition

# Upper bound on the elements of one attention-bias chunk (256 MiB in float32); global attention over
# 4096 queries is split into query chunks below it.
MAX_BIAS_ELEMENTS = 1 << 26


def rel_pos_bias(
    q: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, rel_pos_h: torch.Tensor, rel_pos_w: torch.Tensor
) -> torch.Tensor:
    """SAM's decomposed relative position terms for queries at arbitrary positions of a square field.

    Args:
        q: F x heads x Q x d, unscaled queries.
        rows, cols: F x Q or 1 x Q, each query's position in the field.
        rel_pos_h, rel_pos_w: (2 * G - 1) x d tables, G the field's side.
    Returns:
        F x heads x Q x (G * G), the additive attention bias over the field's keys in raster order.
    """
    side = (rel_pos_h.shape[0] + 1) // 2
    key_pos = torch.arange(side, device=q.device)
    rel_h = _pick_offsets(q @ rel_pos_h.to(q.dtype).t(), rows, key_pos, side)
    rel_w = _pick_offsets(q @ rel_pos_w.to(q.dtype).t(), cols, key_pos, side)
    bias = rel_h[..., :, None] + rel_w[..., None, :]
    return bias.flatten(-2)


def _pick_offsets(
    scores: torch.Tensor, query_pos: torch.Tensor, key_pos: torch.Tensor, side: int
) -> torch.Tensor:
    """scores: F x heads x Q x (2G - 1), one per relative offset -> F x heads x Q x G, one per key."""
    index = query_pos[:, None, :, None] - key_pos + (side - 1)
    return torch.gather(scores, -1, index.expand(scores.shape[0], scores.shape[1], -1, -1))


def grid_positions(side: int, device: torch.device) -> Tuple[torch.Tensor, torch.Tensor]:
    """Rows and columns (each 1 x side^2) of every cell of a side x side field, in raster order."""
    pos = torch.arange(side * side, device=device)
    return (pos // side)[None], (pos % side)[None]


class Attention(nn.Module):
    """Multi-head attention with decomposed relative positions (SAM's `Attention`, same parameters)."""

    def __init__(self, dim: int, num_heads: int, field_size: int) -> None:
        """
        Args:
            dim: token width C.
            num_heads: attention heads; C must divide evenly.
            field_size: side of the field attended over (window size, or the token grid for global).
        """
        super().__init__()
        self.num_heads = num_heads
        head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=True)
        self.proj = nn.Linear(dim, dim)
        self.rel_pos_h = nn.Parameter(torch.zeros(2 * field_size - 1, head_dim))
        self.rel_pos_w = nn.Parameter(torch.zeros(2 * field_size - 1, head_dim))

    def forward(self, x: torch.Tensor, window_size: int) -> torch.Tensor:
        """Dense attention, every token a query. x: B x H x W x C (normalised) -> B x H x W x C."""
        qkv = self._fields(x, self.qkv.weight, self.qkv.bias, window_size)
        q, k, v = self._split_heads(qkv, 3)
        rows, cols = grid_positions(qkv.shape[1], x.device)
        out = self.attend(q, k, v, rows, cols)
        out = self._merge_heads(out).unflatten(1, qkv.shape[1:3])
        if window_size > 0:
            out = window_unpartition(out, window_size, _padded_hw(x, window_size), x.shape[1:3])
        return self.proj(out)

    def routed(self, x: torch.Tensor, index: torch.Tensor, window_size: int) -> torch.Tensor:
        """Semi-cross attention: only the selected tokens are queries, all tokens are keys and values.

        Args:
            x: B x H x W x C, normalised tokens.
            index: B x K, raster indexes (row * W + col) of the selected tokens.
        Returns:
            B x K x C, the projected attention output of the selected tokens.
        """
        B, H, W, C = x.shape
        kv = self._fields(x, self.qkv.weight[C:], self.qkv.bias[C:], window_size)
        k, v = self._split_heads(kv, 2)
        queries = F.linear(gather_tokens(x.reshape(B, H * W, C), index), self.qkv.weight[:C], self.qkv.bias[:C])
        rows, cols = index // W, index % W
        if window_size == 0:
            out = self._merge_heads(self.attend(self._heads(queries), k, v, rows, cols))
        else:
            out = self._attend_in_windows(queries, k, v, rows, cols, window_size, W)
        return self.proj(out)

    def attend(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor
    ) -> torch.Tensor:
        """q: F x heads x Q x d; k, v: F x heads x N x d; rows, cols: F x Q or 1 x Q -> F x heads x Q x d."""
        field_keys = k.shape[2]
        chunk = max(1, MAX_BIAS_ELEMENTS // (q.shape[0] * q.shape[1] * field_keys))
        outputs = []
        for start in range(0, q.shape[2], chunk):
            part = slice(start, start + chunk)
            q_part = q[:, :, part]
            bias = rel_pos_bias(q_part, rows[:, part], cols[:, part], self.rel_pos_h, self.rel_pos_w)
            outputs.append(F.scaled_dot_product_attention(q_part, k, v, attn_mask=bias))
        return outputs[0] if len(outputs) == 1 else torch.cat(outputs, dim=2)

    def _attend_in_windows(
        self,
        queries: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        rows: torch.Tensor,
        cols: torch.Tensor,
        window_size: int,
        width: int,
    ) -> torch.Tensor:
        """Packs the selected queries by window (padding each window to the fullest one), attends, unpacks.

        queries: B x K x C; k, v: (B * nW) x heads x ws^2 x d; rows, cols: B x K -> B x K x C.
        """
        B, K, C = queries.shape
        windows_per_row = -(-width // window_size)
        windows_per_image = k.shape[0] // B
        window = (rows // window_size) * windows_per_row + cols // window_size
        window = (window + torch.arange(B, device=window.device)[:, None] * windows_per_image).flatten()
        order = torch.argsort(window, stable=True)
        counts = torch.bincount(window, minlength=k.shape[0])
        starts = torch.cumsum(counts, 0) - counts
        slots_per_window = int(counts.max())
        sorted_window = window[order]
        slot = sorted_window * slots_per_window + torch.arange(B * K, device=order.device) - starts[sorted_window]

        packed = queries.new_zeros(k.shape[0] * slots_per_window, C)
        packed[slot] = queries.reshape(B * K, C)[order]
        local_rows = rows.new_zeros(k.shape[0] * slots_per_window)
        local_cols = cols.new_zeros(k.shape[0] * slots_per_window)
        local_rows[slot] = (rows.flatten() % window_size)[order]
        local_cols[slot] = (cols.flatten() % window_size)[order]

        q = self._heads(packed.view(k.shape[0], slots_per_window, C))
        out = self.attend(q, k, v, local_rows.view(k.shape[0], -1), local_cols.view(k.shape[0], -1))
        out = self._merge_heads(out).reshape(-1, C)
        unpacked = torch.empty_like(out[: B * K])
        unpacked[order] = out[slot]
        return unpacked.view(B, K, C)

    @staticmethod
    def _fields(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, window_size: int) -> torch.Tensor:
        """Projects B x H x W x C tokens and cuts them into fields: F x G x G x C'.

        The projection runs on the real tokens only; window padding then gets the value a zero token
        would project to (the bias), exactly as SAM pads the normalised tokens before projecting them.
        """
        projected = F.linear(x, weight)
        if window_size > 0:
            projected, _ = window_partition(projected, window_size)
        return projected + bias

    def _heads(self, tokens: torch.Tensor) -> torch.Tensor:
        """F x Q x C -> F x heads x Q x d."""
        return tokens.unflatten(-1, (self.num_heads, -1)).transpose(1, 2)

    def _split_heads(self, fields: torch.Tensor, parts: int) -> Tuple[torch.Tensor, ...]:
        """F x G x G x (parts * C) -> parts tensors of F x heads x G^2 x d."""
        tokens = fields.flatten(1, 2).unflatten(-1, (parts, self.num_heads, -1))
        return tokens.permute(2, 0, 3, 1, 4).unbind(0)

    @staticmethod
    def _merge_heads(out: torch.Tensor) -> torch.Tensor:
        """F x heads x Q x d -> F x Q x C."""
        return out.transpose(1, 2).flatten(2)


def gather_tokens(tokens: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """tokens: B x N x C, index: B x K -> B x K x C."""
    return torch.gather(tokens, 1, index[..., None].expand(-1, -1, tokens.shape[-1]))


def _padded_hw(x: torch.Tensor, window_size: int) -> Tuple[int, int]:
    H, W = x.shape[1:3]
    return -(-H // window_size) * window_size, -(-W // window_size) * window_size
