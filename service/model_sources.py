"""Where a bundle comes from: a folder on disk, or a model in BentoML's model store.

    resolve("bundles/digits")            -> Path("bundles/digits")
    resolve("bentoml:digits")            -> the stored folder of digits:latest
    resolve("bentoml:digits:v3abc")      -> the stored folder of that version

``imgcls export --bentoml NAME`` stores a bundle there (``imgcls.export.model_store``); inside a
bento built with that model, the same tag resolves to the bento's own copy, so the bento serves
with no path outside it. Whatever the source, the result is checked to be a bundle (a model card
and an ONNX file it describes); a missing or foreign source raises ``ModelSourceError`` naming it.
Torch-free; BentoML is imported only for a ``bentoml:`` source and only its public model-store API.
"""
from __future__ import annotations

from pathlib import Path

from imgcls.models.core.bundle import PRECISIONS, BundleError, load_card, model_file

PREFIX = "bentoml:"


class ModelSourceError(ValueError):
    """A model source that names no bundle: the message names the source and what is wrong."""


def is_store_source(source: str | Path) -> bool:
    return isinstance(source, str) and source.startswith(PREFIX)


def resolve(source: str | Path) -> Path:
    """The bundle folder ``source`` names (``bentoml:NAME[:VERSION]`` or a path), checked to be a bundle."""
    folder = _stored_folder(str(source)[len(PREFIX):]) if is_store_source(source) else Path(source)
    if not folder.exists():
        raise ModelSourceError(f"model source {source}: no such folder")
    try:
        card = load_card(folder)
    except BundleError as exc:
        raise ModelSourceError(f"model source {source}: {exc}") from None
    if not _has_model_file(folder, card):
        raise ModelSourceError(f"model source {source}: {folder} holds a card but none of its ONNX files")
    return folder


def _has_model_file(folder: Path, card) -> bool:
    for precision in PRECISIONS:
        try:
            model_file(folder, card, precision)
            return True
        except BundleError:
            continue
    return False


def _stored_folder(tag: str) -> Path:
    """The folder of model ``tag`` (``NAME`` means ``NAME:latest``) in BentoML's model store
    (``$BENTOML_HOME/models``; inside a bento, the bento's own models)."""
    if not tag:
        raise ModelSourceError(f"model source {PREFIX}: name a model, e.g. {PREFIX}digits or {PREFIX}digits:VERSION")
    try:
        import bentoml
        from bentoml.exceptions import BentoMLException, NotFound
    except ImportError:
        raise ModelSourceError(f"model source {PREFIX}{tag}: BentoML is not installed (the serve-cpu extra)") from None
    try:
        parsed = bentoml.Tag.from_taglike(tag)
    except (ValueError, BentoMLException) as exc:
        raise ModelSourceError(f"model source {PREFIX}{tag}: not a BentoML model tag ({exc})") from None
    try:
        return Path(bentoml.models.get(parsed).path)
    except NotFound:
        known = sorted({str(m.tag.name) for m in bentoml.models.list()})
        raise ModelSourceError(f"model source {PREFIX}{tag}: no such model in BentoML's model store "
                               f"(models there: {', '.join(known) or 'none'}; store one with "
                               f"`imgcls export RUN --bentoml NAME`)") from None
    except BentoMLException as exc:
        raise ModelSourceError(f"model source {PREFIX}{tag}: {exc}") from None
