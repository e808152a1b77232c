"""Bundles for the robustness tests: the tiny test model, and EfficientNet-Lite0 with its real
ImageNet head (1000 classes, offline weights), so labels of real photos mean something.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

PHOTOS = ("chelsea", "coffee", "astronaut", "rocket")  # scikit-image's bundled photos (offline)


def photo(name: str) -> Image.Image:
    import skimage.data

    return Image.fromarray(np.asarray(getattr(skimage.data, name)())).convert("RGB")


def imagenet_class_names() -> tuple[str, ...]:
    """torchvision's ImageNet category names, made unique (ImageNet has two 'crane' and two 'maillot')."""
    from torchvision.models import ResNet18_Weights

    names: list[str] = []
    for index, name in enumerate(ResNet18_Weights.IMAGENET1K_V1.meta["categories"]):
        names.append(name if name not in names else f"{name} ({index})")
    return tuple(names)


def make_imagenet_lite0_bundle(tmp_path: Path) -> Path:
    """``tmp_path/bundles/lite0-imagenet``: the offline Lite0 weights including their ImageNet head.

    The split (needed by export for parity images) lists scikit-image photos written to disk.
    """
    import torch

    from imgcls.export.bundle import export_bundle
    from imgcls.export.config import ExportConfig
    from imgcls.models.core.card import ModelCard
    from imgcls.models.training.checkpoint import save_checkpoint
    from imgcls.models.core.dataset import Sample, SplitListing
    from imgcls.models.zoo.registry import default_preprocess, describe_weights, pretrained

    tmp_path = Path(tmp_path)
    data = tmp_path / "photos"
    data.mkdir(parents=True, exist_ok=True)
    for name in PHOTOS:
        photo(name).save(data / f"{name}.jpg", quality=92)
    classes = imagenet_class_names()
    samples = tuple(Sample(f"{name}.jpg", 0) for name in PHOTOS)
    split = SplitListing(str(data), classes, samples[:2], samples[2:], "folders", 0, 0.5)
    model = pretrained("efficientnet_lite0").eval()  # backbone and the ImageNet classifier
    card = ModelCard(arch="efficientnet_lite0", base_weights=describe_weights("efficientnet_lite0", "imagenet"),
                     class_names=classes, preprocess=default_preprocess("efficientnet_lite0"),
                     train={"factory": "tests.robustness.bundles (ImageNet head, not fine-tuned)"},
                     lineage={"dataset_sha256": split.sha256()})
    run_dir = tmp_path / "runs" / "lite0-imagenet"
    torch.manual_seed(0)
    save_checkpoint(run_dir / "checkpoint", model, card)
    split.save(run_dir)
    out = tmp_path / "bundles" / "lite0-imagenet"
    export_bundle(run_dir, out, ExportConfig(parity_images=4, parity_batch=2, progress=False))
    return out
