"""Reading, checking and writing checkpoints.

`read_model(path)` reads any model file once, by one reader per format, into one `ModelWeights`: the
architecture, the state dict under segment_anything's names, and where it came from. The builders
(`bigl_sam.build`) take a `WeightsSource`: a `ModelWeights` or a path. Formats:
- official SAM files: a flat state dict (`image_encoder.*`, `prompt_encoder.*`, `mask_decoder.*`);
- files `save_checkpoint` writes: `.pth`, `{"format": FORMAT, "config": {...}, "model": <flat state dict>}`,
  or `.safetensors`, the flat state dict with FORMAT and the config (keep ratio included) in its metadata;
- Hugging Face transformers' `SamModel.save_pretrained` folders (`config.json` and one or sharded
  `.safetensors`, or `pytorch_model.bin`), and bare `.safetensors` files in transformers' or the official
  layout (`hf_layout` renames transformers' keys).
Nothing is unpickled but tensors (`weights_only=True`; safetensors holds no code): a checkpoint is data.
"""

import errno
import json
import os
import pickle
import re
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Dict, Iterable, Optional, Tuple, Union

import torch
from torch import nn

from . import hf_layout
from .errors import CheckpointError, first_line
from .fileio import atomic_write, atomic_write_bytes
from .modeling.config import (
    MODEL_CONFIGS, ModelConfig, config_from_dict, config_to_dict, infer_sam_vit_name, is_student,
)

FORMAT = "bigl-sam/1"
PathLike = Union[str, Path]
SHOWN_KEYS = 3
NOT_A_CHECKPOINT = "not a PyTorch checkpoint (corrupt or another format)"
SAFETENSORS = ".safetensors"
HF_CONFIG, HF_WEIGHTS, HF_INDEX, HF_PICKLE = (
    "config.json", "model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
)
# What torch's weights-only unpickler says when a pickle asks for an object it does not allow (code).
_FORBIDDEN_OBJECT = re.compile(
    r"GLOBAL (\S+)|Can only (?:create new object|build) .*but got (\S+(?: '[^']*'>)?)|unrecognized function (\S+)"
)


def read_checkpoint(path: PathLike) -> dict:
    """The checkpoint's contents, or a `CheckpointError` that names the file and the problem.

    torch's own messages for refused or garbled pickles advise loading again with `weights_only=False`;
    for a file from elsewhere that is the one thing not to do, so they are never passed on.
    """
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"{path}: is a directory, not a checkpoint file")
    _check_exists(path)
    try:
        with warnings.catch_warnings():  # garbage that looks like a newer pickle makes torch warn, then fail
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            state = torch.load(path, map_location="cpu", weights_only=True)
    except PermissionError:
        raise CheckpointError(f"{path}: permission denied") from None
    except OSError as err:
        raise CheckpointError(f"{path}: cannot read it ({err.strerror or type(err).__name__})") from None
    except pickle.UnpicklingError as err:
        raise CheckpointError(f"{path}: {_unpickling_problem(str(err))}") from None
    except Exception as err:  # torch.load raises many kinds on garbage; all mean the same to a user
        raise CheckpointError(f"{path}: {NOT_A_CHECKPOINT}{_first_sentence(err)}") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: holds a {type(state).__name__}, expected a state dict")
    return state


def _check_exists(path: Path) -> None:
    """A missing checkpoint is one `CheckpointError`: not found, a link to nothing, or a loop of links."""
    if path.exists():
        return
    if not path.is_symlink():
        raise CheckpointError(f"{path}: checkpoint file not found")
    try:
        path.resolve(strict=True)
    except RuntimeError:  # Python < 3.13 reports a loop so
        raise CheckpointError(f"{path}: is a symlink loop, not a checkpoint file") from None
    except OSError as err:
        if err.errno == errno.ELOOP:
            raise CheckpointError(f"{path}: is a symlink loop, not a checkpoint file") from None
    raise CheckpointError(f"{path}: is a symlink to {os.readlink(path)}, which does not exist")


