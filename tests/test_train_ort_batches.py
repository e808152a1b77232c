"""Feature caching through ONNX Runtime decodes as the Predictor does (``imgcls.models.core.prefetch``:
threads, uint8 NCHW batches handed to the session as they are) and computes the same features as the
``DataLoader`` path it replaces; a file that cannot be read stops caching with its reason."""
from __future__ import annotations

import pytest
import torch

from imgcls.models.core.dataset import make_split
from imgcls.models.core.preprocess import ImageDecodeError
from imgcls.models.training.data import ImageListDataset
from imgcls.models.training.feature_cache import FeatureStore, feature_extractor, features_in_pieces
from imgcls.models.training.ort_features import OrtBackbone
from imgcls.models.zoo.registry import create, default_preprocess
from tests.factories import make_image_folder


def _setup(tmp_path):
    data = make_image_folder(tmp_path / "data", per_class=7)
    listing = make_split(data, val_fraction=0.2, seed=0)
    preprocess = default_preprocess("tiny")
    dataset = ImageListDataset(listing, listing.train, preprocess)
    dataset.pixels_only = True
    torch.manual_seed(0)
    backbone = OrtBackbone(feature_extractor(create("tiny", 3, "none").eval(), "tiny"), preprocess, threads=2)
    return dataset, backbone


def test_batches_are_contiguous_uint8_in_order_and_give_the_loader_paths_features(tmp_path):
    dataset, backbone = _setup(tmp_path)
    seen = []
    for images, labels in backbone.batches(dataset, 4):
        assert images.dtype == torch.uint8 and images.is_contiguous(), "handed to ONNX Runtime as they are"
        assert images.shape[1:] == dataset[0][0].shape and len(labels) == len(images) <= 4
        seen.append(images)
    assert torch.equal(torch.cat(seen), torch.stack([dataset[i][0] for i in range(len(dataset))]))

    def cached(name, batches):
        return features_in_pieces(backbone, dataset, FeatureStore(tmp_path / name), "train", "0" * 16, batch_size=4,
                                  workers=0, device=torch.device("cpu"), batches=batches)

    threaded, indices, reused = cached("threads", backbone.batches)
    loader, _, _ = cached("loader", None)
    assert reused == 0 and indices == list(range(len(dataset))) and threaded.shape[0] == len(dataset)
    assert torch.equal(threaded, loader)


def test_an_unreadable_file_stops_caching_with_its_reason(tmp_path):
    dataset, backbone = _setup(tmp_path)
    broken = dataset.listing.absolute(dataset.samples[5])
    broken.write_bytes(b"not an image")
    with pytest.raises(ImageDecodeError) as raised:
        list(backbone.batches(dataset, 4))
    assert raised.value.reason == "not_an_image"


def test_the_backbone_is_converted_before_the_first_batch_so_progress_counts_caching_only(tmp_path):
    dataset, backbone = _setup(tmp_path)
    assert backbone.export_seconds == 0.0
    batches = backbone.batches(dataset, 4)
    assert backbone.export_seconds > 0.0, "converted when the batches are asked for, not inside the first one"
    images, _ = next(iter(batches))
    assert images.shape[0] == 4
