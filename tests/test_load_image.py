"""load_image: every Pillow mode to RGB, EXIF orientation, limits, one typed error per failure."""
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from tests.conftest import encode, make_image
from imgcls.models.core.preprocess import ALPHA_BACKGROUND, ImageDecodeError, REASONS, load_image


def png_with_fake_size(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims width x height (a decompression bomb's shape)."""
    data = bytearray(encode(make_image(8, 8), "PNG"))
    ihdr = data.index(b"IHDR")
    data[ihdr + 4 : ihdr + 12] = struct.pack(">II", width, height)
    crc = zlib.crc32(bytes(data[ihdr : ihdr + 17])) & 0xFFFFFFFF
    data[ihdr + 17 : ihdr + 21] = struct.pack(">I", crc)
    return bytes(data)


@pytest.mark.parametrize("mode", ["RGB", "L", "LA", "P", "RGBA", "1", "CMYK", "I", "F", "YCbCr"])
def test_every_mode_becomes_rgb(mode):
    source = make_image(40, 30, mode=mode)
    fmt = {"CMYK": "JPEG", "YCbCr": "JPEG", "F": "TIFF", "I": "TIFF"}.get(mode, "PNG")
    image = load_image(encode(source, fmt))
    assert image.mode == "RGB"
    assert image.size == (40, 30)


def test_sixteen_bit_grayscale_is_scaled_not_clipped():
    ramp = (np.linspace(0, 65535, 64 * 8).reshape(8, 64)).astype(np.uint16)
    source = Image.fromarray(ramp)
    assert source.mode.startswith("I;16")
    out = np.asarray(load_image(encode(source, "PNG")))
    assert out.shape == (8, 64, 3)
    assert out[..., 0].min() == 0 and out[..., 0].max() == 255
    assert len(np.unique(out[..., 0])) > 200  # a ramp, not a saturated white image


def test_alpha_is_composited_on_fixed_background():
    rgba = Image.new("RGBA", (10, 10), (255, 0, 0, 0))  # fully transparent red
    rgba.paste((0, 0, 255, 255), (0, 0, 5, 10))  # opaque blue left half
    out = np.asarray(load_image(encode(rgba, "PNG")))
    assert tuple(out[0, 0]) == (0, 0, 255)
    assert tuple(out[0, 9]) == ALPHA_BACKGROUND


def test_palette_with_transparency_is_composited():
    palette = Image.new("P", (6, 6), 0)
    palette.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    palette.paste(1, (0, 0, 3, 6))
    palette.info["transparency"] = 0
    out = np.asarray(load_image(encode(palette, "PNG", transparency=0)))
    assert tuple(out[0, 0]) == (255, 0, 0)
    assert tuple(out[0, 5]) == ALPHA_BACKGROUND


# exif_transpose applies these to undo each orientation; we store the inverse, expect upright back.
INVERSE_OF_ORIENTATION = {
    1: None,
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_90,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_270,
}


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation(orientation):
    upright = make_image(30, 20, seed=orientation)
    inverse = INVERSE_OF_ORIENTATION[orientation]
    stored = upright if inverse is None else upright.transpose(inverse)
    exif = Image.Exif()
    exif[0x0112] = orientation
    out = load_image(encode(stored, "PNG", exif=exif.tobytes()))
    assert out.size == upright.size
    assert np.array_equal(np.asarray(out), np.asarray(upright))


def test_exif_orientation_jpeg_draft():
    """Draft decoding and EXIF rotation together: a rotated large JPEG comes back upright."""
    upright = make_image(1200, 800)
    exif = Image.Exif()
    exif[0x0112] = 6
    data = encode(upright.transpose(Image.Transpose.ROTATE_90), "JPEG", quality=95, exif=exif.tobytes())
    out = load_image(data, min_short_side=200)
    assert out.width > out.height
    assert min(out.size) >= 200 and out.size[0] < 1200  # reduced at decode time


def test_animated_gif_gives_first_frame():
    frames = [Image.new("RGB", (8, 8), color) for color in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)
    out = np.asarray(load_image(data))
    assert tuple(out[0, 0]) == (255, 0, 0)


def test_path_input(tmp_path, rgb_png_bytes):
    path = tmp_path / "x.png"
    path.write_bytes(rgb_png_bytes)
    assert load_image(path).size == (80, 60)
    assert load_image(str(path)).size == (80, 60)


def test_other_formats_decode():
    base = make_image(32, 24)
    for fmt, args in (("WEBP", {}), ("BMP", {}), ("TIFF", {}), ("JPEG", {"progressive": True}), ("AVIF", {})):
        assert load_image(encode(base, fmt, **args)).size == (32, 24), fmt


def expect_reason(source, reason, **kwargs):
    with pytest.raises(ImageDecodeError) as info:
        load_image(source, **kwargs)
    assert info.value.reason == reason, str(info.value)
    assert info.value.reason in REASONS
    return info.value


def test_failures_have_reason_codes(tmp_path, rgb_png_bytes):
    jpeg = encode(make_image(200, 150), "JPEG")
    expect_reason(b"", "empty")
    expect_reason(b"hello, I am text", "not_an_image")
    expect_reason(b"<html><body>hi</body></html>", "not_an_image")
    expect_reason(np.random.default_rng(0).bytes(4096), "not_an_image")
    expect_reason(rgb_png_bytes[: len(rgb_png_bytes) // 2], "truncated")
    expect_reason(jpeg[: len(jpeg) // 2], "truncated")
    expect_reason(rgb_png_bytes, "too_large", max_bytes=100)
    expect_reason(rgb_png_bytes, "too_many_pixels", max_pixels=1000)
    expect_reason(b"%PDF-1.4\n%...", "unsupported_format")
    expect_reason(b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg"/>', "unsupported_format")
    expect_reason(b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic", "unsupported_format")
    expect_reason(tmp_path / "missing.png", "not_found")  # a path that names nothing is not "not an image"
    expect_reason(tmp_path, "unreadable")  # a directory given as an image path
    big = tmp_path / "big.png"
    big.write_bytes(rgb_png_bytes)
    expect_reason(big, "too_large", max_bytes=100)


def test_corrupt_jpeg_header():
    jpeg = bytearray(encode(make_image(64, 64), "JPEG"))
    jpeg[2:40] = b"\x00" * 38
    with pytest.raises(ImageDecodeError) as info:
        load_image(bytes(jpeg))
    assert info.value.reason in ("corrupt", "not_an_image", "truncated")


def test_decompression_bomb_is_refused_before_decoding():
    import resource

    bomb = png_with_fake_size(30000, 30000)
    assert len(bomb) < 2000
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    expect_reason(bomb, "too_many_pixels")
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    assert after - before < 50_000  # KiB: nothing like 900 MB of pixels was allocated
