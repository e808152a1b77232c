"""Preprocess reproduces each backbone's torchvision (or timm) eval transform."""
import numpy as np
import pytest
import torch

from tests.conftest import make_image
from imgcls.models.core.preprocess import Preprocess, resized_size
from imgcls.models.zoo.registry import SEED_ARCHS, ZOO, default_preprocess

# Sizes smaller and larger than every resize size, portrait, landscape, square and extreme.
SIZES = [(64, 48), (48, 64), (233, 233), (500, 375), (375, 500), (640, 200), (97, 1001), (1200, 900)]


def reference_transform(arch: str):
    if arch == "efficientnet_lite0":
        import timm
        import timm.data

        cfg = timm.get_pretrained_cfg("tf_efficientnet_lite0").to_dict()
        config = timm.data.resolve_data_config(pretrained_cfg=cfg)
        return timm.data.create_transform(**config)
    return ZOO[arch].weights.weights.transforms()


@pytest.mark.parametrize("arch", SEED_ARCHS + ("efficientnet_lite0", "mobilenet_v3_large", "resnet18"))
def test_matches_reference_transform(arch):
    preprocess = default_preprocess(arch)
    reference = reference_transform(arch)
    for index, (width, height) in enumerate(SIZES):
        image = make_image(width, height, seed=index)
        expected = reference(image)
        if isinstance(expected, torch.Tensor):
            expected = expected.numpy()
        ours = preprocess(image)
        assert ours.shape == expected.shape, (arch, width, height)
        assert ours.dtype == np.float32
        np.testing.assert_allclose(ours, expected, atol=1e-5, rtol=0, err_msg=f"{arch} {width}x{height}")


def test_pixels_are_uint8_and_normalize_matches_call():
    preprocess = Preprocess(resize_size=40, crop_size=32)
    image = make_image(90, 50)
    pixels = preprocess.pixels(image)
    assert pixels.dtype == np.uint8 and pixels.shape == (3, 32, 32)
    np.testing.assert_array_equal(preprocess.normalize(pixels), preprocess(image))
    batch = np.stack([pixels, pixels])
    assert preprocess.normalize(batch).shape == (2, 3, 32, 32)


def test_shorter_side_resize_truncates_like_torchvision():
    assert resized_size(640, 480, 256) == (341, 256)
    assert resized_size(480, 640, 256) == (256, 341)
    assert resized_size(100, 100, 7) == (7, 7)


def test_serialises_into_the_card_format():
    preprocess = default_preprocess("efficientnet_b3")
    assert Preprocess.from_dict(preprocess.to_dict()) == preprocess
    assert preprocess.interpolation == "bicubic"
    assert default_preprocess("inception_v3").crop_size == 299
    lite0 = default_preprocess("efficientnet_lite0")
    assert (lite0.mean, lite0.std, lite0.interpolation, lite0.crop_size, lite0.resize_size) == (
        (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), "bicubic", 224, 256
    )


def test_invalid_preprocess_is_refused():
    with pytest.raises(ValueError, match="interpolation"):
        Preprocess(40, 32, interpolation="magic")
    with pytest.raises(ValueError, match="crop_size"):
        Preprocess(30, 32)
