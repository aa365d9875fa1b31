"""The `bigl-sam amg` command: segment everything in a folder of images with SAM's automatic mask generator
restructured for speed (`bigl_sam.mask_generator.MaskGenerator`, the same masks; its settings:
`bigl_sam.mask_generator_settings`). Those two names are here too, imported on first use, so that
`bigl-sam amg --help` imports no torch."""

import importlib

_LAZY = {"AmgSettings": "bigl_sam.mask_generator_settings", "MaskGenerator": "bigl_sam.mask_generator"}

__all__ = sorted(_LAZY)


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module 'bigl_sam.amg' has no attribute {name!r}")
    return getattr(importlib.import_module(_LAZY[name]), name)
