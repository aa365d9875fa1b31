"""Random routing: a student whose routers are replaced by a uniformly random choice of the same number of
image tokens per layer, to measure what the learned router adds.

Every layer still takes K_b = ceil(keep ratio x image tokens) P-path slots for image b, among its image
tokens only (padding gets the lowest score, as with the router): only the scores change, to uniform noise,
so the top K_b of them are a uniformly random set. The noise of image b in layer l is drawn from a generator
seeded by (seed, l, a digest of the image's input): the choice does not depend on the batch, on the order
of the images, or on what ran before (a resumed or sharded evaluation chooses what a single run does).
The default student is untouched: this is a separate encoder class.
"""

import hashlib
from typing import List, Optional

import torch
from segment_anything.modeling import Sam
from torch import nn

from .config import BigLittleConfig, is_student
from .encoder import BigLittleImageEncoder


class RandomRouter(nn.Module):
    """A router's stand-in: B x H x W x C normalised tokens -> B x H x W x 1 scores, per image a random
    permutation of 0 .. H W - 1 (distinct, so no tie decides anything; their top K is a uniform K-subset).

    It holds the replaced router's parameters, unused and without gradient, under the same names: the
    encoder's state dict is the student's, so a student trained with random routing saves and loads as the
    registry model (and an optimizer or DDP sees no parameter that never gets a gradient).
    `image_keys` (one int per image of the batch) is set by `RandomRoutingEncoder` before each pass; not
    safe to share between threads.
    """

    def __init__(self, seed: int, layer: int, router: nn.Linear) -> None:
        super().__init__()
        self.seed, self.layer = seed, layer
        self.weight, self.bias = router.weight, router.bias
        self.requires_grad_(False)
        self.image_keys: Optional[List[int]] = None

    def forward(self, normed: torch.Tensor) -> torch.Tensor:
        B, H, W, _ = normed.shape
        if self.image_keys is None or len(self.image_keys) != B:
            raise RuntimeError("RandomRouter runs inside RandomRoutingEncoder, which names the images of each pass")
        scores = [
            torch.randperm(H * W, generator=torch.Generator().manual_seed(self._stream(key))).float()
            for key in self.image_keys
        ]
        return torch.stack(scores).view(B, H, W, 1).to(normed.device)

    def _stream(self, image_key: int) -> int:
        text = f"random-routing:{self.seed}:{self.layer}:{image_key}".encode()
        return int.from_bytes(hashlib.sha256(text).digest()[:8], "little")


class RandomRoutingEncoder(BigLittleImageEncoder):
    """A `BigLittleImageEncoder` whose every router is a `RandomRouter` of `seed` (the same state dict)."""

    def __init__(self, config: BigLittleConfig, seed: int) -> None:
        super().__init__(config)
        self.seed = seed
        for layer, block in enumerate(self.blocks):
            block.router = RandomRouter(seed, layer, block.router)

    def forward_with_routing(self, x: torch.Tensor, keep_ratio=None, input_size=None):
        keys = image_keys(x)
        for block in self.blocks:
            block.router.image_keys = keys
        return super().forward_with_routing(x, keep_ratio, input_size)


def image_keys(images: torch.Tensor) -> List[int]:
    """B x 3 x S x S input -> per image, the first 8 bytes of the sha256 of its float32 values."""
    values = images.detach().float().cpu().contiguous()
    return [int.from_bytes(hashlib.sha256(image.numpy().tobytes()).digest()[:8], "little") for image in values]


def with_random_routing(model: Sam, seed: int) -> Sam:
    """`model` (a student) with its image encoder replaced, in place, by a `RandomRoutingEncoder` of `seed`
    holding the same weights and keep ratio; returns `model`."""
    encoder = model.image_encoder
    if not is_student(encoder):
        raise ValueError("random routing replaces a big.LITTLE student's routers; this model has none")
    random = RandomRoutingEncoder(encoder.config, seed)
    random.load_state_dict(encoder.state_dict())
    random.keep_ratio = encoder.keep_ratio
    model.image_encoder = random.to(next(encoder.parameters()).device).train(encoder.training)
    return model
