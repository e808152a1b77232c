"""Which bundles a server serves: bundle folders, model repositories, BentoML models.

A **bundle** is a folder with ``card.json`` (and the ONNX files it describes). A **model repository**
is a folder with one subfolder per model, named after it, laid out as Triton's model repository:
either the bundle itself (``REPO/NAME/card.json``) or numbered version subfolders
(``REPO/NAME/1/``, ``REPO/NAME/2/``), the highest number being served. A ``bentoml:NAME[:VERSION]``
source is a bundle stored in BentoML's model store (``imgcls.service.model_sources``), served as NAME.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from imgcls.service import model_sources
from imgcls.service.engine.settings import check_model_name
from imgcls.service.engine.types import BadParameter, LoadRefused, UnknownModel

log = logging.getLogger(__name__)
CARD = "card.json"


@dataclass(frozen=True)
class ModelSource:
    name: str
    path: Path  # the bundle folder (a version folder inside a repository)
    in_repository: bool = False  # found by scanning a model repository (refused alone, the others serve)


def is_bundle(folder: Path) -> bool:
    return (folder / CARD).is_file()


def version_folder(model_folder: Path) -> Path:
    """The bundle of a repository entry: the folder itself, or its highest numbered version subfolder."""
    if is_bundle(model_folder):
        return model_folder
    versions = [p for p in model_folder.iterdir() if p.is_dir() and p.name.isdigit() and is_bundle(p)] \
        if model_folder.is_dir() else []
    if not versions:
        raise LoadRefused(f"{model_folder}: not a bundle (no card.json) and no numbered version folder holding one")
    return max(versions, key=lambda p: int(p.name))


def in_repository(repository: Path, name: str) -> ModelSource:
    """The served version of ``name`` in ``repository``: ``UnknownModel`` when absent, ``LoadRefused`` when not a bundle."""
    check_model_name(name)
    folder = repository / name
    if not folder.is_dir():
        raise UnknownModel(f"no model {name!r} in the repository {repository}")
    return ModelSource(name, version_folder(folder), in_repository=True)


def scan_repository(repository: Path) -> tuple[list[ModelSource], dict[str, str]]:
    """Every model of a repository, and for each subfolder that is none, why (logged by the caller)."""
    found, refused = [], {}
    for folder in sorted(p for p in repository.iterdir() if p.is_dir() and not p.name.startswith(".")):
        try:
            found.append(in_repository(repository, folder.name))
        except (LoadRefused, BadParameter) as exc:
            refused[folder.name] = exc.message
    return found, refused


def is_repository(path: Path) -> bool:
    return path.is_dir() and not is_bundle(path)


def resolve_sources(paths: list[str], model_name: str = "") -> tuple[list[ModelSource], list[Path]]:
    """The models to serve and the repositories they came from; raises ``BadParameter`` naming the problem."""
    sources: list[ModelSource] = []
    repositories: list[Path] = []
    for raw in paths:
        if model_sources.is_store_source(raw):
            try:
                folder = model_sources.resolve(raw)
            except model_sources.ModelSourceError as exc:
                raise BadParameter(str(exc), "bad_source") from None
            sources.append(ModelSource(raw[len(model_sources.PREFIX):].split(":")[0], folder))
            continue
        path = Path(raw)
        if is_bundle(path):
            sources.append(ModelSource(path.resolve().name, path))
        elif path.is_dir():
            found, refused = scan_repository(path)
            for name, why in refused.items():
                log.warning("model repository %s: skipping %s: %s", path, name, why)
            if not found:
                raise BadParameter(f"{path}: neither a bundle (no card.json) nor a model repository holding one", "bad_source")
            repositories.append(path)
            sources.extend(found)
        else:
            raise BadParameter(f"{path}: no such folder", "bad_source")
    if model_name:
        if len(sources) != 1:
            raise BadParameter(f"a model name ({model_name!r}) applies to one bundle; {len(sources)} models are served",
                               "bad_model_name")
        sources = [ModelSource(check_model_name(model_name), sources[0].path, sources[0].in_repository)]
    for source in sources:
        try:
            check_model_name(source.name)
        except BadParameter as exc:
            hint = "serve it with --model-name NAME" if len(sources) == 1 else "rename its folder"
            raise BadParameter(f"{source.path}: {exc.message}; {hint}", exc.reason) from None
    names = [s.name for s in sources]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise BadParameter(f"two models would be served as {duplicates[0]!r}: give each bundle its own folder name",
                           "bad_model_name")
    return sources, repositories
