"""Which weights the demo runs: `--checkpoint`, else a file in `weights/`, else random (with a banner).

Nothing is ever downloaded here.
"""

from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

from segment_anything.modeling import Sam

from ..build import build_sam
from ..errors import BiglSamError
from ..modeling.config import check_keep_ratio
from ..weights import weights_dir
from .inference import is_student

PathLike = Union[str, Path]
WEIGHTS_DIR = weights_dir()  # $BIGL_SAM_WEIGHTS, else the repository's weights/


@dataclass(frozen=True)
class DemoModel:
    name: str  # registry name, e.g. bigl_b_t
    model: Sam
    source: Optional[Path]  # the checkpoint it was loaded from; None: random weights

    @property
    def trained(self) -> bool:
        return self.source is not None

    @property
    def is_student(self) -> bool:
        return is_student(self.model)


@dataclass(frozen=True)
class DemoModels:
    main: DemoModel
    teacher: Optional[DemoModel] = None  # --compare

    @property
    def untrained(self):
        return [m for m in (self.main, self.teacher) if m is not None and not m.trained]


def find_weights(name: str, weights_dir: PathLike = WEIGHTS_DIR) -> Optional[Path]:
    """The last (by name) `*.pth` in `weights_dir` named after `name` (`bigl_b_t*.pth`; for SAM's own
    models also the official `sam_vit_h*.pth`), or None."""
    folder = Path(weights_dir)
    if not folder.is_dir():
        return None
    found = sorted(p for p in folder.glob("*.pth") if p.name.startswith((name, f"sam_{name}")))
    return found[-1] if found else None


def load_demo_model(
    name: str, checkpoint: Optional[PathLike] = None, weights_dir: PathLike = WEIGHTS_DIR
) -> DemoModel:
    """Raises `BiglSamError` (a `CheckpointError`) for a file that is missing, corrupt or of another model."""
    path = Path(checkpoint) if checkpoint is not None else find_weights(name, weights_dir)
    return DemoModel(name, build_sam(name, path), path)


def load_demo_models(
    name: str,
    checkpoint: Optional[PathLike] = None,
    compare: Optional[str] = None,
    compare_checkpoint: Optional[PathLike] = None,
    keep_ratio: Optional[float] = None,
    weights_dir: PathLike = WEIGHTS_DIR,
) -> DemoModels:
    if compare_checkpoint is not None and compare is None:
        raise BiglSamError("--compare-checkpoint given without --compare MODEL")
    main = load_demo_model(name, checkpoint, weights_dir)
    if keep_ratio is not None:
        if not main.is_student:
            raise BiglSamError(f"--keep-ratio: {name} is SAM's own encoder, only big.LITTLE students route tokens")
        main.model.image_encoder.keep_ratio = check_keep_ratio(keep_ratio, "--keep-ratio")
    teacher = load_demo_model(compare, compare_checkpoint, weights_dir) if compare is not None else None
    return DemoModels(main, teacher)


def untrained_banner(models: DemoModels, weights_dir: PathLike = WEIGHTS_DIR) -> str:
    """Markdown warning naming the models that run on random weights, and how to get real ones; "" if none."""
    names = ", ".join(m.name for m in models.untrained)
    if not names:
        return ""
    return (
        f"⚠️ **Untrained weights ({names}): the masks below are not meaningful.** No checkpoint was given "
        f"and none was found in `{weights_dir}/`. Get the released checkpoints with `bigl-sam weights` "
        "(they go to `weights/`), or start the demo with `--checkpoint PATH`."
    )
