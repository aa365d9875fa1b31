"""Regenerates the demo's example images: scenes drawn here with PIL, no third-party photos.

    python demo/examples/make_examples.py
"""

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

SIZE = (640, 480)
HERE = Path(__file__).resolve().parent


def vertical_gradient(top, bottom) -> Image.Image:
    t = np.linspace(0.0, 1.0, SIZE[1])[:, None, None]
    rows = (1 - t) * np.array(top) + t * np.array(bottom)
    return Image.fromarray(np.repeat(rows, SIZE[0], axis=1).astype(np.uint8))


def shaded_disc(draw: ImageDraw.ImageDraw, center, radius, color) -> None:
    """A disc with a lighter highlight toward the top left, so it reads as a round object."""
    x, y = center
    for step in range(radius, 0, -2):
        light = 1.0 + 0.5 * (1 - step / radius)
        shade = tuple(min(255, int(c * light)) for c in color)
        dx = dy = (radius - step) * 0.35
        draw.ellipse([x - step - dx, y - step - dy, x + step - dx, y + step - dy], fill=shade)


def fruit_bowl() -> Image.Image:
    image = vertical_gradient((236, 226, 208), (170, 130, 90))
    draw = ImageDraw.Draw(image)
    draw.rectangle([0, 330, SIZE[0], SIZE[1]], fill=(120, 80, 50))
    for center, radius, color in [
        ((250, 270), 62, (200, 40, 30)),
        ((360, 262), 58, (240, 150, 20)),
        ((305, 215), 50, (120, 180, 40)),
        ((420, 300), 40, (210, 190, 40)),
    ]:
        shaded_disc(draw, center, radius, color)
    draw.chord([160, 240, 500, 400], 0, 180, fill=(60, 90, 150))
    draw.ellipse([160, 300, 500, 340], outline=(40, 60, 110), width=4)
    return image.filter(ImageFilter.GaussianBlur(1))


def house() -> Image.Image:
    image = vertical_gradient((110, 170, 235), (200, 225, 245))
    draw = ImageDraw.Draw(image)
    draw.rectangle([0, 340, SIZE[0], SIZE[1]], fill=(90, 160, 70))
    draw.ellipse([500, 40, 580, 120], fill=(255, 220, 80))
    draw.rectangle([150, 220, 360, 370], fill=(220, 200, 170), outline=(120, 90, 60), width=3)
    draw.polygon([(130, 225), (255, 130), (380, 225)], fill=(170, 60, 50))
    draw.rectangle([230, 290, 280, 370], fill=(110, 70, 40))
    for x0 in (170, 300):
        draw.rectangle([x0, 250, x0 + 40, 290], fill=(170, 210, 240), outline=(255, 255, 255), width=3)
    draw.rectangle([455, 260, 480, 370], fill=(100, 70, 40))
    shaded_disc(draw, (468, 225), 60, (40, 120, 50))
    return image.filter(ImageFilter.GaussianBlur(1))


def shapes() -> Image.Image:
    image = vertical_gradient((245, 245, 245), (205, 210, 220))
    draw = ImageDraw.Draw(image)
    draw.rounded_rectangle([60, 90, 250, 280], radius=24, fill=(60, 130, 200))
    shaded_disc(draw, (400, 170), 90, (220, 70, 90))
    draw.polygon([(200, 430), (320, 260), (440, 430)], fill=(250, 180, 40))
    draw.ellipse([470, 320, 600, 420], fill=(80, 170, 120))
    return image.filter(ImageFilter.GaussianBlur(0.8))


if __name__ == "__main__":
    for name, make in [("fruit_bowl", fruit_bowl), ("house", house), ("shapes", shapes)]:
        path = HERE / f"{name}.jpg"
        make().save(path, quality=88)
        print(path, path.stat().st_size, "bytes")
