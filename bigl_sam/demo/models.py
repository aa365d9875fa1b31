"""Which weights the demo runs: `--checkpoint`, else the rule of `bigl_sam.pretrained` (a student file in
the weights folder, else a student built from SAM's official files there, else random weights with a
banner). Nothing is ever downloaded here.
"""

from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Union

import torch
from segment_anything.modeling import Sam

from ..cli import program
from ..errors import BiglSamError
from ..modeling.config import check_keep_ratio, check_keep_ratio_applies, is_student
from ..pretrained import WeightsChoice, choose_weights, load_chosen, sam_vit_label

PathLike = Union[str, Path]


@dataclass(frozen=True)
class DemoModel:
    model_type: str  # registry key, e.g. bigl_b_t
    model: Sam
    weights: WeightsChoice  # what the rule took, and from which files
    encoder_dtype: torch.dtype = torch.float32  # bfloat16: the image encoder runs under autocast

    @property
    def trained(self) -> bool:
        return not self.weights.random

    @property
    def is_student(self) -> bool:
        return is_student(self.model.image_encoder)

    @property
    def weights_label(self) -> str:
        """Short, for the status table: the checkpoint's name, the official files' names, or "untrained"."""
        if self.weights.random:
            return "untrained"
        return " + ".join(dict.fromkeys(path.name for path in self.weights.files))


@dataclass(frozen=True)
class DemoModels:
    main: DemoModel
    compare: Optional[DemoModel] = None  # --compare: shown beside the main model, on the same clicks

    @property
    def shown(self) -> List[DemoModel]:
        """The main model, then the --compare one if there is one."""
        return [m for m in (self.main, self.compare) if m is not None]

    @property
    def untrained(self) -> List[DemoModel]:
        return [m for m in self.shown if not m.trained]


def load_demo_model(
    model_type: str,
    checkpoint: Optional[PathLike] = None,
    weights_dir: Optional[PathLike] = None,
    manifest: Optional[PathLike] = None,
    encoder_dtype: torch.dtype = torch.float32,
) -> DemoModel:
    """Raises `BiglSamError` (a `CheckpointError`) for a file that is missing, corrupt or of another model."""
    choice = choose_weights(model_type, checkpoint, weights_dir, manifest)
    return DemoModel(model_type, load_chosen(choice), choice, encoder_dtype)


def load_demo_models(
    model_type: str,
    checkpoint: Optional[PathLike] = None,
    compare: Optional[str] = None,
    compare_checkpoint: Optional[PathLike] = None,
    keep_ratio: Optional[float] = None,
    weights_dir: Optional[PathLike] = None,
    manifest: Optional[PathLike] = None,
    encoder_dtype: torch.dtype = torch.float32,
) -> DemoModels:
    """The main model (its keep ratio: `keep_ratio` if given, else the one it loads with) and the --compare one."""
    if compare_checkpoint is not None and compare is None:
        raise BiglSamError("--compare-checkpoint given without --compare MODEL")
    main = load_demo_model(model_type, checkpoint, weights_dir, manifest, encoder_dtype)
    if keep_ratio is not None:
        check_keep_ratio_applies(main.model, keep_ratio, model_type)
        main.model.image_encoder.keep_ratio = check_keep_ratio(keep_ratio, "--keep-ratio")
    compared = None
    if compare is not None:
        compared = load_demo_model(compare, compare_checkpoint, weights_dir, manifest, encoder_dtype)
    return DemoModels(main, compared)


def untrained_banner(models: DemoModels) -> str:
    """Markdown warning naming the models that run on random weights, and how to get real ones; "" if none."""
    untrained = models.untrained
    if not untrained:
        return ""
    names = ", ".join(m.model_type for m in untrained)
    wanted = list(dict.fromkeys(file for m in untrained for file in m.weights.wanted))
    downloads = " and ".join(f"`{program()} weights download {file}`" for file in wanted)
    folder = untrained[0].weights.folder
    banner = f"⚠️ **Random weights ({names}): the masks below are noise.** No weights were found in `{folder}`."
    if wanted:
        banner += f" Get SAM's official files with {downloads}, then restart"
        if any(m.is_student for m in untrained):
            banner += (
                ": the demo builds the student from them, and at keep ratio 1.0 it is exactly SAM "
                f"{sam_vit_label(models.main.model_type)}. No trained big.LITTLE student has been published yet; below "
                f"1.0 the routing is untrained until one is distilled (`{program()} distill`, docs/distillation.md)"
            )
        banner += "."
    return banner + " Or start the demo with `--checkpoint PATH`."


def weights_note(model: DemoModel, keep_ratio: Optional[float]) -> str:
    """The status line about the main model's weights at `keep_ratio` (None: SAM's own encoder)."""
    if model.weights.random:
        return "Random weights: the masks are noise (see the banner above)."
    if not model.weights.untrained_router:
        return ""
    sam = f"SAM {sam_vit_label(model.model_type)}"
    if keep_ratio == 1.0:
        return f"{sam} exactly (keep 1.0); below 1.0 the routing is untrained until distilled (docs/distillation.md)"
    return (
        f"Keep {keep_ratio:.2f} with an untrained router: the masks are worse than {sam}'s until the student is "
        "distilled (docs/distillation.md); at keep 1.0 it is exactly that SAM."
    )
