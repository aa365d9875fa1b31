"""The study's rows that are not a registry model, as models `bigl-sam eval` runs: a SAM ViT pruned
EViT-style (row 6) and a student with random routing (row 5). Each is a registry model and its weights
(eval's `ModelSpec`) plus what is done to its encoder once loaded; the run's settings record that, so each
variant keeps its own resumable records."""

from dataclasses import dataclass
from typing import Optional, Tuple

import torch
from segment_anything.modeling import Sam

from ..errors import BiglSamError, check_keep_ratio
from ..evaluation.runner import ModelSpec
from ..modeling.config import get_config, is_student
from .pruning import PrunedImageEncoder
from .random_routing import with_random_routing


@dataclass(frozen=True)
class VariantSpec(ModelSpec):
    """`ModelSpec` with exactly one of: `evit_keep_rate` (and optionally `prune_layers`, 0-based) for a SAM
    ViT, `random_routing_seed` for a student."""

    evit_keep_rate: Optional[float] = None
    prune_layers: Optional[Tuple[int, ...]] = None
    random_routing_seed: Optional[int] = None

    def __post_init__(self) -> None:
        super().__post_init__()
        student = is_student(get_config(self.name))
        if (self.evit_keep_rate is None) == (self.random_routing_seed is None):
            raise BiglSamError("a study row is either --evit-keep-rate (a SAM) or --random-routing (a student)")
        if self.evit_keep_rate is not None:
            check_keep_ratio(self.evit_keep_rate, "--evit-keep-rate")
            if student:
                raise BiglSamError(f"--evit-keep-rate prunes SAM's own ViT; {self.name} is a big.LITTLE student")
        elif not student:
            raise BiglSamError(f"--random-routing replaces a student's routers; {self.name} is SAM's own ViT")
        if self.prune_layers is not None and self.evit_keep_rate is None:
            raise BiglSamError("--prune-layers goes with --evit-keep-rate")

    def variant(self) -> dict:
        if self.evit_keep_rate is not None:
            return {"evit_keep_rate": self.evit_keep_rate,
                    "prune_layers": None if self.prune_layers is None else list(self.prune_layers)}
        return {"random_routing_seed": self.random_routing_seed}

    def settings(self, model: Sam) -> dict:
        return {**super().settings(model), "variant": self.variant()}

    def load(self, device: torch.device) -> Sam:
        model = super().load(device)
        if self.random_routing_seed is not None:
            return with_random_routing(model, self.random_routing_seed)
        try:
            model.image_encoder = PrunedImageEncoder(model.image_encoder, self.evit_keep_rate, self.prune_layers)
        except ValueError as err:
            raise BiglSamError(f"--prune-layers: {err}") from None
        return model
