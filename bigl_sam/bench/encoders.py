"""The image encoders a bench run times: SAM's ViTs as `segment_anything` ships them, big.LITTLE students
(one row per keep ratio) and the peers, all with random weights."""

from dataclasses import dataclass
from typing import List, Optional, Sequence

import torch
from torch import nn

from ..build import build_model
from ..errors import keep_ratio_list
from ..images import PIXEL_MEAN, PIXEL_STD
from ..modeling import get_config, is_student
from .peers import PEERS, build_peer


@dataclass
class BenchEncoder:
    model_type: str  # a registry key, or a peer's name (`peers.PEERS`)
    module: nn.Module  # the image encoder, eval mode, on the bench's device
    img_size: int  # side of its square input
    pixel_mean: torch.Tensor  # 3, what the model normalises with
    pixel_std: torch.Tensor  # 3
    keep_ratios: List[Optional[float]]  # [None] for encoders without a keep ratio

    @property
    def params_m(self) -> float:
        return sum(p.numel() for p in self.module.parameters()) / 1e6


def build_encoder(model_type: str, keep_ratio_spec: str, device: torch.device) -> BenchEncoder:
    if model_type in PEERS:
        mean, std = torch.tensor(PIXEL_MEAN), torch.tensor(PIXEL_STD)
        return BenchEncoder(model_type, build_peer(model_type).to(device), PEERS[model_type].img_size, mean, std,
                            [None])
    config = get_config(model_type)
    model = build_model(config)
    ratios: Sequence[Optional[float]] = [None]
    if is_student(config):
        ratios = keep_ratio_list(keep_ratio_spec, config.keep_ratio)
    encoder = model.image_encoder.to(device)
    return BenchEncoder(model_type, encoder, encoder.img_size, model.pixel_mean.flatten(), model.pixel_std.flatten(),
                        list(ratios))


def sam_vit_of(model_type: str) -> Optional[str]:
    """The SAM ViT a big.LITTLE student's P-path copies (its `vs SAM` baseline); None for others."""
    if model_type in PEERS:
        return None
    config = get_config(model_type)
    return config.sam_model_type if is_student(config) else None
