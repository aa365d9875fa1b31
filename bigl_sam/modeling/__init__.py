"""The big.LITTLE encoder (`encoder`, with `blocks`, `routing`, `attention`) and the model registry
(`config`). `config` needs no torch; the encoder's names are imported on first use, so that the registry
(and `bigl-sam COMMAND --help`) loads without torch."""

import importlib

from .config import (
    BIGL_CONFIGS,
    MODEL_CONFIGS,
    SAM_VIT_CONFIGS,
    BigLittleConfig,
    SamVitConfig,
    check_keep_ratio_applies,
    get_config,
    is_student,
    keep_ratio_of,
)

_LAZY = {"BigLittleImageEncoder": "bigl_sam.modeling.encoder", "routing_map": "bigl_sam.modeling.encoder"}

__all__ = [
    "BIGL_CONFIGS",
    "MODEL_CONFIGS",
    "SAM_VIT_CONFIGS",
    "BigLittleConfig",
    "BigLittleImageEncoder",
    "SamVitConfig",
    "get_config",
    "check_keep_ratio_applies",
    "is_student",
    "keep_ratio_of",
    "routing_map",
]


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module 'bigl_sam.modeling' has no attribute {name!r}")
    return getattr(importlib.import_module(_LAZY[name]), name)
