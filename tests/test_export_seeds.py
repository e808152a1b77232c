"""Every seed backbone (random weights) exports with the dynamo exporter and passes parity.

Random-init deep ResNets have exploding activations (resnet152 logits reach ~1e8), where float32
rounding alone exceeds an absolute 1e-4; the head is rescaled so logits sit at a trained model's
magnitude (|logit| <= 5) and the validator's absolute tolerance keeps its meaning.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from imgcls.export.convert import embed_card, save_onnx, to_onnx
from imgcls.export.validate import check_graph, check_parity
from imgcls.models.core.card import ModelCard
from imgcls.models.zoo.registry import SEED_ARCHS, build, default_preprocess, entry_for, get_submodule_parent
from tests.factories import class_image

CLASSES = ("cat", "dog", "owl")


def _rescale_head(model: torch.nn.Module, arch: str, inputs: torch.Tensor) -> None:
    parent, leaf = get_submodule_parent(model, entry_for(arch).head)
    head = getattr(parent, leaf)
    with torch.no_grad():
        scale = float(model(inputs).abs().max()) / 5.0
        head.weight /= scale
        head.bias /= scale


@pytest.mark.slow
@pytest.mark.parametrize("arch", SEED_ARCHS)
def test_seed_backbone_exports_with_parity(arch, tmp_path):
    torch.manual_seed(0)
    torch.set_num_threads(2)
    model = build(arch, len(CLASSES)).eval()
    preprocess = default_preprocess(arch)
    card = ModelCard(arch=arch, base_weights="none", class_names=CLASSES, preprocess=preprocess)
    rng = np.random.default_rng(0)
    # Real decoded-and-preprocessed images (generated, then encoded and decoded like a user's files).
    images = []
    for index in range(3):
        path = tmp_path / f"{index}.jpg"
        class_image(index, (preprocess.resize_size + 20, preprocess.resize_size), rng).save(path, quality=90)
        images.append(preprocess.pixels(preprocess.load(path)))
    pixels = np.stack(images)
    _rescale_head(model, arch, torch.from_numpy(preprocess.normalize(pixels)))
    path = tmp_path / "model.onnx"
    save_onnx(embed_card(to_onnx(model, preprocess, opset=18), card), path)
    graph = check_graph(path, card, 18)
    assert graph["input_shape"][1:] == [3, preprocess.crop_size, preprocess.crop_size]
    figures = check_parity(path, model, preprocess, pixels, atol=1e-4, batch=2)
    assert figures["passed"] and figures["batch_2"]["top1_agreement"] == 1.0
