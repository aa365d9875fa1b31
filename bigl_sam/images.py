"""Reading images the way users hand them over (any mode, any bit depth, EXIF-rotated), and turning them
into encoder input exactly as `SamPredictor.set_image` does.

Needs numpy and Pillow only (torch is imported by `sam_input` alone), so the ONNX predictor can use it
where torch is not installed.

The demo and the Python API show a photo upright (EXIF orientation applied). Evaluation reads the pixels as
stored (`exif=False`): COCO's annotations, and the papers' loaders (PIL without `exif_transpose`), use the
stored orientation.

Size limits, so that a hostile or broken file is one error line instead of a crash or gigabytes of memory:
- at most `MAX_PIXELS` (150 megapixels, 450 MB as 8-bit RGB), read from the file's header before anything
  is decoded (a "decompression bomb" costs nothing);
- the loader (and `OnnxPredictor.set_image`, for arrays) refuses images thinner than 1:`MAX_ASPECT`
  (64): scaled to SAM's 1024-pixel input, their short side would not fill one 16-pixel patch;
- `sam_input` refuses any array whose short side would be scaled below one pixel (thinner than
  1:img_size); SAM's `ResizeLongestSide` would make it 0 pixels. Whatever the loader accepts passes here,
  also after a distillation crop (it keeps about half of each side or more: the aspect changes by ~2x).
"""

import re
import warnings
from pathlib import Path
from typing import List, Sequence, Tuple, Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import BiglSamError

# SAM's input: the long side resized to IMG_SIZE pixels, cut into PATCH_SIZE-pixel patches (here, not in
# modeling.config, which imports them from here: this module runs without torch).
IMG_SIZE = 1024
PATCH_SIZE = 16

# The file suffixes taken as images where a folder is scanned (`image_files`): formats Pillow reads (a GIF: its
# first frame).
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif")

MAX_PIXELS = 150_000_000
MAX_ASPECT = IMG_SIZE // PATCH_SIZE  # 64: the short side spans one patch when the long side is 1024 pixels
EXIF_ORIENTATION = 0x0112
UPRIGHT = 1  # the orientation tag's value for "stored as shown"

# SAM's own normalisation constants (segment_anything/build_sam.py), RGB order.
PIXEL_MEAN = [123.675, 116.28, 103.53]
PIXEL_STD = [58.395, 57.12, 57.375]


def image_files(folder: Path, what: str = "--images", recursive: bool = False) -> List[Path]:
    """The image files (by suffix) directly in `folder`, or anywhere under it with `recursive`, sorted by their
    path relative to `folder` (as POSIX text); a broken or looping link is listed too, so that reading it
    reports it as skipped. A missing folder, or one without images, is a `BiglSamError` that starts with
    `what` (the option that named the folder)."""
    if not folder.is_dir():
        raise BiglSamError(f"{what} {folder}: no such folder")
    found = folder.rglob("*") if recursive else folder.iterdir()
    files = sorted((p for p in found if p.suffix.lower() in IMAGE_SUFFIXES and (p.is_file() or p.is_symlink())),
                   key=lambda p: p.relative_to(folder).as_posix())
    if not files:
        raise BiglSamError(f"{what} {folder}: no images ({', '.join(IMAGE_SUFFIXES)}) in this folder")
    return files


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


def check_size(height: int, width: int, source, max_pixels: int = MAX_PIXELS, max_aspect: float = MAX_ASPECT) -> None:
    """A `BiglSamError` naming `source`, its width x height and the limit, for an image over `max_pixels`
    or with its long side more than `max_aspect` times its short side. The defaults are the rule for every
    image a user hands over (`load_image`, `OnnxPredictor.set_image`)."""
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


def resized_shape(h: int, w: int, long_side: int) -> Tuple[int, int]:
    """(h, w) scaled so the longer side is `long_side`, rounded as SAM's `ResizeLongestSide` rounds."""
    scale = long_side * 1.0 / max(h, w)
    return int(h * scale + 0.5), int(w * scale + 0.5)


def sam_input_array(
    image: np.ndarray, pixel_mean: Sequence[float], pixel_std: Sequence[float], img_size: int
) -> Tuple[np.ndarray, Tuple[int, int]]:
    """H x W x 3 uint8 RGB -> the 3 x S x S float32 encoder input (S = img_size) and the (h, w) it fills.

    Arrays over `MAX_PIXELS`, or so thin that scaling the long side to S leaves less than a pixel, are a
    `BiglSamError`. Resized with Pillow's bilinear filter (what SAM's `ResizeLongestSide` calls through
    torchvision), normalised per channel, zero-padded at the bottom and right: bit for bit what
    `SamPredictor` feeds the encoder.
    """
    check_size(image.shape[0], image.shape[1], "image", MAX_PIXELS, img_size)
    h, w = resized_shape(image.shape[0], image.shape[1], img_size)
    resized = np.asarray(Image.fromarray(image).resize((w, h), Image.BILINEAR), dtype=np.float32)
    mean = np.asarray(pixel_mean, dtype=np.float32).reshape(1, 1, -1)
    std = np.asarray(pixel_std, dtype=np.float32).reshape(1, 1, -1)
    x = np.zeros((3, img_size, img_size), dtype=np.float32)
    x[:, :h, :w] = ((resized - mean) / std).transpose(2, 0, 1)
    return x, (h, w)


def sam_input(image: np.ndarray, pixel_mean, pixel_std, img_size: int):
    """`sam_input_array` as a torch tensor; `pixel_mean`, `pixel_std` as the model holds them (3 x 1 x 1).

    Returns the 3 x S x S float32 tensor and the (h, w) it fills.
    """
    import torch  # here, not at the top: the rest of this module runs without torch

    x, hw = sam_input_array(image, pixel_mean.flatten().tolist(), pixel_std.flatten().tolist(), img_size)
    return torch.from_numpy(x), hw
