"""Plain token pruning of SAM's ViT, EViT-style: the study's baseline at the student's MACs.

EViT (Liang et al., "Not All Patches are What You Need", ICLR 2022) reorganises the tokens inside a few
layers (the 4th, 7th and 10th of DeiT-S's 12): between a layer's attention and its MLP it ranks the image
tokens by how much the class token attends to them (averaged over heads), keeps the top share (the keep
rate, the same at every such layer, of the tokens still present), and fuses the others into one token, their
average weighted by that attention; the kept tokens and the fused one go on through the MLP and the later
layers. It adds no parameter.

What changes for SAM's ViT, and how this variant does it:
- No class token: a token's attentiveness is the attention it receives in that layer, averaged over heads
  and over the kept tokens as queries (in a windowed layer a query only attends inside its window, so a
  token competes with the tokens of its own window, each window's total being its number of queries).
- Windowed layers: kept tokens attend to the kept tokens of their window, at SAM's relative positions
  (dropped cells are masked out; the attention product of their cells is paid, a few % of a layer's MACs).
  Global layers: kept tokens attend to each other only (their relative-position terms gathered pairwise).
- The fused token has no grid position: it is one more key of every window and of every global layer
  with no relative-position term, and as a query it attends to every kept token and itself.
  Tokens dropped at later layers are fused into it too (it stays their running attentiveness-weighted
  average); it is not part of the output.
- Dense output: SAM's neck and mask decoder need every token of the grid back. A dropped token keeps the
  value it had when it was dropped (after that layer's attention, before its MLP), as dense-prediction
  pruning (token halting) does; kept tokens are put back at their cells after the last layer.

At keep rate 1.0 nothing is dropped, and the encoder runs SAM's own blocks: it is SAM (tested).
"""

import copy
import math
from typing import Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from segment_anything.modeling import ImageEncoderViT
from segment_anything.modeling.image_encoder import add_decomposed_rel_pos
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from ..bench.measure import CPU_SDPA_FLOPS
from ..errors import check_keep_ratio


