"""``imgcls export ... --bentoml NAME``: a bundle stored as a model in BentoML's model store.

The stored model is a copy of the bundle folder (ONNX files, card.json, export report, edge/), with
labels that ``bentoml models get NAME`` shows: ``arch``, ``classes`` (the count), ``precision``
(the ONNX variants it holds, e.g. ``fp32+int8``) and ``accuracy`` (validation top-1 of the
fine-tuned run, else the published ImageNet top-1, else ``unknown``). The metadata holds the class
names and the lineage hashes. ``imgcls.service.model_sources`` resolves the source ``bentoml:NAME`` to
it, and ``bentoml build`` packs it into a bento (see bentofile.yaml).
"""
from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

from imgcls.models.core.bundle import PRECISIONS, BundleError, load_card, model_file
from imgcls.models.core.card import ModelCard

log = logging.getLogger(__name__)


class StoreError(ValueError):
    """The model cannot be stored (bad name, BentoML missing, not a bundle): one line, exit 2."""


def check_name(name: str) -> str:
    """``name`` as BentoML would store it (lower case), refused when it is not a valid model name."""
    bentoml = _bentoml()
    if ":" in name:
        raise StoreError(f"--bentoml {name}: give a name only; BentoML assigns the version")
    try:
        return str(bentoml.Tag.from_taglike(name).name)
    except (ValueError, bentoml.exceptions.BentoMLException) as exc:
        raise StoreError(f"--bentoml {name}: not a BentoML model name ({exc})") from None


def _bentoml():
    try:
        import bentoml
        import bentoml.exceptions
    except ImportError:
        raise StoreError("--bentoml needs BentoML; install the serve-cpu extra: pip install 'imgcls[serve-cpu]'") \
            from None
    return bentoml


def precisions(bundle: Path, card: ModelCard) -> list[str]:
    held = []
    for precision in PRECISIONS:
        try:
            model_file(bundle, card, precision)
        except BundleError:
            continue
        held.append(precision)
    return held


def accuracy(card: ModelCard) -> str:
    """The label's accuracy: validation top-1 of the run, else the weights' published ImageNet top-1."""
    if isinstance(card.metrics.get("val_accuracy"), (int, float)):
        return f"{float(card.metrics['val_accuracy']):.4f} validation top-1"
    published = (card.metrics.get("published") or {}).get("_metrics") or {}
    for values in published.values():
        if isinstance(values, dict) and isinstance(values.get("acc@1"), (int, float)):
            return f"{float(values['acc@1']) / 100:.4f} ImageNet top-1 (published)"
    return "unknown"


def labels_for(bundle: Path, card: ModelCard) -> dict[str, str]:
    return {"arch": card.arch, "classes": str(card.num_classes), "precision": "+".join(precisions(bundle, card)),
            "accuracy": accuracy(card), "source": "imgcls"}


def metadata_for(card: ModelCard) -> dict[str, Any]:
    from imgcls import __version__

    return {"class_names": list(card.class_names), "base_weights": card.base_weights,
            "lineage": dict(card.lineage), "format_version": card.format_version, "imgcls_version": __version__}


def store_bundle(bundle: Path, name: str) -> str:
    """Copy ``bundle`` into BentoML's model store as ``name``: returns the new tag (``name:version``)."""
    bentoml = _bentoml()
    name = check_name(name)
    try:
        card = load_card(bundle)
    except BundleError as exc:
        raise StoreError(str(exc)) from None
    labels = labels_for(bundle, card)
    if not labels["precision"]:
        raise StoreError(f"bundle {bundle}: no ONNX model file; nothing to store")
    with bentoml.models.create(name, labels=labels, metadata=metadata_for(card)) as model:
        target = Path(model.path)
        for item in sorted(bundle.iterdir()):
            if item.name.startswith(".") or item.name.endswith(".lock"):
                continue  # imgcls's ownership marker and locks describe the folder, not the model
            if item.is_dir():
                shutil.copytree(item, target / item.name)
            else:
                shutil.copy2(item, target / item.name)
    log.info("stored %s in BentoML's model store as %s (%s)", bundle, model.tag, labels)
    return str(model.tag)
