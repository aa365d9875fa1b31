"""Images arrive in every mode; the loader hands SAM an upright 8-bit RGB array or a clear error."""

import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from bigl_sam.errors import BiglSamError
from bigl_sam.images import MAX_ASPECT, MAX_PIXELS, image_files, load_image, sam_input


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


def write_png_header(path, width: int, height: int) -> None:
    """A PNG that declares width x height 8-bit RGB but holds no pixel data: what a decompression bomb
    looks like until it is decoded (a real 20000 x 20000 file would take this test seconds to write)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b""))


def one_line_error(load, *args, **kwargs) -> str:
    with pytest.raises(BiglSamError) as err:
        load(*args, **kwargs)
    assert "\n" not in str(err.value)
    return str(err.value)


@pytest.mark.parametrize("width, height", [(20000, 20000), (12500, 12500)], ids=["above-pil-hard-limit", "above-ours"])
def test_decompression_bomb_is_one_line_with_size_and_limit(tmp_path, recwarn, width, height):
    """20000 x 20000 makes PIL raise DecompressionBombError, 12500 x 12500 only warn; both are ours to refuse."""
    write_png_header(tmp_path / "bomb.png", width, height)
    message = one_line_error(load_image, tmp_path / "bomb.png")
    assert "bomb.png" in message and "too large for SAM" in message
    assert f"{width * height:,} pixels" in message and f"limit {MAX_PIXELS:,} pixels" in message
    assert not [w for w in recwarn if issubclass(w.category, Image.DecompressionBombWarning)]


def test_pixel_limit_is_an_argument(tmp_path):
    Image.fromarray(np.zeros((30, 40, 3), np.uint8)).save(tmp_path / "small.png")
    assert load_image(tmp_path / "small.png", max_pixels=1200).shape == (30, 40, 3)
    message = one_line_error(load_image, tmp_path / "small.png", max_pixels=1199)
    assert "40 x 30 = 1,200 pixels, too large for SAM (limit 1,199 pixels)" in message


@pytest.mark.parametrize("width, height", [(10000, 3), (3, 10000), (6500, 100)])
def test_sliver_is_one_line_with_size_and_limit(tmp_path, width, height):
    Image.fromarray(np.zeros((height, width), np.uint8), "L").save(tmp_path / "sliver.png")
    message = one_line_error(load_image, tmp_path / "sliver.png")
    assert f"sliver.png: {width} x {height} pixels" in message and "too thin for SAM" in message
    assert f"1:{MAX_ASPECT}" in message


def test_thinnest_accepted_image_goes_through_sam_input(tmp_path):
    Image.fromarray(np.zeros((1, MAX_ASPECT), np.uint8), "L").save(tmp_path / "thin.png")
    image = load_image(tmp_path / "thin.png")
    x, input_size = sam_input(image, torch.zeros(3), torch.ones(3), 1024)
    assert x.shape == (3, 1024, 1024) and input_size == (1024 // MAX_ASPECT, 1024)


def test_sam_input_refuses_arrays_it_would_resize_to_nothing():
    """The Python API path: an array that never went through the loader. SAM's ResizeLongestSide would
    make a 0-pixel side of a 10000 x 3 image and fail deep inside torchvision."""
    sliver = np.zeros((3, 10000, 3), np.uint8)
    message = one_line_error(sam_input, sliver, torch.zeros(3), torch.ones(3), 1024)
    assert "10000 x 3 pixels" in message and "too thin for SAM" in message


def test_pil_image_source_is_checked_too():
    assert "too thin for SAM" in one_line_error(load_image, Image.new("RGB", (10000, 3)))


def test_distill_cache_names_a_bomb_and_a_sliver(tmp_path, official_checkpoint, capsys):
    """`distill cache` reads images with the same loader: each bad image is one line naming it, no traceback."""
    from bigl_sam.cli import main

    images = tmp_path / "images"
    images.mkdir()
    write_png_header(images / "bomb.png", 20000, 20000)
    Image.fromarray(np.zeros((3, 10000), np.uint8), "L").save(images / "sliver.png")
    args = ["--teacher", "vit_test", "--teacher-checkpoint", str(official_checkpoint("vit_test"))]
    code = main(["distill", "cache", *args, "--images", str(images), "--out", str(tmp_path / "cache")])
    err = capsys.readouterr().err
    assert code in (0, 2) and "Traceback" not in err
    assert "bomb.png" in err and "too large for SAM" in err


def test_image_files_lists_one_folder_or_a_tree_in_one_order(tmp_path):
    for name in ("b.PNG", "a.jpg", "notes.txt", "a.b/c.png", "a/b.png"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "folder.png").mkdir()
    assert [p.name for p in image_files(tmp_path)] == ["a.jpg", "b.PNG"]
    found = [p.relative_to(tmp_path).as_posix() for p in image_files(tmp_path, recursive=True)]
    assert found == ["a.b/c.png", "a.jpg", "a/b.png", "b.PNG"]  # as the sorted relative paths
    with pytest.raises(BiglSamError, match=f"^--examples {tmp_path / 'a'}/x: no such folder$"):
        image_files(tmp_path / "a" / "x", "--examples")
    (tmp_path / "empty").mkdir()
    with pytest.raises(BiglSamError, match=r"^--images .*empty: no images \(\.jpg, .*\) in this folder$"):
        image_files(tmp_path / "empty")
