"""One loaded model version in one worker: decode, batch, infer, answer, without any protocol.

``LoadedModel`` owns a ``Predictor``, its decode thread pool and a ``MicroBatcher``;
``classify(request)`` returns a ``Classification`` (domain results) or raises a typed
``EngineError``. It counts the requests running on it, so a replaced version is closed only once
they have finished (``ModelRegistry``). ``metrics`` is the host's recorder (prometheus-client
objects in ``imgcls.service.host.metrics``); the engine only calls ``labels(...).inc()/observe()``.
"""
from __future__ import annotations

import asyncio
import io
import logging
import threading
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import Image

from imgcls.models.core.calibration import abstains, effective_min_score
from imgcls.models.core.preprocess import ImageDecodeError
from imgcls.service.engine.batcher import BatchPlan, BatchReport, JobResult, MicroBatcher
from imgcls.service.engine.settings import EngineSettings, resolve_top_k
from imgcls.service.engine.types import (
    AllImagesFailed, Classification, ClassifyRequest, Decoded, ImageError, ImageOutcome, ModelInfo, NotReady, Upload,
)
from imgcls.service.predictor import Predictor
from imgcls.service.runtime import CUDA

log = logging.getLogger(__name__)
MULTIPLE_REASONS = "all_images_failed"  # every image failed, for different reasons


