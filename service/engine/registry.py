"""The models one worker serves: name -> the loaded version, and how versions replace each other.

``resolve(name)`` is the one place a request's model name is defaulted and checked: absent with one
model served -> that model; absent with several -> ``ModelRequired`` listing them; path characters
-> ``BadParameter``; unknown -> ``UnknownModel``. ``use(name)`` holds the version a request runs on
until it ends, so a request that started on an old version finishes on it.

``load(name, path)`` loads and verifies a bundle, warms it up, and only then swaps it in; the old
version is closed in the background once its requests have finished. A bundle that fails
verification raises ``LoadRefused`` and the old version keeps serving. ``unload(name)`` removes a
model (its running requests still finish).
"""
from __future__ import annotations

import logging
import threading
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, AsyncIterator

from imgcls.models.core.card import CardError
from imgcls.service.engine.classifier import LoadedModel
from imgcls.service.engine.settings import EngineSettings, check_model_name
from imgcls.service.engine.sources import ModelSource
from imgcls.service.engine.types import LoadRefused, ModelInfo, ModelRequired, UnknownModel
from imgcls.service.predictor import BundleError, DeviceError

log = logging.getLogger(__name__)
DRAIN_S = 120.0  # an old version waits at most this long for its running requests before it closes


@dataclass(frozen=True)
class IndexEntry:
    """One line of the repository index: a served model, or one that failed to load."""

    name: str
    version: str
    state: str  # READY | LOADING | UNAVAILABLE
    reason: str = ""
    path: str = ""


class ModelRegistry:
    def __init__(self, settings: EngineSettings, metrics: Any) -> None:
        self.settings = settings
        self.metrics = metrics
        self._models: dict[str, LoadedModel] = {}
        self._sources: dict[str, Path] = {}
        self._failures: dict[str, str] = {}
        self._lock = threading.Lock()
        self._load_lock = threading.Lock()  # one load at a time per worker (memory, CPU)

    # ---------------------------------------------------------------- lookups
    def names(self) -> list[str]:
        with self._lock:
            return sorted(self._models)

    def models(self) -> list[LoadedModel]:
        with self._lock:
            return [self._models[name] for name in sorted(self._models)]

    def source(self, name: str) -> Path | None:
        return self._sources.get(name)

    def resolve(self, name: str | None) -> LoadedModel:
        """The model a request names (see the module doc for the rules)."""
        with self._lock:
            return self._resolve(name)

    def _resolve(self, name: str | None) -> LoadedModel:
        if name is None or name == "":
            if len(self._models) == 1:
                return next(iter(self._models.values()))
            if not self._models:
                raise UnknownModel("no model is loaded")
            raise ModelRequired(f"{len(self._models)} models are served: name one with 'model' "
                                f"({', '.join(sorted(self._models))})")
        check_model_name(name)
        model = self._models.get(name)
        if model is None:
            served = ", ".join(sorted(self._models)) or "none"
            raise UnknownModel(f"unknown model {name!r} (served: {served})")
        return model

    @asynccontextmanager
    async def use(self, name: str | None) -> AsyncIterator[LoadedModel]:
        """The resolved model, held (not closed) until the block ends."""
        with self._lock:
            model = self._resolve(name)
            model.enter()
        try:
            yield model
        finally:
            model.leave()

    @property
    def warmed(self) -> bool:
        return all(model.warmed for model in self.models())

    # ---------------------------------------------------------------- loading
    def open(self, source: ModelSource) -> LoadedModel:
        """Load and verify a bundle (not yet served); ``LoadRefused`` says why it cannot be."""
        check_model_name(source.name)
        try:
            return LoadedModel(source.name, source.path, self.settings, self.metrics)
        except (BundleError, CardError, DeviceError, OSError, ValueError) as exc:
            raise LoadRefused(f"model {source.name!r} from {source.path}: {exc}") from None

    def add(self, model: LoadedModel, source: Path) -> LoadedModel | None:
        """Serve ``model`` (warmed or not); returns the version it replaces (the caller retires it)."""
        with self._lock:
            old = self._models.get(model.name)
            self._models[model.name] = model
            self._sources[model.name] = source
            self._failures.pop(model.name, None)
        self._announce(model, serving=True)
        return old

    def refuse(self, name: str, message: str) -> None:
        """Record why ``name`` is not served (the repository index lists it UNAVAILABLE with this reason)."""
        with self._lock:
            self._failures[name] = message

    def load(self, source: ModelSource) -> ModelInfo:
        """Load, verify and warm ``source``, then serve it as ``source.name`` (replacing any version)."""
        with self._load_lock:
            try:
                model = self.open(source)
            except LoadRefused as exc:
                self.refuse(source.name, exc.message)
                log.warning("refused: %s (the served version, if any, keeps serving)", exc.message)
                raise
            try:
                model.warm_up()
            except Exception as exc:  # a model that cannot run is refused like one that cannot load
                model.close()
                raise LoadRefused(f"model {source.name!r} from {source.path}: warm-up failed: {exc}") from None
            old = self.add(model, source.path)
        if old is not None:
            self.retire(old)
            log.info("%s: serving %s (replaced %s)", model.name, model.info.version, old.info.version)
        else:
            log.info("%s: serving %s", model.name, model.info.version)
        return model.info

    def unload(self, name: str) -> ModelInfo:
        check_model_name(name)
        with self._lock:
            model = self._models.pop(name, None)
            self._sources.pop(name, None)
        if model is None:
            raise UnknownModel(f"model {name!r} is not loaded")
        self.retire(model)
        log.info("%s: unloaded %s", name, model.info.version)
        return model.info

    def retire(self, model: LoadedModel) -> None:
        """Close a replaced or unloaded version once its running requests have finished (background)."""
        self._announce(model, serving=False)
        threading.Thread(target=model.close, args=(DRAIN_S,), name=f"imgcls-retire-{model.name}", daemon=True).start()

    def _announce(self, model: LoadedModel, serving: bool) -> None:
        info = model.info
        self.metrics.set_model(name=info.name, version=info.version, arch=info.arch, provider=info.provider,
                               precision=info.precision, class_names=model.predictor.class_names, serving=serving)

    def index(self) -> list[IndexEntry]:
        with self._lock:
            entries = [IndexEntry(name, m.info.version, "READY" if m.warmed else "LOADING", path=str(self._sources[name]))
                       for name, m in self._models.items()]
            entries += [IndexEntry(name, "", "UNAVAILABLE", reason) for name, reason in self._failures.items()
                        if name not in self._models]
        return sorted(entries, key=lambda e: e.name)

    def close(self) -> None:
        for model in self.models():
            model.close()
