"""What the engine needs to load and run models: device, threads, batching and request limits.

One frozen dataclass, built by the host from its configuration (``ServiceConfig.engine_settings``).
Each request parameter is defaulted and checked here and nowhere else: ``resolve_top_k`` for
``top_k``, ``check_model_name`` for a model name.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from imgcls.service.engine.types import BadParameter

MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


@dataclass(frozen=True)
class EngineSettings:
    device: str = "auto"
    precision: str = "auto"  # imgcls.service.precision: auto | fp32 | int8 | fp16
    workers: int = 1  # worker processes sharing the CPUs (threads per worker derive from it)
    threads: int = 0  # ONNX Runtime intra-op threads; 0 = the CPUs we may use / workers
    decode_threads: int = 2
    work_niceness: int = 10  # added to the nice value of the inference and decode threads (imgcls.service.priority)
    max_batch_size: int = 0  # 0 = auto (batcher.BatchPlan)
    batch_wait_ms: float = 0.0
    max_queue_images: int = 256
    max_body_bytes: int = 64 * 1024 * 1024
    max_images: int = 32
    max_image_bytes: int = 20 * 1024 * 1024
    max_pixels: int = 40_000_000
    default_top_k: int = 5


def resolve_top_k(requested: int | None, default: int, num_classes: int) -> int:
    """``top_k`` as used: the default when absent, refused below 1, clamped to the class count."""
    k = default if requested is None else requested
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise BadParameter(f"top_k must be a positive integer, got {str(k)[:40]!r}", "bad_top_k")
    return min(k, num_classes)


def check_model_name(name: str) -> str:
    """A served model's name: letters, digits, '.', '_' or '-', starting with a letter or digit (a URL segment)."""
    if not isinstance(name, str) or not MODEL_NAME.fullmatch(name) or name in (".", ".."):
        raise BadParameter(f"model name {str(name)[:80]!r}: use letters, digits, '.', '_' or '-' "
                           "(no path characters)", "bad_model_name")
    return name
