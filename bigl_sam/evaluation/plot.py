"""The mIoU-per-click curves of `eval interactive`, the models side by side, as a PNG drawn with PIL (the
project has no plotting library as a dependency)."""

import io
from pathlib import Path
from typing import Sequence, Tuple

from PIL import Image, ImageDraw

from ..fileio import atomic_write_bytes

SIZE = (720, 460)
MARGIN = (64, 24, 190, 48)  # left, top, right, bottom: room for the axes' labels and the legend
COLOURS = ((31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75))


def plot_curves(path: Path, curves: Sequence[Tuple[str, Sequence[float]]], title: str) -> Path:
    """curves: (label, mIoU x100 after click 1..K) per model -> a PNG at `path`, written atomically."""
    image = Image.new("RGB", SIZE, "white")
    draw = ImageDraw.Draw(image)
    left, top, right, bottom = MARGIN[0], MARGIN[1], SIZE[0] - MARGIN[2], SIZE[1] - MARGIN[3]
    clicks = max((len(c) for _, c in curves), default=1)

    def to_xy(k: int, value: float):
        x = left + (right - left) * (k - 1) / max(clicks - 1, 1)
        return x, bottom - (bottom - top) * value / 100.0

    draw.rectangle([left, top, right, bottom], outline="black")
    for value in range(0, 101, 20):
        _, y = to_xy(1, value)
        draw.line([left - 4, y, left, y], fill="black")
        draw.line([left + 1, y, right - 1, y], fill=(230, 230, 230))
        draw.text((left - 30, y - 6), f"{value}", fill="black")
    for k in range(1, clicks + 1):
        x, _ = to_xy(k, 0)
        draw.line([x, bottom, x, bottom + 4], fill="black")
        if k == 1 or k % 5 == 0:
            draw.text((x - 4, bottom + 8), str(k), fill="black")
    draw.text(((left + right) // 2 - 20, bottom + 26), "click", fill="black")
    draw.text((8, top - 16), "mIoU", fill="black")
    draw.text((left, 4), title, fill="black")
    for n, (label, curve) in enumerate(curves):
        colour = COLOURS[n % len(COLOURS)]
        points = [to_xy(k, v) for k, v in enumerate(curve, start=1)]
        if len(points) > 1:
            draw.line(points, fill=colour, width=2)
        for x, y in points:
            draw.ellipse([x - 2, y - 2, x + 2, y + 2], fill=colour)
        legend_y = top + 8 + 18 * n
        draw.line([right + 12, legend_y + 6, right + 32, legend_y + 6], fill=colour, width=3)
        draw.text((right + 38, legend_y), label[:24], fill="black")
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return atomic_write_bytes(path, buffer.getvalue())
