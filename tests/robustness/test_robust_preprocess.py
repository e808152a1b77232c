"""Extreme aspect ratios: resize + crop stays bounded in time and memory, and close to the exact path.

A 1x10000 PNG is 115 bytes; resized by its shorter side to 256 it would be 256x2,560,000 pixels
(about 2 GB and 20 s of CPU per request before this was bounded). ``resize_crop`` now resamples only
the part of the source that lands in the centre crop when the aspect ratio exceeds MAX_RESIZED_ASPECT.
"""
from __future__ import annotations

import resource
import time

import numpy as np
import pytest
from PIL import Image

from tests.conftest import encode, make_image
from imgcls.models.core.preprocess import MAX_RESIZED_ASPECT, INTERPOLATIONS, Preprocess, resized_size

LITE0 = Preprocess(resize_size=256, crop_size=224, interpolation="bicubic", mean=(0.5,) * 3, std=(0.5,) * 3)


def reference_resize_crop(preprocess: Preprocess, image: Image.Image) -> np.ndarray:
    """The torchvision order (resize everything, then crop), for images small enough to afford it."""
    width, height = resized_size(image.width, image.height, preprocess.resize_size)
    resized = image.resize((width, height), INTERPOLATIONS[preprocess.interpolation])
    top, left = int(round((height - preprocess.crop_size) / 2.0)), int(round((width - preprocess.crop_size) / 2.0))
    crop = preprocess.crop_size
    return np.asarray(resized.crop((left, top, left + crop, top + crop)), dtype=np.int16)


@pytest.mark.parametrize("size", [(10000, 1), (1, 10000), (40_000, 3)])
def test_strip_images_are_cheap(size):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.perf_counter()
    image = LITE0.load(encode(Image.new("RGB", size, (200, 30, 30)), "PNG"))
    pixels = LITE0.pixels(image)
    elapsed = time.perf_counter() - started
    grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert pixels.shape == (3, 224, 224)
    assert (pixels[0] == 200).all() and (pixels[1] == 30).all()
    assert grown_mib < 100, f"peak RSS grew {grown_mib:.0f} MiB for a {size} strip"
    assert elapsed < 5.0, elapsed  # was ~20 s; generous bound, not a benchmark


@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic"])
@pytest.mark.parametrize("size", [(60 * 50, 50), (40, 40 * 41)])
def test_bounded_path_stays_close_to_resize_then_crop(interpolation, size):
    preprocess = Preprocess(resize_size=36, crop_size=32, interpolation=interpolation)
    width, height = resized_size(*size, preprocess.resize_size)
    assert max(width, height) > MAX_RESIZED_ASPECT * preprocess.resize_size  # the bounded path is taken
    image = make_image(*size, seed=3)
    ours = np.asarray(preprocess.resize_crop(image), dtype=np.int16)
    reference = reference_resize_crop(preprocess, image)
    difference = np.abs(ours - reference)
    assert difference.mean() < 1.0 and difference.max() <= 32, (difference.mean(), difference.max())


def test_ordinary_aspect_ratios_keep_the_exact_path():
    image = make_image(97 * 3, 1001 * 3, seed=1)  # 1:10.3, the golden test's most extreme shape
    np.testing.assert_array_equal(np.asarray(LITE0.resize_crop(image), dtype=np.int16),
                                  reference_resize_crop(LITE0, image))


@pytest.mark.parametrize("kind", ["zeroed", "zero height", "dqt"])
def test_damaged_jpeg_headers_are_corrupt_not_non_images(kind):
    from tests.robustness.corpus import corrupt_header_jpeg
    from imgcls.models.core.preprocess import ImageDecodeError, load_image

    with pytest.raises(ImageDecodeError) as info:
        load_image(corrupt_header_jpeg(kind))
    assert info.value.reason == "corrupt", info.value
