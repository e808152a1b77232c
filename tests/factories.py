"""Test factories for on-disk artefacts: image folders, tiny runs, tiny bundles (via the real export).

Owned by the export helper; other tests import these instead of writing their own.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

# Each class: a dominant colour and a stripe orientation, so even a tiny CNN can tell them apart.
_PALETTE = [(220, 40, 40), (40, 200, 60), (50, 70, 220), (230, 200, 40), (180, 60, 200), (40, 200, 210),
            (240, 130, 30), (120, 120, 120), (250, 250, 250), (20, 20, 20)]


def class_image(index: int, size: tuple[int, int], rng: np.random.Generator) -> Image.Image:
    """One generated image of class ``index`` (width, height = ``size``)."""
    width, height = size
    ys, xs = np.mgrid[0:height, 0:width]
    colour = np.asarray(_PALETTE[index % len(_PALETTE)], dtype=np.float64)
    period = 6 + 2 * (index // len(_PALETTE))
    coordinate = (xs, ys, xs + ys)[index % 3]
    stripes = (np.sin(2 * np.pi * (coordinate + rng.uniform(0, period)) / period) > 0)[..., None]
    array = np.where(stripes, colour, colour * 0.45) + rng.normal(0, 18, size=(height, width, 3))
    return Image.fromarray(np.clip(array, 0, 255).astype(np.uint8), "RGB")


def make_image_folder(
    root: str | Path, classes: Sequence[str] = ("cat", "dog", "owl"), per_class: int = 8,
    size: tuple[int, int] = (48, 40), seed: int = 0,
) -> Path:
    """``root/<class>/<class>_<i>.{png,jpg}``: class-distinguishable images, PNG and JPEG mixed."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    for index, name in enumerate(classes):
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            image = class_image(index, size, rng)
            if i % 2:
                image.save(folder / f"{name}_{i:03d}.jpg", format="JPEG", quality=90)
            else:
                image.save(folder / f"{name}_{i:03d}.png", format="PNG")
    return root


def _fit(model, split, preprocess, steps: int, seed: int) -> None:
    """A few full-batch Adam steps on the training split (for tests that need a model that classifies)."""
    import torch

    images = np.stack([preprocess(preprocess.load(split.absolute(s))) for s in split.train])
    labels = torch.tensor([s.label for s in split.train])
    inputs = torch.from_numpy(images)
    torch.manual_seed(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.05)
    model.train()
    for _ in range(steps):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(inputs), labels).backward()
        optimizer.step()
    model.eval()


def make_tiny_run(
    tmp_path: str | Path, classes: Sequence[str] = ("cat", "dog", "owl"), per_class: int = 8,
    seed: int = 0, arch: str = "tiny", train_steps: int = 0, size: tuple[int, int] = (48, 40),
) -> Path:
    """``tmp_path/runs/<arch>``: a checkpoint (random weights unless ``train_steps``) + split.json.

    The images live in ``tmp_path/data``. ``arch`` may be any zoo entry (weights="none").
    """
    import torch

    from imgcls.models.core.card import ModelCard
    from imgcls.models.training.checkpoint import save_checkpoint
    from imgcls.models.core.dataset import make_split
    from imgcls.models.zoo.registry import create, default_preprocess, describe_weights

    tmp_path = Path(tmp_path)
    data = make_image_folder(tmp_path / "data", classes, per_class, size=size, seed=seed)
    split = make_split(data, val_fraction=0.25, seed=seed)
    run_dir = tmp_path / "runs" / arch
    torch.manual_seed(seed)
    model = create(arch, len(classes), weights="none").eval()
    preprocess = default_preprocess(arch)
    if train_steps:
        _fit(model, split, preprocess, train_steps, seed)
    card = ModelCard(
        arch=arch, base_weights=describe_weights(arch, "none"), class_names=tuple(split.class_names),
        preprocess=preprocess, train={"factory": "tests.factories.make_tiny_run", "train_steps": train_steps},
        lineage={"dataset_sha256": split.sha256()},
    )
    save_checkpoint(run_dir / "checkpoint", model, card)
    split.save(run_dir)
    return run_dir


def make_tiny_bundle(tmp_path: str | Path, int8: bool = False, **kw) -> Path:
    """``tmp_path/bundles/<arch>`` exported by the real ``export_bundle`` from ``make_tiny_run``.

    With ``int8`` the tiny model is first fitted for a few steps, so the INT8 gate measures a model
    that actually classifies. Extra keywords go to ``make_tiny_run``.
    """
    from imgcls.export.bundle import export_bundle
    from imgcls.export.config import ExportConfig

    if int8:
        kw.setdefault("train_steps", 30)
    run_dir = make_tiny_run(tmp_path, **kw)
    out = Path(tmp_path) / "bundles" / run_dir.name
    config = ExportConfig(int8=int8, calibration_size=64, progress=False)
    export_bundle(run_dir, out, config)
    return out


STOCK_ARCH = "efficientnet_lite0"
# scikit-image photo -> the ImageNet classes the stock bundle's top-1 may be for it
STOCK_FAMILIES = {
    "chelsea": {"tabby", "tiger cat", "Persian cat", "Siamese cat", "Egyptian cat"},
    "coffee": {"espresso", "cup", "coffee mug"},
    "rocket": {"missile", "projectile", "space shuttle"},
    "stereo_motorcycle": {"moped", "motor scooter"},
}


def make_stock_bundle(folder: str | Path) -> Path:
    """``folder/<STOCK_ARCH>-imagenet``: the stock ImageNet bundle, exported by the real ``imgcls export
    --pretrained`` (real weights; about a minute on two shared cores)."""
    from imgcls.export import cli as export_cli

    out = Path(folder) / f"{STOCK_ARCH}-imagenet"
    argv = ["--pretrained", STOCK_ARCH, "--out", str(out), "--no-progress", "--parity-images", "8"]
    assert export_cli.main(argv) == 0
    return out


def start_keyed_server(bundle: Path, folder: Path, keys_text: str, args: Sequence[str] = (), **kw):
    """A real ``imgcls serve`` of ``bundle`` with ``--api-keys-file folder/keys.txt`` (``keys_text``), its log in
    ``folder/serve.log``; ``args`` are further serve flags, ``kw`` goes to ``start_server``."""
    from imgcls.service.host.launcher import start_server

    keys = Path(folder) / "keys.txt"
    keys.write_text(keys_text)
    return start_server(bundle, Path(folder) / "serve.log", args=["--api-keys-file", str(keys), *args], **kw)
