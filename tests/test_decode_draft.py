"""JPEG draft decoding must not change what a real-weights model sees as top-1 on real photos."""
import pytest

pytest.importorskip("skimage.data")

from benchmarks.decode_draft import top1_pairs, twelve_megapixel_jpegs  # noqa: E402
from imgcls.models.core.preprocess import load_image  # noqa: E402
from imgcls.models.zoo.registry import default_preprocess  # noqa: E402


def test_draft_keeps_top1_on_real_photos():
    pairs = top1_pairs(twelve_megapixel_jpegs())
    assert len(pairs) == 6
    assert [(name, full) for name, full, _ in pairs] == [(name, draft) for name, _, draft in pairs]


def test_draft_really_reduces_large_jpegs():
    data = twelve_megapixel_jpegs()["coffee"]
    preprocess = default_preprocess("efficientnet_lite0")
    full, draft = load_image(data), preprocess.load(data)
    assert full.size == (4032, 3024)
    assert draft.size[0] < full.size[0] and min(draft.size) >= preprocess.resize_size
