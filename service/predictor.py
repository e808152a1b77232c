"""The inference core shared by the HTTP service and batch scoring (no torch).

``Predictor.load(bundle_dir)`` reads the card, picks the ONNX file of the requested precision,
checks it against the card (sha256 in the lineage, embedded card, input size, class count) and
opens an ONNX Runtime session on the provider asked for (``imgcls.service.runtime``). Then:
``decode`` (bytes or path -> uint8 [3, H, W] through ``imgcls.models.core.preprocess``), ``infer`` (uint8
[N, 3, H, W] -> softmax probabilities [N, C]), ``top_k`` and ``predict`` (sources -> per image a
sorted top-k list or the ``ImageDecodeError`` explaining why it could not be read), with decoding
in a thread pool overlapping inference.
"""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import replace
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Iterable, Iterator, TypeVar

import numpy as np

from imgcls.models.core.calibration import apply_temperature, uncalibrated
from imgcls.models.core.calibration import softmax as softmax_in
from imgcls.models.core.card import ModelCard
from imgcls.models.core.preprocess import DEFAULT_MAX_BYTES, DEFAULT_MAX_PIXELS, ImageDecodeError
from imgcls.models.core import bundle as bundle_checks
from imgcls.models.core.bundle import BundleError
from imgcls.models.core.prefetch import decoded_batches, stack_decoded
from imgcls.service.prediction import Prediction, top_k_indices
from imgcls.service.precision import AUTO, choose
from imgcls.service.priority import as_computing_thread
from imgcls.service.runtime import CUDA, DeviceError, RuntimeConfig, available_cpus, create_session, wants_cuda

log = logging.getLogger(__name__)

__all__ = ["BundleError", "DeviceError", "Prediction", "Predictor", "softmax", "top_k_indices"]

Source = TypeVar("Source", bytes, str, Path)
DEFAULT_BATCH_SIZE = 32


def softmax(logits: np.ndarray) -> np.ndarray:
    """The served probabilities: ``calibration.softmax`` in float32."""
    return softmax_in(logits, np.float32)


