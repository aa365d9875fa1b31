"""Reading images the way users hand them over (any mode, any bit depth, EXIF-rotated), and turning them
into encoder input exactly as `SamPredictor.set_image` does.

The demo and the Python API show a photo upright (EXIF orientation applied). Evaluation reads the pixels as
stored (`exif=False`): COCO's annotations, and the papers' loaders (PIL without `exif_transpose`), use the
stored orientation."""

from pathlib import Path
from typing import Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps, UnidentifiedImageError
from segment_anything.utils.transforms import ResizeLongestSide

from .errors import BiglSamError


EXIF_ORIENTATION = 0x0112
UPRIGHT = 1  # the orientation tag's value for "stored as shown"


def load_image(source: Union[str, Path, Image.Image], exif: bool = True) -> np.ndarray:
    """An H x W x 3 uint8 RGB array, upright as the camera's EXIF orientation says (`exif=False`: the pixels
    as stored, the tag ignored).

    Grayscale is replicated to three channels, alpha is composited over white, 16-bit and float images
    are scaled to 8 bits, palette and CMYK images are converted.
    """
    if isinstance(source, Image.Image):
        return to_rgb(source, exif)
    path = Path(source)
    if not path.is_file():
        raise BiglSamError(f"{path}: image file not found")
    try:
        with Image.open(path) as image:
            image.load()
            return to_rgb(image, exif)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise BiglSamError(f"{path}: not a readable image ({err})") from None


def orientation_tag(path: Union[str, Path]) -> int:
    """The EXIF orientation tag of an image file (1, upright, when it has none or cannot be read)."""
    try:
        with Image.open(path) as image:
            return int(image.getexif().get(EXIF_ORIENTATION, UPRIGHT))
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, TypeError):
        return UPRIGHT


def to_rgb(image: Image.Image, exif: bool = True) -> np.ndarray:
    if exif:
        image = ImageOps.exif_transpose(image)
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        image = _to_8bit(np.asarray(image, dtype=np.float64), image.mode)
    if image.mode == "P":
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA"):
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, image.convert("RGBA"))
    return np.ascontiguousarray(np.asarray(image.convert("RGB"), dtype=np.uint8))


def _to_8bit(values: np.ndarray, mode: str) -> Image.Image:
    """16-bit (and 32-bit integer) images span 0..65535; float images 0..1."""
    scale = 255.0 if mode == "F" else 255.0 / 65535.0
    return Image.fromarray(np.clip(values * scale + 0.5, 0, 255).astype(np.uint8), mode="L")


def sam_input(
    image: np.ndarray, pixel_mean: torch.Tensor, pixel_std: torch.Tensor, img_size: int
) -> Tuple[torch.Tensor, Tuple[int, int]]:
    """H x W x 3 uint8 RGB -> the 3 x S x S encoder input (S = img_size) and the (h, w) it fills."""
    resized = ResizeLongestSide(img_size).apply_image(image)
    x = torch.as_tensor(resized).permute(2, 0, 1).float()
    x = (x - pixel_mean.view(-1, 1, 1)) / pixel_std.view(-1, 1, 1)
    h, w = x.shape[-2:]
    return F.pad(x, (0, img_size - w, 0, img_size - h)), (h, w)
