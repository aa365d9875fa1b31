"""Segment everything: SAM's automatic mask generator restructured for speed (`generator.MaskGenerator`, the
same masks), and the `bigl-sam amg` command over a folder of images. The names below are imported on first
use, so that `bigl-sam amg --help` imports no torch."""

import importlib

_LAZY = {"AmgSettings": "bigl_sam.amg.settings", "MaskGenerator": "bigl_sam.amg.generator"}

__all__ = sorted(_LAZY)


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module 'bigl_sam.amg' has no attribute {name!r}")
    return getattr(importlib.import_module(_LAZY[name]), name)
