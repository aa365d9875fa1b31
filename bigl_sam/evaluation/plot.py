"""mIoU curves as PNGs drawn with PIL (the project has no plotting library as a dependency): the
mIoU-per-click curves of `eval interactive`, the models side by side, and any mIoU against another x
(the study's curves against distillation steps and keep ratio), with intervals."""

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence, Tuple

from PIL import Image, ImageDraw

from ..fileio import atomic_write_bytes

SIZE = (720, 460)
MARGIN = (64, 24, 190, 48)  # left, top, right, bottom: room for the axes' labels and the legend
COLOURS = ((31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75))


@dataclass(frozen=True)
class Line:
    """One labelled line of a plot: points (x, y), and optionally each point's interval (low, high)."""

    label: str
    xs: Sequence[float]
    ys: Sequence[float]
    intervals: Optional[Sequence[Tuple[float, float]]] = None


def plot_curves(path: Path, curves: Sequence[Tuple[str, Sequence[float]]], title: str) -> Path:
    """curves: (label, mIoU x100 after click 1..K) per model -> a PNG at `path`, written atomically."""
    clicks = max((len(c) for _, c in curves), default=1)
    lines = [Line(label, range(1, len(curve) + 1), curve) for label, curve in curves]
    ticks = [k for k in range(1, clicks + 1) if k == 1 or k % 5 == 0]
    return plot_lines(path, lines, title, "click", ticks)


def plot_lines(path: Path, lines: Sequence[Line], title: str, x_label: str, x_ticks: Sequence[float]) -> Path:
    """mIoU x100 (0 to 100) against any x: each line's points joined, its intervals as vertical bars, the x
    axis spanning `x_ticks` and the points -> a PNG at `path`, written atomically."""
    image = Image.new("RGB", SIZE, "white")
    draw = ImageDraw.Draw(image)
    left, top, right, bottom = MARGIN[0], MARGIN[1], SIZE[0] - MARGIN[2], SIZE[1] - MARGIN[3]
    xs = list(x_ticks) + [x for line in lines for x in line.xs]
    x_min, x_max = (min(xs), max(xs)) if xs else (0.0, 1.0)

    def to_xy(x: float, value: float):
        return left + (right - left) * (x - x_min) / ((x_max - x_min) or 1), bottom - (bottom - top) * value / 100.0

    draw.rectangle([left, top, right, bottom], outline="black")
    for value in range(0, 101, 20):
        _, y = to_xy(x_min, value)
        draw.line([left - 4, y, left, y], fill="black")
        draw.line([left + 1, y, right - 1, y], fill=(230, 230, 230))
        draw.text((left - 30, y - 6), f"{value}", fill="black")
    for tick in x_ticks:
        x, _ = to_xy(tick, 0)
        draw.line([x, bottom, x, bottom + 4], fill="black")
        draw.text((x - 4, bottom + 8), f"{tick:g}", fill="black")
    draw.text(((left + right) // 2 - 20, bottom + 26), x_label, fill="black")
    draw.text((8, top - 16), "mIoU", fill="black")
    draw.text((left, 4), title, fill="black")
    for n, line in enumerate(lines):
        colour = COLOURS[n % len(COLOURS)]
        points = [to_xy(x, y) for x, y in zip(line.xs, line.ys)]
        if len(points) > 1:
            draw.line(points, fill=colour, width=2)
        for x, y in points:
            draw.ellipse([x - 2, y - 2, x + 2, y + 2], fill=colour)
        for x, (low, high) in zip(line.xs, line.intervals or []):
            (px, y_low), (_, y_high) = to_xy(x, low), to_xy(x, high)
            draw.line([px, y_low, px, y_high], fill=colour, width=1)
            draw.line([px - 3, y_low, px + 3, y_low], fill=colour)
            draw.line([px - 3, y_high, px + 3, y_high], fill=colour)
        legend_y = top + 8 + 18 * n
        draw.line([right + 12, legend_y + 6, right + 32, legend_y + 6], fill=colour, width=3)
        draw.text((right + 38, legend_y), line.label[:24], fill="black")
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return atomic_write_bytes(path, buffer.getvalue())
