"""The models this server serves, kept the same in every worker process.

``ServedModels`` wraps the engine's ``ModelRegistry`` with what only the host knows: the server's
worker processes and its state directory. BentoML runs several workers; a repository-extension call
(``POST /v2/repository/models/{name}/load|unload``) reaches one of them. That worker loads, verifies
and warms the model itself first (a bundle that fails verification is refused there and nothing
changes anywhere), then appends the operation to ``<state_dir>/models.log`` (one JSON line per
operation, numbered) and waits until every live worker has applied it (each worker watches the log
and writes the number it has applied to ``<state_dir>/applied-<worker>``). The call answers only once
every worker serves the new version (or ``SYNC_TIMEOUT_S`` passed: then 503 says so). A worker
started later (a crash's replacement) replays the log after loading the configured models.

With ``--poll-s N`` each worker also rescans the model repositories every N seconds: a model whose
served version folder changed (a higher numbered version, or a bundle rewritten in place) is
loaded, warmed and swapped in; a new subfolder is added; a removed one is unloaded; a model unloaded
by a call stays out until a call loads it again. A bundle that
fails verification is logged once and the served version keeps serving. Every worker scans the same
folders, so they converge within N seconds of each other.
"""
from __future__ import annotations

import asyncio
import ctypes
import fcntl
import json
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any

from imgcls.service.engine.registry import IndexEntry, ModelRegistry
from imgcls.service.engine.sources import ModelSource, in_repository, is_bundle, resolve_sources, scan_repository
from imgcls.service.engine.types import EngineError, LoadRefused, ModelInfo, UnknownModel
from imgcls.service.host import readiness
from imgcls.service.host.config import ServiceConfig

log = logging.getLogger("imgcls.service.models")
WATCH_S = 0.2  # how often a worker looks at the operation log
SYNC_TIMEOUT_S = 120.0


def return_freed_heap() -> None:
    """Hand the heap memory freed so far back to the OS (glibc's ``malloc_trim``; elsewhere nothing).

    Opening an ONNX model frees the file's bytes, the parsed graph and the copies the optimiser
    replaced, but glibc keeps those pages mapped, so every worker carried them for its whole life
    (MobileNet-v2: ~13 MiB after the open, ~8 MiB less peak RSS per worker after 240 requests).
    """
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):  # not glibc (musl, macOS)
        return
    trim(0)


class SyncIncomplete(EngineError):
    """The operation is applied here, but not every worker confirmed it in time."""

    reason = "sync_incomplete"


def signature(path: Path) -> tuple[str, int]:
    """What identifies a bundle version on disk: its folder and its card's modification time."""
    try:
        return str(path.resolve()), (path / "card.json").stat().st_mtime_ns
    except OSError:
        return str(path), 0