def _unpickling_problem(message: str) -> str:
    """Pickled code or objects are refused by name; any other unpickler complaint means garbled bytes."""
    found = _FORBIDDEN_OBJECT.search(message)
    if found is None:
        return NOT_A_CHECKPOINT
    name = next(group for group in found.groups() if group is not None)
    return f"refused, it holds more than tensors (a pickled {name.strip('.')}); checkpoints must be data only"


def _first_sentence(err: Exception) -> str:
    """`: <first sentence>` of torch's zip reader (e.g. "failed finding central directory" for a file cut
    short); nothing for the bare Python errors garbage raises, or for a sentence about weights_only."""
    text = first_line(err) if isinstance(err, RuntimeError) and str(err).strip() else ""
    sentence = text.split(". ")[0].rstrip(".")
    return "" if not sentence or "weights_only" in sentence else f": {sentence}"


@dataclass(frozen=True, eq=False)
class ModelWeights:
    """One model file, read once.

    config: the architecture when the file names it (a student's or a saved SAM ViT's config, or the SAM ViT
        a transformers `config.json` describes); None for a bare official-layout state dict.
    state: the weights under segment_anything's names (a student's router and E-path too).
    source: where they came from (the path), for messages.
    """

    config: Optional[ModelConfig]
    state: Dict[str, torch.Tensor]
    source: str

    def architecture(self) -> ModelConfig:
        """The config, else the official SAM ViT read off the weights' width and depth."""
        return self.config if self.config is not None else MODEL_CONFIGS[infer_sam_vit_name(self.state, self.source)]


def read_model(path: PathLike) -> ModelWeights:
    """Any model file or transformers folder (module docstring), each file read once, checked to map
    parameter names to tensors; a bad one is one `CheckpointError` naming it."""
    path = Path(path)
    if path.is_dir():
        config, state = _read_hf_folder(path)
    elif path.suffix == SAFETENSORS:
        config, state = _split_safetensors(*read_safetensors(path), path)
    else:
        state = read_checkpoint(path)
        config, state = (None, state) if state.get("format") != FORMAT else _split_student_checkpoint(state, path)
    _check_state_dict(state, path)
    state = hf_layout.to_official(state, path) if hf_layout.is_hf_layout(state) else state
    return ModelWeights(config, state, str(path))


# A model's weights as a builder takes them: a checkpoint's path, or the file read already (`read_model`), so
# that a command naming one file in several roles reads it once.
WeightsSource = Union[PathLike, ModelWeights]


def as_weights(weights: WeightsSource) -> ModelWeights:
    """`weights` itself when read already, else the checkpoint at that path read."""
    return weights if isinstance(weights, ModelWeights) else read_model(weights)


class ModelReader:
    """`read_model` for a command that names one file in several roles (teacher, P-path, decoder): each
    file is read once, when first asked for; dropping the reader drops what it read."""

    def __init__(self) -> None:
        self._read: Dict[Path, ModelWeights] = {}

    def __call__(self, path: PathLike) -> ModelWeights:
        key = Path(path).resolve()
        if key not in self._read:
            self._read[key] = read_model(path)
        return self._read[key]


def read_safetensors(path: Path) -> Tuple[Dict[str, torch.Tensor], Dict[str, str]]:
    """The tensors and the metadata of one `.safetensors` file (the format holds no code)."""
    from safetensors import safe_open

    _check_exists(path)
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            return {key: f.get_tensor(key) for key in f.keys()}, dict(f.metadata() or {})
    except PermissionError:
        raise CheckpointError(f"{path}: permission denied") from None
    except Exception as err:  # safetensors' own error type for a cut or garbled file; OSError for the rest
        raise CheckpointError(f"{path}: not a readable safetensors file ({first_line(err)})") from None


def _split_safetensors(state: dict, metadata: Dict[str, str], path: Path) -> Tuple[Optional[ModelConfig], dict]:
    if metadata.get("format") != FORMAT:
        return None, state
    try:
        return config_from_dict(json.loads(metadata["config"])), state
    except (KeyError, TypeError, ValueError) as err:
        raise CheckpointError(f"{path}: bigl-sam checkpoint with a broken config ({err})") from None


