"""Checkpoints of a training run and resuming from them.

`ckpt.pt` holds plain types and tensors only (it reloads with `weights_only=True`): step, the student's
config and weights, the optimizer, the RNG states and the run's whole `TrainConfig` (`--resume` compares
its run identity: the settings that fix what the run computes). No checkpoint is ever written with a
non-finite weight: the last good one stays.
"""

from pathlib import Path
from typing import Optional

import torch
from segment_anything.modeling import Sam
from tqdm import tqdm

from .. import distributed
from ..build import build_model
from ..checkpoint import atomic_save, read_checkpoint, save_checkpoint
from ..errors import BiglSamError
from ..modeling.config import config_from_dict, config_to_dict
from ..fileio import remove_stale_temporaries

STATE_FILE = "ckpt.pt"
FINAL_FILE = "final.pth"


def check_finite_weights(model: torch.nn.Module, what: str) -> None:
    """Refuses to save `model` when any weight is NaN or infinite."""
    bad = [name for name, value in model.state_dict().items() if value.is_floating_point() and not value.isfinite().all()]
    if bad:
        raise BiglSamError(f"{what}: not written, {len(bad)} tensors hold NaN or inf (e.g. {bad[0]})")


def save_training_state(out: Path, model: Sam, optimizer: torch.optim.Optimizer, step: int, run: dict) -> Path:
    """Writes RUN/ckpt.pt atomically; `run` is the run's whole config as plain types (`train.settings`)."""
    path = out / STATE_FILE
    check_finite_weights(model, str(path))
    rng = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    payload = {
        "step": step,
        "config": config_to_dict(model.config),
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "rng": rng,
        "run": run,
    }
    return atomic_save(payload, path)


def save_final(out: Path, model: Sam, name: str = FINAL_FILE) -> Path:
    """RUN/final.pth (or RUN/`name`): the model alone, loadable with the registry and `load_sam`."""
    path = out / name
    check_finite_weights(model, str(path))
    return save_checkpoint(model, path)


def load_state(out: Path, run: dict, process: distributed.Process) -> Optional[dict]:
    """The state of RUN/ckpt.pt for `--resume` (None when there is none yet); refused when a setting of `run`
    (the run identity, `train.identity`) differs from the one the checkpoint was made with."""
    path = out / STATE_FILE
    if process.is_main:
        remove_stale_temporaries(out)
    if not path.is_file():
        if process.is_main:
            tqdm.write(f"{path}: no checkpoint yet, starting at step 0")
        return None
    state = read_checkpoint(path)
    saved = state.get("run", {})
    changed = [f"{k}: {saved.get(k, '(absent)')!r} -> {v!r}" for k, v in run.items() if saved.get(k, "(absent)") != v]
    if changed:
        raise BiglSamError(f"{path}: --resume with other settings than the run ({'; '.join(changed)})")
    if "cuda" in state["rng"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["rng"]["cuda"])
    return state


def refuse_overwrite(out: Path) -> None:
    if (out / STATE_FILE).is_file():
        raise BiglSamError(f"{out}: already holds a run ({STATE_FILE}); pass --resume, or use another --out")
    return None


def model_from_state(state: dict) -> Sam:
    model = build_model(config_from_dict(state["config"]))
    model.load_state_dict(state["model"])
    return model


def restore(state: Optional[dict], optimizer: torch.optim.Optimizer) -> int:
    """Puts the optimizer and the RNG back as they were at the checkpoint; returns the step to start at."""
    if not state:
        return 0
    optimizer.load_state_dict(state["optimizer"])
    torch.set_rng_state(state["rng"]["torch"])
    return state["step"]
