"""bigl-sam: a big.LITTLE ViT image encoder for Segment Anything.

Switching existing SAM code is one import line:

    from bigl_sam import sam_model_registry, SamPredictor, SamAutomaticMaskGenerator

The names below are imported on first use, so that the torch-free parts (`bigl_sam.onnx.OnnxPredictor`,
`bigl_sam.images`, `bigl_sam.errors`) import without torch installed.
"""

import importlib

from .errors import BiglSamError, CheckpointError
from .images import load_image

_LAZY = {
    "SamAutomaticMaskGenerator": "segment_anything",
    "SamPredictor": "segment_anything",
    "build_model": "bigl_sam.build",
    "build_sam": "bigl_sam.build",
    "build_student_from_sam": "bigl_sam.build",
    "load_embedding": "bigl_sam.embeddings",
    "load_sam": "bigl_sam.build",
    "load_student": "bigl_sam.pretrained",
    "sam_model_registry": "bigl_sam.build",
    "save_checkpoint": "bigl_sam.checkpoint",
    "set_embedding": "bigl_sam.embeddings",
}

__all__ = ["BiglSamError", "CheckpointError", "load_image", *sorted(_LAZY)]


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module 'bigl_sam' has no attribute {name!r}")
    value = getattr(importlib.import_module(_LAZY[name]), name)
    globals()[name] = value
    return value


def __dir__():
    return __all__