def _read_hf_folder(folder: Path) -> Tuple[ModelConfig, dict]:
    """A transformers `save_pretrained` folder: the model its config.json describes (a SAM ViT, or a student
    `hf.to_transformers` saved) and its weights."""
    config_file = folder / HF_CONFIG
    if not config_file.is_file():
        raise CheckpointError(
            f"{folder}: is a directory without {HF_CONFIG}, not a checkpoint file nor a transformers "
            f"save_pretrained folder"
        )
    config = hf_layout.model_config_from_hf(_read_json(config_file), config_file)
    if (folder / HF_WEIGHTS).is_file():
        return config, read_safetensors(folder / HF_WEIGHTS)[0]
    if (folder / HF_INDEX).is_file():
        state = {}
        for name in hf_layout.hf_weight_files(_read_json(folder / HF_INDEX), folder / HF_INDEX):
            state.update(read_safetensors(folder / name)[0])
        return config, state
    if (folder / HF_PICKLE).is_file():
        return config, read_checkpoint(folder / HF_PICKLE)
    raise CheckpointError(f"{folder}: has {HF_CONFIG} but none of {HF_WEIGHTS}, {HF_INDEX}, {HF_PICKLE}")


def _read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise CheckpointError(f"{path}: not readable JSON ({err})") from None


def _split_student_checkpoint(state: dict, path: PathLike) -> Tuple[ModelConfig, dict]:
    try:
        config = config_from_dict(state["config"])
    except (KeyError, TypeError, ValueError) as err:
        raise CheckpointError(f"{path}: bigl-sam checkpoint with a broken config ({err})") from None
    if not isinstance(state.get("model"), dict):
        raise CheckpointError(f"{path}: its model entry is not a state dict ({type(state.get('model')).__name__})")
    return config, state["model"]


def _check_state_dict(weights: dict, path: PathLike) -> None:
    for key, value in weights.items():
        if not isinstance(key, str):
            raise CheckpointError(f"{path}: key {key!r} is not a parameter name ({type(key).__name__})")
        if not isinstance(value, torch.Tensor):
            raise CheckpointError(f"{path}: {key} is not a tensor ({type(value).__name__})")


def check_config(found: ModelConfig, wanted: ModelConfig, path: PathLike) -> None:
    """The registry key names an architecture; a checkpoint of another one is an error, not a surprise."""
    if found.name != wanted.name:
        raise CheckpointError(f"{path}: holds a {found.name} model, not {wanted.name}")
    if found.__class__ is not wanted.__class__ or _arch(found) != _arch(wanted):
        raise CheckpointError(f"{path}: {found.name} with a different architecture than this version's")


def _arch(config: ModelConfig) -> dict:
    """The fields that fix the weights' shapes (keep_ratio and decoder_model_type do not)."""
    data = config_to_dict(config)
    data.pop("keep_ratio", None)
    data.pop("decoder_model_type", None)
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
    """Writes a student (or any model built here) with its config, atomically: temp file, fsync, rename.
    A student's config carries the keep ratio its encoder has now, which it loads with again.
    `*.safetensors`: the weights with FORMAT and the config (JSON) in the file's metadata; else a `.pth`."""
    config = model.config
    if is_student(config):
        config = replace(config, keep_ratio=model.image_encoder.keep_ratio)
    if Path(path).suffix == SAFETENSORS:
        from safetensors.torch import save

        tensors = {key: value.detach().contiguous() for key, value in model.state_dict().items()}
        metadata = {"format": FORMAT, "config": json.dumps(config_to_dict(config))}
        return atomic_write_bytes(path, save(tensors, metadata=metadata))
    payload = {"format": FORMAT, "config": config_to_dict(config), "model": model.state_dict()}
    return atomic_save(payload, path)


def atomic_save(payload, path: PathLike) -> Path:
    """`torch.save` that never leaves a half-written file at `path`."""
    return atomic_write(path, lambda f: torch.save(payload, f))