def evit_layers(depth: int) -> Tuple[int, ...]:
    """Where EViT reorganises tokens, scaled to `depth` layers: at a quarter, a half and three quarters of
    the depth (0-based 3, 6, 9 of DeiT's 12 layers; 1, 3, 4 of vit_mini's 6)."""
    return tuple(sorted({depth * k // 4 for k in (1, 2, 3)} - {0}))


class PrunedImageEncoder(nn.Module):
    """SAM's ViT with EViT-style token pruning: B x 3 x S x S -> B x C_out x S/16 x S/16, like `vit`.

    Takes over the modules of `vit` (a `segment_anything` `ImageEncoderViT`; its parameters shared, not
    copied, under the same names, so the state dict is the ViT's and a pruned SAM saves as a SAM file):
    `keep_rate` is the share of the remaining tokens kept at each of `prune_layers` (0-based; default
    `evit_layers`).
    """

    def __init__(self, vit: ImageEncoderViT, keep_rate: float, prune_layers: Optional[Sequence[int]] = None) -> None:
        super().__init__()
        depth = len(vit.blocks)
        layers = tuple(sorted(set(evit_layers(depth) if prune_layers is None else prune_layers)))
        if not layers or layers[0] < 0 or layers[-1] >= depth:
            raise ValueError(f"prune_layers must name layers of 0..{depth - 1}, got {list(layers)}")
        self.patch_embed, self.pos_embed, self.blocks, self.neck = vit.patch_embed, vit.pos_embed, vit.blocks, vit.neck
        self.img_size = vit.img_size
        self.keep_rate = check_keep_ratio(keep_rate, "keep_rate")
        self.prune_layers = layers

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x)
        if self.pos_embed is not None:
            x = x + self.pos_embed
        first = self.prune_layers[0] if self.keep_rate < 1.0 else len(self.blocks)
        for block in self.blocks[:first]:
            x = block(x)
        if first < len(self.blocks):
            x = self._pruned_layers(x, first)
        return self.neck(x.permute(0, 3, 1, 2))

    def _pruned_layers(self, x: torch.Tensor, first: int) -> torch.Tensor:
        """x: B x H x W x C, the tokens entering layer `first` -> B x H x W x C after the last layer."""
        B, H, W, C = x.shape
        grid = x.reshape(B, H * W, C)  # every token's latest value: dropped ones keep theirs from here on
        index = torch.arange(H * W, device=x.device).expand(B, -1)  # B x M raster indexes of the kept tokens
        tokens, fused, fused_weight = grid, None, None
        for layer in range(first, len(self.blocks)):
            block = self.blocks[layer]
            update, fused_update, attentiveness = sparse_attention(block, tokens, fused, index, (H, W))
            tokens = tokens + update
            fused = None if fused is None else fused + fused_update
            if layer in self.prune_layers:
                grid, index, tokens, fused, fused_weight = reorganize(
                    grid, index, tokens, attentiveness, fused, fused_weight, self.keep_rate
                )
            tokens = tokens + block.mlp(block.norm2(tokens))
            if fused is not None:
                fused = fused + block.mlp(block.norm2(fused))
        grid = grid.scatter(1, index[..., None].expand(-1, -1, C), tokens)
        return grid.view(B, H, W, C)


def reorganize(
    grid: torch.Tensor,
    index: torch.Tensor,
    tokens: torch.Tensor,
    attentiveness: torch.Tensor,
    fused: Optional[torch.Tensor],
    fused_weight: Optional[torch.Tensor],
    keep_rate: float,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, Optional[torch.Tensor], Optional[torch.Tensor]]:
    """EViT's reorganisation: keep the ceil(keep_rate x M) most attentive of the M kept tokens, fuse the rest.

    Args:
        grid: B x N x C, every token's latest value; index: B x M, the kept tokens' raster indexes;
        tokens: B x M x C, their values; attentiveness: B x M; fused: B x 1 x C or None, with
        fused_weight: B x 1 x 1, the summed attentiveness of what it holds.
    Returns:
        grid (the dropped tokens' values written to their cells), index, tokens, fused, fused_weight.
    """
    B, M, C = tokens.shape
    keep = max(1, math.ceil(keep_rate * M))
    if keep == M:
        return grid, index, tokens, fused, fused_weight
    order = torch.sort(attentiveness, dim=1, descending=True, stable=True).indices
    top, rest = order[:, :keep], order[:, keep:]
    dropped = torch.gather(tokens, 1, rest[..., None].expand(-1, -1, C))
    grid = grid.scatter(1, torch.gather(index, 1, rest)[..., None].expand(-1, -1, C), dropped)
    weight = torch.gather(attentiveness, 1, rest)[..., None]  # B x D x 1
    total = (weight * dropped).sum(dim=1, keepdim=True)
    mass = weight.sum(dim=1, keepdim=True)
    if fused is not None:
        total, mass = total + fused_weight * fused, mass + fused_weight
    fused = total / mass.clamp(min=torch.finfo(mass.dtype).tiny)
    tokens = torch.gather(tokens, 1, top[..., None].expand(-1, -1, C))
    return grid, torch.gather(index, 1, top), tokens, fused, mass


def sparse_attention(
    block: nn.Module,
    tokens: torch.Tensor,
    fused: Optional[torch.Tensor],
    index: torch.Tensor,
    grid_hw: Tuple[int, int],
) -> Tuple[torch.Tensor, Optional[torch.Tensor], torch.Tensor]:
    """The attention of SAM's `block` over the kept tokens (and the fused token, if any).

    Args:
        tokens: B x M x C, at raster cells `index` (B x M) of the H x W grid; fused: B x 1 x C or None.
    Returns:
        the residual updates of the tokens (B x M x C) and of the fused token (B x 1 x C or None), and each
        kept token's attentiveness (B x M): the attention it receives, mean over heads, summed over the
        kept queries and divided by M.
    """
    attn = block.attn
    B, M, C = tokens.shape
    every = tokens if fused is None else torch.cat([tokens, fused], dim=1)
    qkv = attn.qkv(block.norm1(every)).unflatten(-1, (3, attn.num_heads, -1)).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.unbind(0)  # B x heads x (M + f) x d
    if block.window_size == 0:
        out, received = _global_field(attn, q, k, v, index, grid_hw, M)
    else:
        out, received = _windows(attn, q, k, v, index, grid_hw, block.window_size, M)
    if fused is not None:  # the fused query: every kept token and itself, no position term
        fused_out = F.softmax((q[:, :, M:] * attn.scale) @ k.transpose(-2, -1), dim=-1) @ v
        out = torch.cat([out, fused_out], dim=2)
    out = attn.proj(out.transpose(1, 2).flatten(2))
    return out[:, :M], (None if fused is None else out[:, M:]), received / M


def _global_field(attn, q, k, v, index, grid_hw, M):
    """Kept queries over all keys (kept tokens, then the fused one) -> B x heads x M x d, and B x M received."""
    H, W = grid_hw
    rows, cols = index // W, index % W
    scores = (q[:, :, :M] * attn.scale) @ k.transpose(-2, -1)  # B x heads x M x (M + f)
    bias = _pairwise_rel_pos(q[:, :, :M], rows, attn.rel_pos_h, H) + _pairwise_rel_pos(q[:, :, :M], cols, attn.rel_pos_w, W)
    bias = F.pad(bias, (0, scores.shape[-1] - M))  # the fused key: no position term
    probs = (scores + bias).softmax(dim=-1)
    return probs @ v, probs[..., :M].sum(dim=2).mean(dim=1)


def _pairwise_rel_pos(q: torch.Tensor, pos: torch.Tensor, table: torch.Tensor, side: int) -> torch.Tensor:
    """SAM's decomposed relative-position term along one axis for query and key positions `pos` (B x M) of
    a field of `side` cells: q . table[pos_q - pos_k + side - 1] -> B x heads x M x M."""
    per_offset = q @ table.to(q.dtype).t()  # B x heads x M x (2 side - 1)
    offsets = pos[:, :, None] - pos[:, None, :] + side - 1  # B x M x M
    return torch.gather(per_offset, 3, offsets[:, None].expand(-1, q.shape[1], -1, -1))


def _windows(attn, q, k, v, index, grid_hw, window_size, M):
    """Kept queries over the kept keys of their window and the fused key -> B x heads x M x d, B x M received.

    The kept tokens' queries, keys and values are put back at their cells and cut into SAM's windows. Keys
    of dropped cells are masked out; the window padding past the grid's edge holds, as in SAM, the keys and
    values of a zero token (the projection's bias) and is attended to. Outputs of other cells are dropped.
    """
    H, W = grid_hw
    B, heads, _, d = q.shape
    ws = window_size
    Hp, Wp = -(-H // ws) * ws, -(-W // ws) * ws
    padded_index = (index // W) * Wp + index % W  # the kept tokens' cells in the padded grid
    C = heads * d

    def to_windows(t: torch.Tensor, fill: torch.Tensor) -> torch.Tensor:
        """B x heads x M x d -> (B x nW x heads) x ws^2 x d; `fill` (C) in every other cell."""
        cells = fill.to(t.dtype).expand(B, Hp * Wp, C).scatter(
            1, padded_index[..., None].expand(-1, -1, C), t[:, :, :M].transpose(1, 2).flatten(2)
        )
        windows = cells.view(B, Hp // ws, ws, Wp // ws, ws, heads, d).permute(0, 1, 3, 5, 2, 4, 6)
        return windows.reshape(-1, ws * ws, d)

    bias = attn.qkv.bias.view(3, C)
    qw, kw, vw = (to_windows(t, b) for t, b in zip((q, k, v), bias))
    inside = torch.zeros(Hp, Wp, dtype=torch.bool, device=q.device)
    inside[:H, :W] = True

    def per_window(cells: torch.Tensor) -> torch.Tensor:
        """B x (Hp Wp) bool -> (B nW heads) x 1 x ws^2."""
        cells = cells.view(B, Hp // ws, ws, Wp // ws, ws).transpose(2, 3).reshape(-1, 1, ws * ws)
        return cells.repeat_interleave(heads, dim=0)

    kept = per_window(torch.zeros(B, Hp * Wp, dtype=torch.bool, device=q.device).scatter(1, padded_index, True))
    keys = kept | per_window((~inside).flatten().expand(B, -1))  # the kept cells and the window padding
    scores = (qw * attn.scale) @ kw.transpose(-2, -1)
    scores = add_decomposed_rel_pos(scores, qw, attn.rel_pos_h, attn.rel_pos_w, (ws, ws), (ws, ws))
    scores = scores.masked_fill(~keys, torch.finfo(scores.dtype).min)
    windows = scores.shape[0] // (B * heads)
    values = vw
    if k.shape[2] > M:  # the fused key and value, in every window
        fused_k = k[:, :, M:][:, None].expand(-1, windows, -1, -1, -1).flatten(0, 2)  # (B nW heads) x 1 x d
        fused_v = v[:, :, M:][:, None].expand(-1, windows, -1, -1, -1).flatten(0, 2)
        scores = torch.cat([scores, (qw * attn.scale) @ fused_k.transpose(-2, -1)], dim=-1)
        values = torch.cat([vw, fused_v], dim=1)
    probs = scores.softmax(dim=-1)
    out = probs @ values  # (B nW heads) x ws^2 x d
    received = (probs[..., : ws * ws] * kept.transpose(1, 2)).sum(dim=1)  # over the kept queries
    received = received.view(-1, heads, ws * ws).mean(dim=1)[..., None]  # (B nW) x ws^2 x 1
    out = out.view(-1, heads, ws * ws, d).transpose(1, 2).flatten(2)  # (B nW) x ws^2 x C
    both = torch.cat([out, received], dim=-1).view(B, Hp // ws, Wp // ws, ws, ws, C + 1)
    both = both.transpose(2, 3).reshape(B, Hp * Wp, C + 1)
    picked = torch.gather(both, 1, padded_index[..., None].expand(-1, -1, C + 1))
    return picked[..., :C].unflatten(-1, (heads, d)).transpose(1, 2), picked[..., C]


def count_gmacs(encoder: nn.Module, images: torch.Tensor, device: str = "cpu") -> float:
    """GMACs per image of one `encoder` forward on `images` (B x 3 x S x S, SAM-preprocessed; all zeros: a
    square image, every token an image token), counted by `torch.utils.flop_counter`. On the "meta" device
    a copy of the encoder runs without memory or arithmetic, for encoders whose MACs do not depend on the
    values (the pruned encoder's do not; a student's depend on the image's extent, read off the padding)."""
    if device == "meta":
        encoder = copy.deepcopy(encoder).to("meta")
    with torch.no_grad(), FlopCounterMode(display=False, custom_mapping=CPU_SDPA_FLOPS) as counter:
        encoder(images.to(device))
    return counter.get_total_flops() / 2 / 1e9 / images.shape[0]


def choose_keep_rate(
    vit: ImageEncoderViT, target_gmacs: float, prune_layers: Optional[Sequence[int]] = None, steps: int = 1000
) -> Tuple[float, float]:
    """The largest keep rate on a grid of 1/`steps` whose pruned encoder costs at most `target_gmacs`, by
    bisection (MACs never fall as the keep rate grows), and its GMACs.

    A `ValueError` when even the smallest rate costs more (the dense layers before the first prune layer
    alone exceed the budget: prune earlier).
    """
    square = torch.zeros(1, 3, vit.img_size, vit.img_size)  # the pruned encoder's MACs do not depend on the input

    def gmacs(step: int) -> float:
        return count_gmacs(PrunedImageEncoder(vit, step / steps, prune_layers), square, "meta")

    low, high = 1, steps
    if gmacs(low) > target_gmacs:
        raise ValueError(f"even keep rate {low / steps:g} costs {gmacs(low):.3f} GMACs, over {target_gmacs:.3f}")
    while low < high:
        middle = (low + high + 1) // 2
        if gmacs(middle) <= target_gmacs:
            low = middle
        else:
            high = middle - 1
    return low / steps, gmacs(low)
