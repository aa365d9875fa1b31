"""The study's rows that are not a registry model and file as they stand, as models `bigl-sam eval` runs:
a SAM ViT pruned EViT-style (row 6), a student built fresh from a SAM file (rows 2 and 3), a student with
random routing (row 5). Each is a registry model and its weights (eval's `ModelSpec`) plus what is done to
it once loaded; the run's settings record that, so each variant keeps its own resumable records."""

from dataclasses import dataclass
from typing import Optional, Tuple

import torch
from segment_anything.modeling import Sam

from ..build import build_student_from_sam
from ..checkpoint import ModelWeights
from ..errors import BiglSamError, check_keep_ratio
from ..modeling.config import get_config, is_student
from ..modeling.random_routing import with_random_routing
from ..pretrained import ModelSpec
from .pruning import PrunedImageEncoder


FRESH_STUDENT_SEED = 0  # the fresh router and E-path of `fresh_student` (E-path residual scale 0 whatever the seed)


@dataclass(frozen=True)
class VariantSpec(ModelSpec):
    """`ModelSpec` (a registry model and its weights) made a study row, by one of:

    - `evit_keep_rate` (and optionally `prune_layers`, 0-based): the SAM ViT pruned EViT-style (row 6);
    - `fresh_student`: the student of that name built from the SAM (its P-path, embeddings, neck, prompt
      encoder and mask decoder; router and E-path fresh, seeded), at the spec's keep ratio (rows 2 and 3);
    - `random_routing_seed`: the student (or the fresh student) with random routing (row 5).
    """

    evit_keep_rate: Optional[float] = None
    prune_layers: Optional[Tuple[int, ...]] = None
    fresh_student: Optional[str] = None
    random_routing_seed: Optional[int] = None

    def __post_init__(self) -> None:
        super().__post_init__()
        student = is_student(get_config(self.model_type))
        if self.evit_keep_rate is not None:
            check_keep_ratio(self.evit_keep_rate, "--evit-keep-rate")
            if student:
                raise BiglSamError(f"--evit-keep-rate prunes SAM's own ViT; {self.model_type} is a big.LITTLE student")
            if self.fresh_student is not None or self.random_routing_seed is not None:
                raise BiglSamError("--evit-keep-rate prunes a SAM: it goes with neither --fresh-student nor "
                                   "--random-routing")
        elif self.prune_layers is not None:
            raise BiglSamError("--prune-layers goes with --evit-keep-rate")
        if self.fresh_student is not None:
            if student:
                raise BiglSamError(f"--fresh-student builds a student from a SAM; {self.model_type} is a student already")
            if not is_student(get_config(self.fresh_student)):
                raise BiglSamError(f"--fresh-student: {self.fresh_student} is not a big.LITTLE student")
        elif self.random_routing_seed is not None and not student:
            raise BiglSamError(f"--random-routing replaces a student's routers; {self.model_type} is SAM's own ViT "
                               "(add --fresh-student to build one from it)")
        if self.evit_keep_rate is None and self.fresh_student is None and self.random_routing_seed is None:
            raise BiglSamError("a study row needs --evit-keep-rate, --fresh-student or --random-routing")

    def variant(self) -> dict:
        if self.evit_keep_rate is not None:
            return {"evit_keep_rate": self.evit_keep_rate,
                    "prune_layers": None if self.prune_layers is None else list(self.prune_layers)}
        variant = {"random_routing_seed": self.random_routing_seed}
        if self.fresh_student is not None:
            variant.update(fresh_student=self.fresh_student, fresh_student_seed=FRESH_STUDENT_SEED)
        return variant

    def settings(self, model: Sam) -> dict:
        return {**super().settings(model), "variant": self.variant()}

    def load(self, device: torch.device) -> Sam:
        model = super().load(device)
        if self.evit_keep_rate is not None:
            try:
                model.image_encoder = PrunedImageEncoder(model.image_encoder, self.evit_keep_rate, self.prune_layers)
            except ValueError as err:
                raise BiglSamError(f"--prune-layers: {err}") from None
            return model
        if self.fresh_student is not None:
            weights = ModelWeights(model.config, model.cpu().state_dict(), self.weights.describe())
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(FRESH_STUDENT_SEED)
                model = build_student_from_sam(self.fresh_student, weights)
            if self.keep_ratio is not None:
                model.image_encoder.keep_ratio = self.keep_ratio
            model = model.to(device).eval()
        if self.random_routing_seed is not None:
            model = with_random_routing(model, self.random_routing_seed)
        return model
