"""The big.LITTLE image encoder: a drop-in for SAM's `ImageEncoderViT`."""

from functools import partial
from typing import List, Optional, Tuple, Union

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from segment_anything.modeling.common import LayerNorm2d
from segment_anything.modeling.image_encoder import PatchEmbed

from .blocks import BigLittleBlock
from .config import BigLittleConfig, check_keep_ratio
from .routing import InputSize, RoutingPlan, plan_routing, plan_routing_in_graph, token_extents


class BigLittleImageEncoder(nn.Module):
    """B x 3 x 1024 x 1024 (SAM-preprocessed) -> B x 256 x 64 x 64 image embeddings.

    Patch embedding, position embedding, the P-path of every block and the neck have SAM's names and
    shapes, so a SAM ViT checkpoint of the matching size loads into them unchanged. `keep_ratio` is a
    runtime knob: set it on the encoder, or pass it per call.
    """

    def __init__(self, config: BigLittleConfig) -> None:
        super().__init__()
        vit = config.p_path
        grid = vit.img_size // vit.patch_size
        self.config = config
        self.img_size = vit.img_size
        self.keep_ratio = config.keep_ratio
        # In training, recompute each block in the backward pass instead of keeping its activations
        # (transformers' `gradient_checkpointing_enable()` sets both).
        self.gradient_checkpointing = False
        self._gradient_checkpointing_func = partial(checkpoint, use_reentrant=False)
        self.patch_embed = PatchEmbed(
            kernel_size=(vit.patch_size, vit.patch_size),
            stride=(vit.patch_size, vit.patch_size),
            embed_dim=vit.embed_dim,
        )
        self.pos_embed = nn.Parameter(torch.zeros(1, grid, grid, vit.embed_dim))
        self.blocks = nn.ModuleList(
            BigLittleBlock(
                dim=vit.embed_dim,
                num_heads=vit.num_heads,
                mlp_ratio=vit.mlp_ratio,
                window_size=0 if i in vit.global_attn_indexes else vit.window_size,
                grid_size=grid,
                little_dim=config.little_dim,
                little_heads=config.little_heads,
                little_mlp_ratio=config.little_mlp_ratio,
                little_window_size=config.little_window(i),
            )
            for i in range(vit.depth)
        )
        self.neck = nn.Sequential(
            nn.Conv2d(vit.embed_dim, vit.out_chans, kernel_size=1, bias=False),
            LayerNorm2d(vit.out_chans),
            nn.Conv2d(vit.out_chans, vit.out_chans, kernel_size=3, padding=1, bias=False),
            LayerNorm2d(vit.out_chans),
        )

    def forward(
        self, x: torch.Tensor, keep_ratio: Optional[float] = None, input_size: Optional[InputSize] = None
    ) -> torch.Tensor:
        """x: B x 3 x 1024 x 1024 -> B x 256 x 64 x 64. `keep_ratio` overrides `self.keep_ratio`.

        `input_size`: the image's (h, w) in input pixels (one for all, or one per image), if known; else it
        is read off the zero padding of `x` (`routing.token_extents`).
        """
        return self.forward_with_routing(x, keep_ratio, input_size)[0]

    def forward_with_routing(
        self,
        x: torch.Tensor,
        keep_ratio: Union[float, torch.Tensor, None] = None,
        input_size: Optional[InputSize] = None,
        hidden_states: Optional[List[torch.Tensor]] = None,
    ) -> Tuple[torch.Tensor, List[Optional[torch.Tensor]]]:
        """Like `forward`, also returning, per layer, the B x K indexes the P-path updated (-1: a slot the
        image did not use; None: every token). A `hidden_states` list gets the B x H x W x C tokens before
        each layer and after the last appended (depth + 1 of them).

        Safe to call from several threads at once (it stores nothing on the module). At keep < 1 it reads
        the images' extent once (one host sync, unless `input_size` is given); the layers then run with
        static shapes. A 0-dim tensor `keep_ratio` (the ONNX encoder's runtime input, checked where it is
        fed) plans in the graph instead (`routing.plan_routing_in_graph`; the extent is always read off the
        padding), and every layer routes, also at 1.0. So does a float keep < 1 under `torch.export` (where
        the extent cannot be read to the host) when `input_size` is not given.
        """
        if isinstance(keep_ratio, torch.Tensor):
            if input_size is not None:
                raise ValueError("input_size cannot be given with a tensor keep_ratio: the extent is read off x")
            plan = plan_routing_in_graph(x, keep_ratio, self.config.p_path.patch_size, self.pos_embed.shape[1:3])
            return self._run_blocks(x, plan, hidden_states)
        ratio = check_keep_ratio(self.keep_ratio if keep_ratio is None else keep_ratio)
        plan = None
        if ratio < 1.0 and input_size is None and torch.compiler.is_exporting():
            ratio_tensor = torch.tensor(ratio, dtype=torch.float64, device=x.device)
            plan = plan_routing_in_graph(x, ratio_tensor, self.config.p_path.patch_size, self.pos_embed.shape[1:3])
        elif ratio < 1.0:
            extents = token_extents(x, self.config.p_path.patch_size, input_size)  # (h, w) in tokens, per image
            plan = plan_routing(extents, ratio, self.pos_embed.shape[1:3], x.device)
        return self._run_blocks(x, plan, hidden_states)

    def _run_blocks(
        self, x: torch.Tensor, plan: Optional[RoutingPlan], hidden_states: Optional[List[torch.Tensor]] = None
    ) -> Tuple[torch.Tensor, List[Optional[torch.Tensor]]]:
        x = self.patch_embed(x) + self.pos_embed
        routing = []
        for block in self.blocks:
            if hidden_states is not None:
                hidden_states.append(x)
            if self.gradient_checkpointing and self.training:
                x, index = self._gradient_checkpointing_func(block, x, plan)
            else:
                x, index = block(x, plan)
            routing.append(index)
        if hidden_states is not None:
            hidden_states.append(x)
        return self.neck(x.permute(0, 3, 1, 2)), routing


def routing_map(routing: List[Optional[torch.Tensor]], grid_hw: tuple) -> torch.Tensor:
    """Share of layers that sent each token to the P-path: B x H x W in [0, 1].

    Args:
        routing: per layer, B x K raster indexes or None (all tokens), as `forward_with_routing` returns.
        grid_hw: (H, W) of the token grid.
    """
    H, W = grid_hw
    counts = None
    for index in routing:
        if index is None:
            layer = torch.ones(1, H * W)
        else:  # unused slots (-1) land in a spare column that is dropped
            index = index.cpu().masked_fill(index.cpu() < 0, H * W)
            layer = torch.zeros(index.shape[0], H * W + 1).scatter_(1, index, 1.0)[:, : H * W]
        counts = layer if counts is None else counts + layer
    return (counts / len(routing)).view(-1, H, W)
