"""Pictures for the page: mask overlays with the clicks drawn on, candidate thumbnails, the routing heat
map and the mask PNG. All take and return H x W x 3 uint8 RGB arrays."""

import hashlib
from pathlib import Path
from typing import Sequence, Tuple

import cv2
import numpy as np
from PIL import Image

from ..fileio import atomic_write
from .session import Prompts

MASK_COLOR = (30, 144, 255)  # SAM's own demo blue
MASK_ALPHA = 0.55
POSITIVE_COLOR = (40, 200, 60)
NEGATIVE_COLOR = (230, 40, 40)
BOX_COLOR = (255, 190, 0)
THUMBNAIL_SIDE = 256
MAX_SIDE = 2048  # larger images are scaled down: SAM sees 1024 pixels anyway, and masks stay cheap to draw
HEAT_ALPHA = 0.6
HEAT_MAP_SIDE = 512  # tokens are 16 pixels of a 1024 input: more pixels would show nothing new


def overlay_mask(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """image: H x W x 3, mask: H x W bool -> the image tinted blue where the mask is, with its outline."""
    tint = np.empty_like(image)
    tint[:] = MASK_COLOR
    tinted = cv2.addWeighted(image, 1 - MASK_ALPHA, tint, MASK_ALPHA, 0)
    out = np.where(mask[:, :, None], tinted, image)
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    cv2.drawContours(out, contours, -1, (255, 255, 255), _stroke(image))
    return out


def color_masks(image: np.ndarray, masks: Sequence[np.ndarray], seed: int = 0) -> np.ndarray:
    """image: H x W x 3, masks: H x W bool each -> the image with each mask tinted its own random colour,
    largest first so that small masks stay visible on top."""
    out = image.copy()
    colors = np.random.default_rng(seed).integers(0, 256, (len(masks), 3))
    for mask, color in sorted(zip(masks, colors), key=lambda pair: -int(pair[0].sum())):
        out[mask] = (out[mask] * (1 - MASK_ALPHA) + color * MASK_ALPHA).astype(np.uint8)
    return out


def draw_prompts(image: np.ndarray, prompts: Prompts) -> np.ndarray:
    """Green dots for positive points, red for negative, an orange box, an orange cross for a pending corner."""
    out = image.copy()
    radius, stroke = 3 * _stroke(image), _stroke(image)
    for (x, y), label in zip(prompts.points, prompts.labels):
        color = POSITIVE_COLOR if label == 1 else NEGATIVE_COLOR
        cv2.circle(out, (round(x), round(y)), radius + stroke, (255, 255, 255), -1, cv2.LINE_AA)
        cv2.circle(out, (round(x), round(y)), radius, color, -1, cv2.LINE_AA)
    if prompts.box is not None:
        x0, y0, x1, y1 = (round(v) for v in prompts.box)
        cv2.rectangle(out, (x0, y0), (x1, y1), BOX_COLOR, stroke + 1, cv2.LINE_AA)
    if prompts.corner is not None:
        x, y = (round(v) for v in prompts.corner)
        cv2.drawMarker(out, (x, y), BOX_COLOR, cv2.MARKER_CROSS, 4 * radius, stroke + 1)
    return out


def _stroke(image: np.ndarray) -> int:
    """Line width that stays visible on any image size."""
    return max(1, round(max(image.shape[:2]) / 400))


def thumbnail(image: np.ndarray, side: int = THUMBNAIL_SIDE) -> np.ndarray:
    """image: H x W x C, or a H x W bool mask, scaled so that its long side is at most `side`."""
    scale = side / max(image.shape[:2])
    if scale >= 1:
        return image
    h, w = image.shape[:2]
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    if image.dtype == bool:
        return cv2.resize(image.astype(np.uint8), size, interpolation=cv2.INTER_NEAREST).astype(bool)
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA)


def working_image(image: np.ndarray) -> Tuple[np.ndarray, float]:
    """The image scaled so that its long side is at most MAX_SIDE, and the scale used."""
    scaled = thumbnail(image, MAX_SIDE)
    return scaled, scaled.shape[1] / image.shape[1]


def routing_heat_map(image: np.ndarray, shares: np.ndarray) -> np.ndarray:
    """shares: h x w in [0, 1] over the token grid covering the image -> the image (at most HEAT_MAP_SIDE
    pixels long) under an inferno heat map: bright tokens took the big P-path in most layers."""
    image = thumbnail(image, HEAT_MAP_SIDE)
    h, w = image.shape[:2]
    levels = np.clip(shares * 255 + 0.5, 0, 255).astype(np.uint8)
    heat = cv2.applyColorMap(levels, cv2.COLORMAP_INFERNO)[:, :, ::-1]
    # The grid covers the image resized to 1024 plus at most one token of padding: stretch the full tokens.
    heat = cv2.resize(heat, (w, h), interpolation=cv2.INTER_NEAREST)
    gray = np.repeat(cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)[:, :, None], 3, axis=2)
    return (gray * (1 - HEAT_ALPHA) + heat * HEAT_ALPHA).astype(np.uint8)


def save_mask_png(mask: np.ndarray, folder: Path) -> Path:
    """mask: H x W bool -> a black/white PNG named after its content (the same mask, the same file)."""
    data = np.where(mask, 255, 0).astype(np.uint8)
    path = Path(folder) / f"mask-{hashlib.sha1(data.tobytes()).hexdigest()[:16]}.png"
    if not path.exists():
        atomic_write(path, lambda f: Image.fromarray(data).save(f, format="PNG", compress_level=1))
    return path
