"""Images arrive in every mode; the loader hands SAM an upright 8-bit RGB array or a clear error."""

import numpy as np
import pytest
from PIL import Image

from bigl_sam.errors import BiglSamError
from bigl_sam.images import load_image


def test_grayscale_becomes_three_equal_channels(tmp_path):
    Image.fromarray(np.full((5, 7), 90, np.uint8), "L").save(tmp_path / "g.png")
    rgb = load_image(tmp_path / "g.png")
    assert rgb.shape == (5, 7, 3) and rgb.dtype == np.uint8 and (rgb == 90).all()


def test_rgba_is_composited_over_white(tmp_path):
    pixels = np.zeros((2, 2, 4), np.uint8)
    pixels[0, 0] = (255, 0, 0, 255)  # opaque red; the rest fully transparent black
    Image.fromarray(pixels, "RGBA").save(tmp_path / "a.png")
    rgb = load_image(tmp_path / "a.png")
    assert tuple(rgb[0, 0]) == (255, 0, 0) and tuple(rgb[1, 1]) == (255, 255, 255)


def test_16_bit_is_scaled_to_8_bit(tmp_path):
    Image.fromarray(np.array([[0, 65535]], np.uint16)).save(tmp_path / "d.png")
    rgb = load_image(tmp_path / "d.png")
    assert rgb[0, 0, 0] == 0 and rgb[0, 1, 0] == 255


def test_exif_rotation_is_applied(tmp_path):
    pixels = np.zeros((4, 6, 3), np.uint8)
    pixels[0, 0] = 255  # white marker at the top-left of the stored image
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: display rotated 90 degrees clockwise
    Image.fromarray(pixels).save(tmp_path / "r.jpg", exif=exif, quality=100)
    rgb = load_image(tmp_path / "r.jpg")
    assert rgb.shape == (6, 4, 3)
    assert rgb[0, -1].mean() > 200, "the marker moves to the top-right once rotated"


def test_corrupt_and_missing_files(tmp_path):
    (tmp_path / "bad.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    with pytest.raises(BiglSamError, match="bad.jpg: not a readable image"):
        load_image(tmp_path / "bad.jpg")
    with pytest.raises(BiglSamError, match="image file not found"):
        load_image(tmp_path / "missing.png")