class ServedModels:
    def __init__(self, config: ServiceConfig, metrics: Any, worker: int) -> None:
        self.config = config
        self.registry = ModelRegistry(config.engine_settings(), metrics)
        self.worker = worker
        sources, self.repositories = resolve_sources(config.bundles, config.model_name)
        self._initial = sources
        self._signatures: dict[str, tuple[str, int]] = {}
        self._refused: set[tuple[str, int]] = set()
        self._unloaded: set[str] = set()  # unloaded by a call: the poller leaves them out until loaded again
        self._state = Path(config.state_dir) if config.state_dir else None
        self._applied = 0
        self._stop = threading.Event()
        self._sync_lock = threading.Lock()  # the log: appended by a call, applied by the watcher

    # ---------------------------------------------------------------- start
    def open_initial(self) -> None:
        """Load (not warm) the configured models. A refused repository model is left out with a log line
        (listed UNAVAILABLE; a later version is picked up by polling or a load call); any other refused
        bundle stops the worker (``imgcls serve`` verified them before starting)."""
        for source in self._initial:
            try:
                model = self.registry.open(source)
            except LoadRefused as exc:
                if not source.in_repository:
                    raise
                self.registry.refuse(source.name, exc.message)
                self._refuse_once(source.name, signature(source.path), exc.message)
                continue
            self.registry.add(model, source.path)
            self._signatures[source.name] = signature(source.path)
        return_freed_heap()

    def warm_up(self) -> None:
        for model in self.registry.models():
            model.warm_up()
        return_freed_heap()
        self._apply_log()  # operations other workers applied before this one started
        threading.Thread(target=self._watch, name="imgcls-models", daemon=True).start()

    def close(self) -> None:
        self._stop.set()
        self.registry.close()

    # ---------------------------------------------------------------- the repository extension
    def index(self) -> list[IndexEntry]:
        entries = {e.name: e for e in self.registry.index()}
        for repository in self.repositories:
            found, refused = scan_repository(repository)
            for source in found:
                entries.setdefault(source.name, IndexEntry(source.name, "", "UNAVAILABLE", "not loaded", str(source.path)))
            for name, why in refused.items():
                entries.setdefault(name, IndexEntry(name, "", "UNAVAILABLE", why))
        return [entries[name] for name in sorted(entries)]

    def source_of(self, name: str) -> ModelSource:
        """Where ``name`` loads from: its repository folder (highest version), else the bundle it was served from."""
        for repository in self.repositories:
            if (repository / name).is_dir():
                return in_repository(repository, name)
        served = self.registry.source(name)
        if served is not None and is_bundle(served):
            return ModelSource(name, served)
        self.registry.resolve(name)  # a bad name: BadParameter; else UnknownModel below
        where = ", ".join(str(r) for r in self.repositories) or "no model repository is served"
        raise UnknownModel(f"no model {name!r} to load ({where})")

    async def load(self, name: str) -> tuple[ModelInfo, int]:
        """Load (or replace) ``name`` here, then in every worker; returns its info and how many workers serve it."""
        source = self.source_of(name)
        loop = asyncio.get_running_loop()
        info = await loop.run_in_executor(None, self.registry.load, source)
        self._signatures[name] = signature(source.path)
        self._unloaded.discard(name)
        return info, await self._publish({"op": "load", "name": name, "path": str(source.path)})

    async def unload(self, name: str) -> tuple[ModelInfo, int]:
        """Unload ``name`` here, then in every worker; returns its info and how many workers applied it."""
        info = self.registry.unload(name)
        self._unloaded.add(name)
        return info, await self._publish({"op": "unload", "name": name})

    # ---------------------------------------------------------------- every worker the same
    def _log_path(self) -> Path | None:
        return self._state / "models.log" if self._state is not None else None

    async def _publish(self, operation: dict[str, Any]) -> int:
        """Append to the log, wait until every live worker applied it; returns how many workers have."""
        path = self._log_path()
        if path is None or self.config.workers < 2:
            return 1
        number = await asyncio.get_running_loop().run_in_executor(None, self._append, path, operation)
        deadline = time.monotonic() + SYNC_TIMEOUT_S
        while (applied := self._applied_by(number)) is None:
            if time.monotonic() > deadline:
                raise SyncIncomplete(f"{operation['op']} {operation['name']!r} is applied in this worker; not every "
                                     f"worker confirmed it within {SYNC_TIMEOUT_S:.0f} s")
            await asyncio.sleep(WATCH_S)
        return applied

    def _append(self, path: Path, operation: dict[str, Any]) -> int:
        with self._sync_lock, open(path.with_suffix(".lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
            self._apply_log(locked=True)  # other workers' operations first: this one comes after them
            number = len(self._read_log(path)) + 1
            with open(path, "a", encoding="utf-8") as out:
                out.write(json.dumps({"n": number, "by": self.worker, **operation}) + "\n")
                out.flush()
                os.fsync(out.fileno())
            self._applied = number
            self._write_applied()
        return number

    @staticmethod
    def _read_log(path: Path) -> list[dict[str, Any]]:
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except FileNotFoundError:
            return []
        return [json.loads(line) for line in lines if line.strip().endswith("}")]

    def _write_applied(self) -> None:
        if self._state is not None:
            target = self._state / f"applied-{self.worker}"
            temporary = target.with_suffix(".tmp")
            temporary.write_text(f"{self._applied} {os.getpid()}")
            temporary.replace(target)

    def _applied_by(self, number: int) -> int | None:
        """How many live workers applied operation ``number``; None while one has not."""
        assert self._state is not None
        markers = readiness.live_markers(self._state)
        for marker in markers:
            applied = self._state / f"applied-{marker.name.split('-', 1)[1]}"
            try:
                done = int(applied.read_text().split()[0])
            except (OSError, ValueError, IndexError):
                return None
            if done < number:
                return None
        return len(markers)

    def _apply_log(self, locked: bool = False) -> None:
        path = self._log_path()
        if path is None:
            return
        if not locked:
            with self._sync_lock:
                return self._apply_log(locked=True)
        pending = [op for op in self._read_log(path) if op["n"] > self._applied]
        for operation in pending:
            self._apply(operation)
            self._applied = operation["n"]
        if pending or not (self._state / f"applied-{self.worker}").exists():
            self._write_applied()

    def _apply(self, operation: dict[str, Any]) -> None:
        name = operation["name"]
        try:
            if operation["op"] == "unload":
                self._unloaded.add(name)
                self.registry.unload(name)
            else:
                self._unloaded.discard(name)
                self.registry.load(ModelSource(name, Path(operation["path"])))
                self._signatures[name] = signature(Path(operation["path"]))
        except EngineError as exc:
            log.warning("worker %s: %s %s: %s", self.worker, operation["op"], name, exc.message)

    def _watch(self) -> None:
        last_poll = time.monotonic()
        while not self._stop.wait(WATCH_S):
            try:
                self._apply_log()
                if self.config.poll_s and time.monotonic() - last_poll >= self.config.poll_s:
                    last_poll = time.monotonic()
                    self.poll()
            except Exception:  # the watcher must outlive any one bad step
                log.exception("model watcher")

    # ---------------------------------------------------------------- --poll-s
    def poll(self) -> None:
        """One rescan of the repositories (see the module doc)."""
        seen: set[str] = set()
        for repository in self.repositories:
            found, refused = scan_repository(repository)
            for name, why in refused.items():
                self._refuse_once(name, (str(repository / name), 0), why)
            for source in found:
                seen.add(source.name)
                if source.name in self._unloaded:
                    continue
                current = signature(source.path)
                if self._signatures.get(source.name) == current or current in self._refused:
                    continue
                try:
                    self.registry.load(source)
                    self._signatures[source.name] = current
                except LoadRefused as exc:
                    self._refuse_once(source.name, current, exc.message)
        for name in self.registry.names():
            served = self.registry.source(name)
            if name not in seen and served is not None and any(repository in served.parents for repository in self.repositories):
                log.info("%s: its folder left the repository: unloading", name)
                self.registry.unload(name)
                self._signatures.pop(name, None)

    def _refuse_once(self, name: str, key: tuple[str, int], why: str) -> None:
        if key not in self._refused:
            self._refused.add(key)
            log.warning("model repository: %s refused (the served version, if any, keeps serving): %s", name, why)
