"""Reading images the way users hand them over (any mode, any bit depth, EXIF-rotated), and turning them
into encoder input exactly as `SamPredictor.set_image` does.

The demo and the Python API show a photo upright (EXIF orientation applied). Evaluation reads the pixels as
stored (`exif=False`): COCO's annotations, and the papers' loaders (PIL without `exif_transpose`), use the
stored orientation.

Size limits, so that a hostile or broken file is one error line instead of a crash or gigabytes of memory:
- at most `MAX_PIXELS` (150 megapixels, 450 MB as 8-bit RGB), read from the file's header before anything
  is decoded (a "decompression bomb" costs nothing);
- the loader refuses images thinner than 1:`MAX_ASPECT` (64): scaled to SAM's 1024-pixel input, their
  short side would not fill one 16-pixel patch;
- `sam_input` refuses any array whose short side would be scaled below one pixel (thinner than
  1:img_size); SAM's `ResizeLongestSide` would make it 0 pixels. Whatever the loader accepts passes here,
  also after a distillation crop (it keeps about half of each side or more: the aspect changes by ~2x).
"""

import re
import warnings
from pathlib import Path
from typing import Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps, UnidentifiedImageError
from segment_anything.utils.transforms import ResizeLongestSide

from .errors import BiglSamError
from .modeling.config import IMG_SIZE, PATCH_SIZE

MAX_PIXELS = 150_000_000
MAX_ASPECT = IMG_SIZE // PATCH_SIZE  # 64: the short side spans one patch when the long side is 1024 pixels
EXIF_ORIENTATION = 0x0112
UPRIGHT = 1  # the orientation tag's value for "stored as shown"


def load_image(source: Union[str, Path, Image.Image], exif: bool = True, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """An H x W x 3 uint8 RGB array, upright as the camera's EXIF orientation says (`exif=False`: the pixels
    as stored, the tag ignored).

    Grayscale is replicated to three channels, alpha is composited over white, 16-bit and float images
    are scaled to 8 bits, palette and CMYK images are converted. Images over `max_pixels` or thinner than
    1:`MAX_ASPECT` are refused (a `BiglSamError` with the size and the limit).
    """
    if isinstance(source, Image.Image):
        check_size(source.height, source.width, "image", max_pixels, MAX_ASPECT)
        return to_rgb(source, exif)
    path = Path(source)
    if not path.is_file():
        raise BiglSamError(f"{path}: image file not found")
    try:
        with warnings.catch_warnings():  # PIL warns above its own limit; the size is checked below instead
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                check_size(image.height, image.width, path, max_pixels, MAX_ASPECT)
                image.load()
                return to_rgb(image, exif)
    except Image.DecompressionBombError as err:  # above twice PIL's limit: PIL refuses before we see the size
        found = re.search(r"\((\d+) pixels\)", str(err))
        size = f"{int(found.group(1)):,} pixels" if found else "more pixels than PIL allows"
        raise BiglSamError(f"{path}: {size}, too large for SAM (limit {max_pixels:,} pixels)") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise BiglSamError(f"{path}: not a readable image ({err})") from None


def check_size(height: int, width: int, source, max_pixels: int, max_aspect: float) -> None:
    """A `BiglSamError` naming `source`, its width x height and the limit, for an image over `max_pixels`
    or with its long side more than `max_aspect` times its short side."""
    if height * width > max_pixels:
        raise BiglSamError(
            f"{source}: {width} x {height} = {height * width:,} pixels, too large for SAM (limit {max_pixels:,} pixels)"
        )
    if min(height, width) < 1 or max(height, width) > max_aspect * min(height, width):
        raise BiglSamError(
            f"{source}: {width} x {height} pixels, too thin for SAM (aspect ratio limit 1:{max_aspect:g})"
        )


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
    """H x W x 3 uint8 RGB -> the 3 x S x S encoder input (S = img_size) and the (h, w) it fills.

    Arrays over `MAX_PIXELS`, or so thin that scaling the long side to S leaves less than a pixel, are a
    `BiglSamError`."""
    check_size(image.shape[0], image.shape[1], "image", MAX_PIXELS, img_size)
    resized = ResizeLongestSide(img_size).apply_image(image)
    x = torch.as_tensor(resized).permute(2, 0, 1).float()
    x = (x - pixel_mean.view(-1, 1, 1)) / pixel_std.view(-1, 1, 1)
    h, w = x.shape[-2:]
    return F.pad(x, (0, img_size - w, 0, img_size - h)), (h, w)
