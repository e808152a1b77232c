"""Serving configuration: one frozen dataclass, read from ``IMGCLS_*`` environment variables.

``imgcls serve`` turns its flags into these variables before it starts ``bentoml serve``; the
service (every worker process) reads them back with ``ServiceConfig.from_env()``. Setting the
variables by hand and running ``bentoml serve imgcls.service.host.service:ImageClassifier`` is equivalent.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, fields, replace
from typing import Any, Mapping

from imgcls.models.core.errors import ConfigError
from imgcls.service.engine.settings import EngineSettings, check_model_name
from imgcls.service.engine.types import BadParameter
from imgcls.service.priority import MAX_NICENESS

PREFIX = "IMGCLS_"
DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("auto", "fp32", "int8", "fp16")


@dataclass(frozen=True)
class ServiceConfig:
    """Everything the HTTP service needs besides the bundle's own card."""

    bundle: str = ""  # IMGCLS_BUNDLE: bundle folders, model repositories or bentoml:NAME, joined by ","
    model_name: str = ""  # with one bundle: the name it is served as; default: the bundle directory name
    poll_s: float = 0.0  # > 0: rescan the model repositories every poll_s seconds (new versions, new models)
    device: str = "auto"  # auto | cpu | cuda
    precision: str = "auto"  # auto (imgcls.service.precision) | fp32 | int8 | fp16 (the bundle must contain that file)
    workers: int = 0  # BentoML worker processes; 0 = auto: one per CPU we may use (cgroup quota, affinity), 1 on a GPU
    threads: int = 0  # ONNX Runtime intra-op threads per worker; 0 = the CPUs we may use / workers
    decode_threads: int = 2  # threads per worker decoding and resizing uploads
    work_niceness: int = 10  # nice value added to the inference and decode threads (0-19; 0 = off)
    max_batch_size: int = 0  # images per inference call (concurrent requests are merged); 0 = auto (batcher.BatchPlan)
    batch_wait_ms: float = 0.0  # extra wait for more images before a batch runs (0: natural batching)
    max_queue_images: int = 256  # images waiting for inference per worker before answering 503
    max_body_bytes: int = 64 * 1024 * 1024  # whole request body
    max_images: int = 32  # images per request
    max_image_bytes: int = 20 * 1024 * 1024  # one encoded image
    max_pixels: int = 40_000_000  # one decoded image (width x height): decompression bombs
    default_top_k: int = 5
    timeout: float = 60.0  # seconds: BentoML traffic timeout per request (answers 504)
    max_concurrency: int = 0  # BentoML traffic.max_concurrency (answers 429); 0 = unlimited
    access_log: bool = False  # BentoML's per-request access log lines
    balance_connections: bool = True  # least-connections accept across workers (see service/host/accept.py)
    pin_io_threads: bool = True  # with several workers: each worker's request threads on a CPU of its own
    grace: float = 8.0  # after SIGTERM: seconds to answer accepted requests (fits docker stop's 10 s)
    state_dir: str = ""  # shared by the workers of one server: readiness markers
    api_keys_file: str = ""  # one API key per line: then inference and repository routes need Authorization: Bearer
    grpc_port: int = 0  # > 0: the Open Inference Protocol over gRPC on this port too (every worker; 0 = off)
    grpc_host: str = "127.0.0.1"  # the address the gRPC server listens on (imgcls serve: --host)
    public_routes: str = "health,metrics,ui"  # with API keys: the route groups that need none (health, metrics, ui)
    warmup_delay_s: float = 0.0  # test knob: sleep before the warm-up (to observe /readyz 503)

    def __post_init__(self) -> None:
        if self.device not in DEVICES:
            raise ConfigError(f"{setting_name('device')} must be one of {DEVICES}, got {self.device!r}")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"{setting_name('precision')} must be one of {PRECISIONS}, got {self.precision!r}")
        positive = ("decode_threads", "max_queue_images", "max_body_bytes",
                    "max_images", "max_image_bytes", "max_pixels", "default_top_k", "timeout", "grace")
        for name in positive:
            if getattr(self, name) <= 0:
                raise ConfigError(f"{setting_name(name)} must be > 0, got {getattr(self, name)}")
        if self.max_queue_images < self.max_images:
            raise ConfigError(f"{setting_name('max_queue_images')} ({self.max_queue_images}) must be >= "
                              f"{setting_name('max_images')} ({self.max_images}): a full request must fit the queue")
        if self.model_name:
            try:
                check_model_name(self.model_name)
            except BadParameter as exc:
                raise ConfigError(f"{setting_name('model_name')}: {exc.message}") from None
        from imgcls.service.host.auth import public_groups

        public_groups(self.public_routes)  # ConfigError naming an unknown group
        if not 0 <= self.work_niceness <= MAX_NICENESS:
            raise ConfigError(f"{setting_name('work_niceness')} must be 0-{MAX_NICENESS}, got {self.work_niceness}")
        for name in ("workers", "threads", "max_batch_size", "batch_wait_ms", "max_concurrency", "warmup_delay_s",
                     "poll_s", "grpc_port"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{setting_name(name)} must be >= 0, got {getattr(self, name)}")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> "ServiceConfig":
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for spec in fields(cls):
            raw = environ.get(env_name(spec.name))
            if raw is None or raw == "":
                continue
            values[spec.name] = _parse(spec.name, spec.type, raw)
        return cls(**values)

    def with_workers_resolved(self, on_gpu: bool | None = None) -> "ServiceConfig":
        """``workers`` = 0 made concrete: 1 on a GPU (one process owns the device), else one per
        usable CPU. ``on_gpu`` is the provider actually obtained when known, else read from ``device``."""
        if self.workers:
            return self
        on_gpu = self.device == "cuda" if on_gpu is None else on_gpu
        from imgcls.service.runtime import available_cpus

        return replace(self, workers=1 if on_gpu else max(1, int(available_cpus())))

    @property
    def bundles(self) -> list[str]:
        """The model sources of ``bundle`` (bundle folders, repositories, ``bentoml:`` models)."""
        return [part.strip() for part in self.bundle.split(",") if part.strip()]

    def engine_settings(self) -> EngineSettings:
        """What the engine needs of this configuration (loading, batching, request limits)."""
        names = [f.name for f in fields(EngineSettings)]
        return EngineSettings(**{name: getattr(self, name) for name in names})

    def to_env(self) -> dict[str, str]:
        """The variables that make ``from_env`` return this config (what ``imgcls serve`` sets)."""
        return {env_name(spec.name): str(getattr(self, spec.name)) for spec in fields(self)}


def env_name(field_name: str) -> str:
    """``IMGCLS_<FIELD>``: for every flag of ``imgcls serve`` this is ``IMGCLS_<FLAG>`` exactly."""
    return PREFIX + field_name.upper()


def setting_name(field_name: str) -> str:
    """How messages name a setting: its ``imgcls serve`` flag and its environment variable."""
    if field_name in ("state_dir", "warmup_delay_s", "bundle", "grpc_host"):
        return env_name(field_name)
    return f"--{field_name.replace('_', '-')} / {env_name(field_name)}"


def _parse(name: str, type_name: Any, raw: str) -> Any:
    kind = type_name if isinstance(type_name, str) else type_name.__name__
    if kind == "bool":
        if raw.strip().lower() in ("1", "true", "yes", "on"):
            return True
        if raw.strip().lower() in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{env_name(name)}: expected true/false, got {raw!r}")
    try:
        if kind == "int":
            return int(raw)
        if kind == "float":
            return float(raw)
    except ValueError:
        raise ConfigError(f"{env_name(name)}: expected a {kind}, got {raw!r}") from None
    return raw
