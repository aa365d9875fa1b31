"""Attention with SAM's decomposed relative positions, computed by `scaled_dot_product_attention`.

Tokens are attended inside *fields*: a field is one 14 x 14 window (windowed layers) or the whole
64 x 64 token grid (global layers). Keys and values are always every token of the field. Queries are
either every token of the field (dense) or a selected subset (routed, the P-path's semi-cross attention).
Routed queries of a global layer attend at their true grid positions; routed queries of a windowed layer are
put back at their cells of their windows, so the windowed SDPA call has static shapes. One code path serves
CPU and GPU: SDPA with the position terms materialised as an additive bias (FlexAttention with a
`score_mod` ran slower on CPU). The bias-free form, one unmasked SDPA call on widened heads
(`[q * s, rel_h, rel_w] . [k, onehot(row), onehot(col)]`, exact), ran slower too on CPU, in float32 and
bfloat16: it adds 2G to the width of every query-key product (64 -> 192 in a global layer), and with values
narrower than the widened heads it ran slower still.
"""

from typing import Optional, Tuple

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


def grid_positions(size: Tuple[int, int], device: torch.device) -> Tuple[torch.Tensor, torch.Tensor]:
    """Rows and columns (each 1 x h*w) of every cell of an h x w field (`size`: (h, w), ints or a traced
    shape's sizes), in raster order."""
    h, w = size
    pos = torch.arange(h * w, device=device)
    return (pos // w)[None], (pos % w)[None]


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
        rows, cols = grid_positions(qkv.shape[1:3], x.device)
        out = self.attend(q, k, v, rows, cols)
        out = self._merge_heads(out).unflatten(1, qkv.shape[1:3])
        if window_size > 0:
            out = window_unpartition(out, window_size, _padded_hw(x, window_size), x.shape[1:3])
        return self.proj(out)

    def probabilities(self, x: torch.Tensor, window_size: int) -> torch.Tensor:
        """The attention probabilities of dense attention, in SAM's (transformers' eager) layout.

        x: B x H x W x C (normalised) -> (F * heads) x N x N, F = B x fields, N the tokens of one field.
        """
        qkv = self._fields(x, self.qkv.weight, self.qkv.bias, window_size)
        q, k, _ = self._split_heads(qkv, 3)
        rows, cols = grid_positions(qkv.shape[1:3], x.device)
        logits = (q * q.shape[-1] ** -0.5) @ k.transpose(-2, -1)
        logits = logits + rel_pos_bias(q, rows, cols, self.rel_pos_h, self.rel_pos_w)
        return logits.softmax(dim=-1).flatten(0, 1)

    def routed(
        self,
        x: torch.Tensor,
        index: torch.Tensor,
        window_size: int,
        token_extent: Optional[Tuple[int, int]] = None,
    ) -> torch.Tensor:
        """Semi-cross attention: only the selected tokens are queries, all tokens of their field are keys.

        Args:
            x: B x H x W x C, normalised tokens.
            index: B x K, raster indexes (row * W + col) of the selected tokens.
            window_size: side of the windows; 0 for global attention over the grid.
            token_extent: (h, w) in tokens that every selected token lies in (default: the whole grid).
                Windowed layers project keys and values only for the windows that overlap it.
        Returns:
            B x K x C, the projected attention output of the selected tokens.
        """
        B, H, W, C = x.shape
        queries = F.linear(gather_tokens(x.reshape(B, H * W, C), index), self.qkv.weight[:C], self.qkv.bias[:C])
        if window_size == 0:
            k, v = self._split_heads(self._fields(x, self.qkv.weight[C:], self.qkv.bias[C:], 0), 2)
            out = self._merge_heads(self.attend(self._heads(queries), k, v, index // W, index % W))
        else:
            out = self._attend_in_windows(x, queries, index, window_size, token_extent or (H, W))
        return self.proj(out)

    def attend(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor
    ) -> torch.Tensor:
        """q: F x heads x Q x d; k, v: F x heads x N x d; rows, cols: F x Q or 1 x Q -> F x heads x Q x d."""
        field_keys = k.shape[2]
        fields = q.shape[0] if isinstance(q.shape[0], int) else 1  # a traced (dynamic) batch: chunks per field
        chunk = max(1, MAX_BIAS_ELEMENTS // (fields * q.shape[1] * field_keys))
        if isinstance(q.shape[2], torch.SymInt):  # a traced size: the ONNX export's data-dependent K
            return self._attend_in_even_chunks(q, k, v, rows, cols, -(-field_keys // chunk))
        outputs = []
        for start in range(0, q.shape[2], chunk):
            part = slice(start, start + chunk)
            q_part = q[:, :, part]
            bias = rel_pos_bias(q_part, rows[:, part], cols[:, part], self.rel_pos_h, self.rel_pos_w)
            outputs.append(F.scaled_dot_product_attention(q_part, k, v, attn_mask=bias))
        return outputs[0] if len(outputs) == 1 else torch.cat(outputs, dim=2)

    def _attend_in_even_chunks(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, chunks: int
    ) -> torch.Tensor:
        """`attend` for a data-dependent number of queries Q <= the field's keys (the ONNX encoder's K):
        `chunks` (static) calls of ceil(Q / chunks) queries each, zero queries padded at the end (their
        outputs dropped), so the bias stays as small as in eager mode and no call is empty (an exported
        graph cannot branch on the size of a chunk)."""
        queries = q.shape[2]
        size = (queries + chunks - 1) // chunks
        pad = size * chunks - queries
        q = F.pad(q, (0, 0, 0, pad)).unflatten(2, (chunks, size))
        rows, cols = (F.pad(p.expand(q.shape[0], -1), (0, pad)).unflatten(1, (chunks, size)) for p in (rows, cols))
        outputs = []
        for i in range(chunks):
            bias = rel_pos_bias(q[:, :, i], rows[:, i], cols[:, i], self.rel_pos_h, self.rel_pos_w)
            outputs.append(F.scaled_dot_product_attention(q[:, :, i], k, v, attn_mask=bias))
        return torch.stack(outputs, dim=2).flatten(2, 3)[:, :, :queries]

    def _attend_in_windows(
        self,
        x: torch.Tensor,
        queries: torch.Tensor,
        index: torch.Tensor,
        window_size: int,
        token_extent: Tuple[int, int],
    ) -> torch.Tensor:
        """Windowed semi-cross attention with static shapes (no per-window counts, no host sync).

        Each selected query is put back at its own cell of its window (the other cells hold zero queries,
        whose outputs are dropped), so dense windowed SDPA calls over the windows that overlap `token_extent`
        serve every query with SAM's relative positions. Windows are attended in up to four bands (whole
        windows, and the partial ones at the bottom and right edge), so no query is spent on window padding.
        The cost over packing queries per window is the attention product of the empty cells (about 4% of
        a ViT-B layer's MACs at keep 0.25); in exchange no shape depends on where the router sent tokens, one
        code path serves CPU and GPU, and the layer compiles without graph breaks.

        x: B x H x W x C (normalised); queries: B x K x C (projected); index: B x K -> B x K x C.
        """
        B, H, W, C = x.shape
        ws = window_size
        crop_h, crop_w = min(H, -(-token_extent[0] // ws) * ws), min(W, -(-token_extent[1] // ws) * ws)
        kv = self._fields(x[:, :crop_h, :crop_w], self.qkv.weight[C:], self.qkv.bias[C:], ws)
        k, v = (t.unflatten(0, (B, -(-crop_h // ws), -(-crop_w // ws))) for t in self._split_heads(kv, 2))
        # A cell of the cropped grid per query; queries outside the crop (inactive slots) share a spare cell.
        rows, cols = index // W, index % W
        spare = crop_h * crop_w
        cell = torch.where((rows < crop_h) & (cols < crop_w), rows * crop_w + cols, spare)
        cell_index = cell[..., None].expand(-1, -1, C)
        grid = queries.new_zeros(B, spare + 1, C).scatter(1, cell_index, queries)[:, :spare].view(B, crop_h, crop_w, C)
        band_rows = []
        for first_row, n_rows, cell_h in _window_bands(crop_h, ws):
            band = []
            for first_col, n_cols, cell_w in _window_bands(crop_w, ws):
                top, left = first_row * ws, first_col * ws
                q = grid[:, top : top + n_rows * cell_h, left : left + n_cols * cell_w]
                q = q.reshape(B, n_rows, cell_h, n_cols, cell_w, C).transpose(2, 3).reshape(-1, cell_h * cell_w, C)
                windows = (slice(None), slice(first_row, first_row + n_rows), slice(first_col, first_col + n_cols))
                q_rows, q_cols = grid_positions((cell_h, cell_w), x.device)
                out = self.attend(self._heads(q), k[windows].flatten(0, 2), v[windows].flatten(0, 2), q_rows, q_cols)
                out = self._merge_heads(out).view(B, n_rows, n_cols, cell_h, cell_w, C).transpose(2, 3)
                band.append(out.reshape(B, n_rows * cell_h, n_cols * cell_w, C))
            band_rows.append(torch.cat(band, dim=2))
        out = torch.cat(band_rows, dim=1).reshape(B, spare, C)
        out = torch.cat([out, out.new_zeros(B, 1, C)], dim=1)
        return torch.gather(out, 1, cell_index)

    @staticmethod
    def _fields(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, window_size: int) -> torch.Tensor:
        """Projects B x H x W x C tokens and cuts them into fields: F x G x G x C'.

        The projection runs on the real tokens only; window padding then gets the value a zero token
        would project to (the bias), exactly as SAM pads the normalised tokens before projecting them.
        """
        projected = F.linear(x, weight)
        if window_size > 0:
            projected, _ = window_partition(projected, window_size)
        return projected + bias.to(projected.dtype)  # under autocast, stay in the matmul's dtype

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


def _window_bands(length: int, window_size: int):
    """Windows along one side of `length` cells: (first window, number of windows, cells per window) for the
    whole windows and, if the side does not divide evenly, the one partial window at its end."""
    whole, rest = divmod(length, window_size)
    bands = [(0, whole, window_size)] if whole else []
    return bands + ([(whole, 1, rest)] if rest else [])


def _padded_hw(x: torch.Tensor, window_size: int) -> Tuple[int, int]:
    H, W = x.shape[1:3]
    return -(-H // window_size) * window_size, -(-W // window_size) * window_size
