"""Reading, checking and writing checkpoints.

Two layouts are understood:
- official SAM files: a flat state dict (`image_encoder.*`, `prompt_encoder.*`, `mask_decoder.*`);
- bigl-sam students: `{"format": FORMAT, "config": {...}, "model": <flat state dict as above>}`.
Everything is read with `weights_only=True`: a checkpoint is data, never code.
"""

import pickle
from pathlib import Path
from typing import Dict, Iterable, Tuple, Union

import torch
from torch import nn

from .errors import CheckpointError
from .fileio import atomic_write
from .modeling.config import ModelConfig, config_from_dict, config_to_dict

FORMAT = "bigl-sam/1"
PathLike = Union[str, Path]
SHOWN_KEYS = 3


def read_checkpoint(path: PathLike) -> dict:
    """The checkpoint's contents, or a `CheckpointError` that names the file and the problem."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint file not found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        first_line = str(err).strip().splitlines()[0]
        raise CheckpointError(f"{path}: refused, it holds more than tensors ({first_line})") from None
    except Exception as err:  # torch.load raises many kinds on garbage; all mean the same to a user
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint, truncated or corrupt ({reason})") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: holds a {type(state).__name__}, expected a state dict")
    return state


def is_student_checkpoint(state: dict) -> bool:
    return state.get("format") == FORMAT


def split_student_checkpoint(state: dict, path: PathLike) -> Tuple[ModelConfig, Dict[str, torch.Tensor]]:
    try:
        return config_from_dict(state["config"]), state["model"]
    except (KeyError, TypeError, ValueError) as err:
        raise CheckpointError(f"{path}: bigl-sam checkpoint with a broken config ({err})") from None


def check_student_config(found: ModelConfig, wanted: ModelConfig, path: PathLike) -> None:
    """The registry key names an architecture; a checkpoint of another one is an error, not a surprise."""
    if found.name != wanted.name:
        raise CheckpointError(f"{path}: holds a {found.name} model, not {wanted.name}")
    if found.__class__ is not wanted.__class__ or _arch(found) != _arch(wanted):
        raise CheckpointError(f"{path}: {found.name} with a different architecture than this version's")


def _arch(config: ModelConfig) -> dict:
    """The fields that fix the weights' shapes (keep_ratio and teacher do not)."""
    data = config_to_dict(config)
    data.pop("keep_ratio", None)
    data.pop("teacher", None)
    return data


def load_state_dict_into(
    module: nn.Module, state: Dict[str, torch.Tensor], path: PathLike, fresh: Iterable[str] = ()
) -> None:
    """Loads `state` into `module` strictly, except that keys containing any of `fresh` may be missing.

    Any missing or unexpected key, or a tensor of another shape, is one `CheckpointError` naming the
    file and what differs.
    """
    fresh = tuple(fresh)
    expected = module.state_dict()
    missing = [k for k in expected if k not in state and not any(f in k for f in fresh)]
    unexpected = [k for k in state if k not in expected]
    mismatched = [
        f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and tuple(state[k].shape) != tuple(v.shape)
    ]
    problems = []
    if mismatched:
        problems.append(f"{len(mismatched)} tensors of another shape (checkpoint vs model): {_few(mismatched)}")
    if missing:
        problems.append(f"{len(missing)} missing keys: {_few(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected keys: {_few(unexpected)}")
    if problems:
        raise CheckpointError(f"{path}: does not fit {_describe(module)}; " + "; ".join(problems))
    module.load_state_dict(state, strict=False)


def _few(items) -> str:
    shown = ", ".join(items[:SHOWN_KEYS])
    return shown + (", ..." if len(items) > SHOWN_KEYS else "")


def _describe(module: nn.Module) -> str:
    config = getattr(module, "config", None)
    return f"model {config.name}" if config is not None else type(module).__name__


def save_checkpoint(model: nn.Module, path: PathLike) -> Path:
    """Writes a student (or any model built here) with its config, atomically: temp file, fsync, rename."""
    payload = {"format": FORMAT, "config": config_to_dict(model.config), "model": model.state_dict()}
    return atomic_save(payload, path)


def atomic_save(payload, path: PathLike) -> Path:
    """`torch.save` that never leaves a half-written file at `path`."""
    return atomic_write(path, lambda f: torch.save(payload, f))