class LoadedModel:
    def __init__(self, name: str, bundle: str | Path, settings: EngineSettings, metrics: Any) -> None:
        self.name = name
        self.bundle = Path(bundle)
        self.settings = settings
        self.metrics = metrics
        self.predictor = Predictor.load(
            bundle, precision=settings.precision, device=settings.device, threads=settings.threads or None,
            workers=settings.workers, decode_threads=settings.decode_threads,
            max_bytes=settings.max_image_bytes, max_pixels=settings.max_pixels,
            decode_niceness=settings.work_niceness,
        )
        self.plan = BatchPlan.for_device(settings.max_batch_size, on_gpu=self.predictor.provider == CUDA,
                                         threads=self.predictor.runtime.intra_op_threads())
        self.batcher = MicroBatcher(self.predictor.infer, self.plan, max_queue_images=settings.max_queue_images,
                                    batch_wait_ms=settings.batch_wait_ms, on_batch=self._record_batch,
                                    niceness=settings.work_niceness)
        self.info = ModelInfo(name=name, version=self.predictor.model_version, arch=self.predictor.card.arch,
                              precision=self.predictor.precision, provider=self.predictor.provider)
        self._warm = threading.Event()
        self._running = 0
        self._idle = threading.Condition()

    # ---------------------------------------------------------------- start and stop
    def warm_up(self) -> float:
        """Decode a synthetic JPEG and run every batch size the server will run; returns seconds."""
        started = time.perf_counter()
        size = self.predictor.card.preprocess.resize_size
        buffer = io.BytesIO()
        Image.new("RGB", (size + 17, size), (120, 90, 60)).save(buffer, format="JPEG")
        pixels = self.predictor.decode(buffer.getvalue())
        self.batcher.warm_up(pixels)
        elapsed = time.perf_counter() - started
        log.info("%s (%s): warmed batch sizes %s in %.2f s", self.name, self.info.version, list(self.plan.sizes), elapsed)
        self._warm.set()
        return elapsed

    @property
    def warmed(self) -> bool:
        return self._warm.is_set()

    def close(self, wait_s: float = 0.0) -> None:
        """Close once the requests running on this version have finished (at most ``wait_s``)."""
        with self._idle:
            self._idle.wait_for(lambda: self._running == 0, timeout=wait_s)
        self.batcher.close()
        self.predictor.close()

    def enter(self) -> None:
        """A request starts on this version (``leave`` when it ends): ``close`` waits for it."""
        with self._idle:
            self._running += 1

    def leave(self) -> None:
        with self._idle:
            self._running -= 1
            if self._running == 0:
                self._idle.notify_all()

    # ---------------------------------------------------------------- one request
    def _decode(self, upload: Upload) -> Decoded:
        if upload.error is not None:
            return Decoded(upload, None, ImageError(*upload.error), 0.0)
        started = time.perf_counter()
        try:
            pixels, decode_s, preprocess_s = self.predictor.decode_timed(upload.data)
        except ImageDecodeError as exc:
            return Decoded(upload, None, ImageError(exc.reason, exc.message), time.perf_counter() - started)
        self.metrics.decode_seconds.observe(decode_s)
        self.metrics.preprocess_seconds.observe(preprocess_s)
        return Decoded(upload, pixels, None, decode_s + preprocess_s)

    async def classify(self, request: ClassifyRequest) -> Classification:
        """Top-k per image; raises ``AllImagesFailed`` when no image could be classified."""
        if not self.warmed:
            raise NotReady(f"model {self.name!r} is still warming up")
        started = time.perf_counter()
        top_k = resolve_top_k(request.top_k, self.settings.default_top_k, self.predictor.num_classes)
        min_score = effective_min_score(request.min_score, self.predictor.min_score)
        decoded = await self.decode_all(request.uploads)
        decode_done = time.perf_counter()
        good = [d for d in decoded if d.pixels is not None]
        queue_s = inference_s = 0.0
        probabilities: np.ndarray | None = None
        if good:
            job = await self.infer(np.stack([d.pixels for d in good]))
            probabilities, queue_s, inference_s = job.probabilities, job.queue_s, job.inference_s
            self.record_classified(probabilities)
        outcome = Classification(
            model=self.info, top_k=top_k, min_score=min_score, images=self._outcomes(decoded, probabilities, top_k, min_score),
            decode_s=decode_done - started, queue_s=queue_s, inference_s=inference_s,
            total_s=time.perf_counter() - started)
        if not good:
            raise self._all_failed(outcome)
        return outcome

    def _outcomes(self, decoded: list[Decoded], probabilities: np.ndarray | None, top_k: int,
                  min_score: float | None) -> list[ImageOutcome]:
        outcomes, row = [], 0
        for item in decoded:
            base = dict(position=item.upload.position, filename=item.upload.filename, decode_s=item.decode_s)
            if item.error is not None:
                self.metrics.images.labels(model=self.name, outcome="failed", reason=item.error.reason).inc()
                outcomes.append(ImageOutcome(error=item.error, **base))
                continue
            assert probabilities is not None
            predictions = self.predictor.top_k(probabilities[row], top_k)
            row += 1
            abstained = abstains(predictions[0].score, min_score)
            if abstained:
                self.metrics.abstained.labels(model=self.name).inc()
            outcomes.append(ImageOutcome(predictions=predictions, abstained=abstained, **base))
        return outcomes

    @staticmethod
    def _all_failed(outcome: Classification) -> AllImagesFailed:
        errors = [image.error for image in outcome.images if image.error is not None]
        reasons = {e.reason for e in errors}
        reason = errors[0].reason if len(reasons) == 1 else MULTIPLE_REASONS
        message = errors[0].message if len(errors) == 1 else f"none of the {len(errors)} images could be classified"
        return AllImagesFailed(message, reason, outcome)

    # ---------------------------------------------------------------- steps shared by /classify and /v2
    async def decode_all(self, uploads: Sequence[Upload]) -> list[Decoded]:
        """Decode every upload in the predictor's decode pool (limits, reason codes, metrics)."""
        loop, pool = asyncio.get_running_loop(), self.predictor.decode_pool()
        return list(await asyncio.gather(*(loop.run_in_executor(pool, self._decode, u) for u in uploads)))

    async def infer(self, pixels: np.ndarray) -> JobResult:
        """Probabilities for uint8 [N, 3, H, W] through the shared batcher; ``Overloaded`` when its queue is full."""
        job = await self.batcher.submit(pixels)
        self.metrics.queue_seconds.observe(job.queue_s)
        return job

    def record_classified(self, probabilities: np.ndarray) -> None:
        """The per-image metrics of classified images (outcome, top-1 label, top-1 confidence)."""
        names = self.predictor.class_names
        for row in probabilities:
            best = int(np.argmax(row))
            self.metrics.images.labels(model=self.name, outcome="classified", reason="none").inc()
            self.metrics.predictions.labels(model=self.name, label=names[best]).inc()
            self.metrics.confidence.observe(float(row[best]))

    def _record_batch(self, report: BatchReport) -> None:
        self.metrics.batch_images.observe(report.images)
        self.metrics.batch_requests.observe(report.requests)
        self.metrics.inference_seconds.observe(report.inference_s)
        self.metrics.queue_images.labels(model=self.name).set(self.batcher.queued_images)

    # ---------------------------------------------------------------- what is served
    def summary(self) -> dict[str, Any]:
        """The card summary of this version (``GET /model``), plain data."""
        card, predictor, settings = self.predictor.card, self.predictor, self.settings
        export = {k: v for k, v in card.export.items() if k not in ("files", "input", "output")}
        return dict(
            name=self.name, version=predictor.model_version, arch=card.arch, base_weights=card.base_weights,
            class_names=list(card.class_names), num_classes=card.num_classes, preprocess=card.preprocess.to_dict(),
            input=dict(card.export.get("input", {})), precision=predictor.precision, provider=predictor.provider,
            device=settings.device, files=dict(card.export.get("files", {})), export=export,
            metrics=dict(card.metrics), lineage=dict(card.lineage), calibration=dict(card.calibration),
            batching={"sizes": list(self.plan.sizes), "pad": self.plan.pad, "wait_ms": settings.batch_wait_ms,
                      "max_queue_images": settings.max_queue_images, "workers": settings.workers},
            limits={"max_body_bytes": settings.max_body_bytes, "max_images": settings.max_images,
                    "max_image_bytes": settings.max_image_bytes, "max_pixels": settings.max_pixels,
                    "default_top_k": settings.default_top_k},
        )