class Predictor:
    """A loaded, verified bundle. Thread-safe: ``infer``/``predict`` may be called concurrently."""

    def __init__(
        self, *, card: ModelCard, session: Any, provider: str, precision: str, model_path: Path,
        model_version: str, input_name: str, output_name: str, runtime: RuntimeConfig,
        max_bytes: int = DEFAULT_MAX_BYTES, max_pixels: int = DEFAULT_MAX_PIXELS,
        decode_threads: int | None = None, decode_niceness: int = 0,
    ) -> None:
        self.card = card
        self.session = session
        self.provider = provider
        self.precision = precision
        self.model_path = model_path
        self.model_version = model_version
        self.runtime = runtime
        self.max_bytes = max_bytes
        self.max_pixels = max_pixels
        self.decode_threads = decode_threads or max(1, round(available_cpus() / runtime.workers))
        self.decode_niceness = decode_niceness  # of the decode threads (imgcls.service.priority)
        self._input_name = input_name
        self._output_name = output_name
        self._pool: ThreadPoolExecutor | None = None
        self._pool_lock = threading.Lock()

    @classmethod
    def load(
        cls, bundle_dir: str | Path, *, precision: str = "fp32", device: str = "auto",
        threads: int | None = None, workers: int = 1, decode_threads: int | None = None,
        max_bytes: int = DEFAULT_MAX_BYTES, max_pixels: int = DEFAULT_MAX_PIXELS,
        runtime: RuntimeConfig | None = None, decode_niceness: int = 0,
    ) -> "Predictor":
        """Open ``bundle_dir`` or raise ``BundleError`` (bundle) / ``DeviceError`` (provider).

        ``precision``: fp32, int8, fp16 or ``auto`` (``imgcls.service.precision.choose``: the fastest
        variant that passed its gate on this device and CPU kind; one log line says which and why);
        ``threads``: ONNX Runtime intra-op threads (default: usable CPUs / ``workers``);
        ``decode_threads``: the pool ``predict`` decodes in (at ``decode_niceness``:
        ``imgcls.service.priority``); ``runtime``, when given, replaces
        ``device``/``threads``/``workers`` (CUDA options, thread spinning).
        """
        bundle_dir = Path(bundle_dir)
        runtime = runtime or RuntimeConfig(device=device, threads=threads, workers=workers)
        card = bundle_checks.load_card(bundle_dir)
        requested = precision
        choice = choose(bundle_dir, card, requested, runtime, on_gpu=wants_cuda(runtime))
        level = logging.WARNING if choice.warn else logging.INFO if requested in (AUTO, "int8") else logging.DEBUG
        log.log(level, "%s: %s", bundle_dir, choice.reason)
        precision = choice.precision
        path = bundle_checks.model_file(bundle_dir, card, precision)
        digest = bundle_checks.verify_sha256(card, path)
        session, provider = bundle_checks.open_session(path, lambda p: create_session(p, runtime))
        bundle_checks.check_embedded_card(session, card, path)
        input_name, output_name = bundle_checks.check_signature(session, card, path)
        log.info("loaded %s (%s, %d classes) on %s", path, precision, card.num_classes, provider)
        if requested == AUTO and precision == "fp16" and provider != CUDA:
            log.warning("%s: ONNX Runtime runs on %s, not the GPU: choosing the precision again for the CPU",
                        bundle_dir, provider)
            return cls.load(bundle_dir, precision=AUTO, runtime=replace(runtime, device="cpu"), max_bytes=max_bytes,
                            max_pixels=max_pixels, decode_threads=decode_threads, decode_niceness=decode_niceness)
        return cls(
            card=card, session=session, provider=provider, precision=precision, model_path=path,
            model_version=bundle_checks.model_version(bundle_dir, digest), input_name=input_name,
            output_name=output_name, runtime=runtime, max_bytes=max_bytes, max_pixels=max_pixels,
            decode_threads=decode_threads, decode_niceness=decode_niceness,
        )

    # ------------------------------------------------------------ properties
    @property
    def class_names(self) -> tuple[str, ...]:
        return self.card.class_names

    @property
    def num_classes(self) -> int:
        return self.card.num_classes

    @property
    def input_size(self) -> int:
        return self.card.preprocess.crop_size

    @property
    def temperature(self) -> float:
        """The card's calibration temperature (1.0 for bundles without one)."""
        return self.card.temperature

    @property
    def min_score(self) -> float | None:
        """The card's default abstention threshold (None: never abstain)."""
        return self.card.min_score

    # ------------------------------------------------------------ steps
    def decode(self, data: bytes | str | Path) -> np.ndarray:
        """uint8 [3, H, W] model input, or ``ImageDecodeError`` (reason in ``.reason``)."""
        return self.decode_timed(data)[0]

    def decode_timed(self, data: bytes | str | Path) -> tuple[np.ndarray, float, float]:
        """``decode`` plus its two timings in seconds: (pixels, decode, resize + crop). The one
        decoding path of HTTP, scoring and export validation."""
        preprocess, started = self.card.preprocess, time.perf_counter()
        image = preprocess.load(data, max_bytes=self.max_bytes, max_pixels=self.max_pixels)
        decoded = time.perf_counter()
        pixels = preprocess.pixels(image)
        return pixels, decoded - started, time.perf_counter() - decoded

    def infer(self, pixels: np.ndarray, pad_to: int | None = None) -> np.ndarray:
        """Calibrated probabilities float32 [N, C] (softmax of logits / temperature) for uint8 pixels [N, 3, H, W].

        ``pad_to``: run the session on exactly that many rows (zero images appended, their rows
        dropped) so a GPU sees one shape per batch size and cuDNN picks its algorithms once.
        """
        count = pixels.shape[0] if isinstance(pixels, np.ndarray) else 0
        if pad_to is not None and 0 < count < pad_to:
            padding = np.zeros((pad_to - count, *pixels.shape[1:]), dtype=pixels.dtype)
            return self.infer(np.concatenate([pixels, padding]))[:count]
        size = self.input_size
        if not isinstance(pixels, np.ndarray) or pixels.dtype != np.uint8:
            raise ValueError(f"infer: expected a uint8 numpy array, got {getattr(pixels, 'dtype', type(pixels))}")
        if pixels.ndim != 4 or pixels.shape[1:] != (3, size, size):
            raise ValueError(f"infer: expected shape [N, 3, {size}, {size}], got {list(pixels.shape)}")
        if pixels.shape[0] == 0:
            return np.zeros((0, self.num_classes), dtype=np.float32)
        (logits,) = self.session.run([self._output_name], {self._input_name: np.ascontiguousarray(pixels)})
        return softmax(apply_temperature(logits, self.temperature))  # the one place calibration is applied

    def top_k(self, probabilities_row: np.ndarray, k: int = 5) -> list[Prediction]:
        names = self.class_names
        raw = uncalibrated(probabilities_row, self.temperature)
        return [
            Prediction(names[int(i)], int(i), float(probabilities_row[i]), float(raw[i]))
            for i in top_k_indices(probabilities_row, k)
        ]

    # ------------------------------------------------------------ many images
    def decode_pool(self) -> ThreadPoolExecutor:
        """The process's decode threads (created on first use, ``decode_threads`` of them)."""
        with self._pool_lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.decode_threads, thread_name_prefix="imgcls-decode",
                                                initializer=as_computing_thread, initargs=(self.decode_niceness,))
            return self._pool

    def predict_batches(
        self, sources: Iterable[Source], top_k: int = 5, batch_size: int = DEFAULT_BATCH_SIZE
    ) -> Iterator[list[tuple[Source, list[Prediction] | ImageDecodeError]]]:
        """Per batch, in input order: (source, top-k predictions or the decode error)."""
        if top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {top_k}")
        pad_to = batch_size if self.provider == CUDA else None
        for batch in decoded_batches(sources, self.decode, batch_size, self.decode_pool()):
            pixels, positions = stack_decoded(batch)
            results: list[Any] = [item for _, item in batch]
            if pixels is not None:
                for row, position in zip(self.infer(pixels, pad_to), positions):
                    results[position] = self.top_k(row, top_k)
            yield [(source, result) for (source, _), result in zip(batch, results)]

    def predict(
        self, sources: Iterable[Source], top_k: int = 5, batch_size: int = DEFAULT_BATCH_SIZE
    ) -> list[list[Prediction] | ImageDecodeError]:
        """Per source, in order: its top-k predictions (best first) or its ``ImageDecodeError``."""
        return [result for batch in self.predict_batches(sources, top_k, batch_size) for _, result in batch]

    def close(self) -> None:
        with self._pool_lock:
            if self._pool is not None:
                self._pool.shutdown(wait=True, cancel_futures=True)
                self._pool = None

    def __enter__(self) -> "Predictor":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def describe(self) -> dict[str, Any]:
        """What is running, for logs, health endpoints and score summaries."""
        return {
            "model_version": self.model_version, "arch": self.card.arch, "precision": self.precision,
            "provider": self.provider, "classes": self.num_classes, "input_size": self.input_size,
            "intra_op_threads": self.runtime.intra_op_threads(), "decode_threads": self.decode_threads,
        }
