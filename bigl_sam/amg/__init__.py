"""Segment everything: SAM's automatic mask generator restructured for speed (`generator.MaskGenerator`, the
same masks), and the `bigl-sam amg` command over a folder of images."""

from .generator import MaskGenerator
from .settings import AmgSettings

__all__ = ["AmgSettings", "MaskGenerator"]
