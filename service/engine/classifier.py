"""What one worker does for ``POST /classify``, without BentoML: decode, batch, infer, answer.

``ClassifierEngine`` owns the ``Predictor``, a decode thread pool and the ``MicroBatcher``;
``classify(parsed)`` returns ``(status, response model)``: 200 with per-image results when at least
one image was classified, otherwise the status of the images' failure with every image's error.
"""
from __future__ import annotations

import asyncio
import io
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from imgcls.models.core.calibration import abstains, effective_min_score
from imgcls.models.core.preprocess import ImageDecodeError
from imgcls.service.protocols.classify.schemas import (
    MULTIPLE_REASONS, REASON_STATUS, ClassifyResponse, ErrorDetail, ErrorResponse, ImageResult,
    ImageTiming, ModelRef, ModelSummary, RequestTiming,
)
from imgcls.service.engine.batcher import BatchPlan, BatchReport, JobResult, MicroBatcher, Overloaded
from imgcls.service.host.config import ServiceConfig
from imgcls.service.host.metrics import ServiceMetrics
from imgcls.service.predictor import Predictor
from imgcls.service.runtime import CUDA
from imgcls.service.protocols.classify.uploads import ParsedRequest, Upload

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Decoded:
    upload: Upload
    pixels: np.ndarray | None
    error: ErrorDetail | None
    decode_s: float


def error_detail(reason: str, message: str) -> ErrorDetail:
    return ErrorDetail(status=REASON_STATUS[reason], reason=reason, message=message)


class ClassifierEngine:
    def __init__(self, config: ServiceConfig, metrics: ServiceMetrics) -> None:
        self.config = config
        self.metrics = metrics
        self.predictor = Predictor.load(
            config.bundle, precision=config.precision, device=config.device, threads=config.threads or None,
            workers=config.workers, decode_threads=config.decode_threads,
            max_bytes=config.max_image_bytes, max_pixels=config.max_pixels,
        )
        self.name = config.model_name or Path(config.bundle).resolve().name
        self.plan = BatchPlan.for_device(config.max_batch_size, on_gpu=self.predictor.provider == CUDA,
                                         threads=self.predictor.runtime.intra_op_threads())
        self.batcher = MicroBatcher(self.predictor.infer, self.plan, max_queue_images=config.max_queue_images,
                                    batch_wait_ms=config.batch_wait_ms, on_batch=self._record_batch)
        self.model_ref = ModelRef(name=self.name, version=self.predictor.model_version, arch=self.predictor.card.arch,
                                  precision=self.predictor.precision, provider=self.predictor.provider)
        metrics.set_model(name=self.name, version=self.predictor.model_version, arch=self.predictor.card.arch,
                          provider=self.predictor.provider, precision=self.predictor.precision,
                          class_names=self.predictor.class_names)

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
        log.info("warmed batch sizes %s in %.2f s", list(self.plan.sizes), elapsed)
        return elapsed

    def close(self) -> None:
        self.batcher.close()
        self.predictor.close()

    # ---------------------------------------------------------------- one request
    def _decode(self, upload: Upload) -> Decoded:
        if upload.error is not None:
            return Decoded(upload, None, error_detail(*upload.error), 0.0)
        started = time.perf_counter()
        try:
            pixels, decode_s, preprocess_s = self.predictor.decode_timed(upload.data)
        except ImageDecodeError as exc:
            return Decoded(upload, None, error_detail(exc.reason, exc.message), time.perf_counter() - started)
        self.metrics.decode_seconds.observe(decode_s)
        self.metrics.preprocess_seconds.observe(preprocess_s)
        return Decoded(upload, pixels, None, decode_s + preprocess_s)

    async def classify(self, parsed: ParsedRequest) -> tuple[int, ClassifyResponse | ErrorResponse]:
        started = time.perf_counter()
        top_k = min(parsed.top_k or self.config.default_top_k, self.predictor.num_classes)
        min_score = effective_min_score(parsed.min_score, self.predictor.min_score)
        decoded = await self.decode_all(parsed.uploads)
        decode_done = time.perf_counter()
        good = [d for d in decoded if d.pixels is not None]
        queue_s = inference_s = 0.0
        probabilities: np.ndarray | None = None
        if good:
            try:
                job = await self.infer(np.stack([d.pixels for d in good]))
            except Overloaded as exc:
                self.metrics.requests.labels(outcome="rejected", reason="overloaded").inc()
                return 503, ErrorResponse(error=error_detail("overloaded", str(exc)))
            probabilities, queue_s, inference_s = job.probabilities, job.queue_s, job.inference_s
            self.record_classified(probabilities)
        results = self._results(decoded, probabilities, top_k, min_score)
        timing = RequestTiming(decode_ms=_ms(decode_done - started), queue_ms=_ms(queue_s),
                               inference_ms=_ms(inference_s), total_ms=_ms(time.perf_counter() - started))
        if good:
            outcome = "ok" if len(good) == len(decoded) else "partial"
            self.metrics.requests.labels(outcome=outcome, reason="none").inc()
            return 200, ClassifyResponse(model=self.model_ref, top_k=top_k, min_score=min_score, results=results,
                                         timing=timing)
        return self._all_failed(results)

    def _results(self, decoded: list[Decoded], probabilities: np.ndarray | None, top_k: int,
                 min_score: float | None = None) -> list[ImageResult]:
        results, row = [], 0
        for item in decoded:
            timing = ImageTiming(decode_ms=_ms(item.decode_s))
            base = dict(position=item.upload.position, filename=item.upload.filename, timing=timing)
            if item.error is not None:
                self.metrics.images.labels(outcome="failed", reason=item.error.reason).inc()
                results.append(ImageResult(error=item.error, **base))
                continue
            assert probabilities is not None
            predictions = self.predictor.top_k(probabilities[row], top_k)
            row += 1
            abstained = abstains(predictions[0].score, min_score)
            if abstained:
                self.metrics.abstained.inc()
            results.append(ImageResult(predictions=predictions, abstained=abstained, **base))
        return results

    def _all_failed(self, results: list[ImageResult]) -> tuple[int, ErrorResponse]:
        errors = [r.error for r in results if r.error is not None]
        reasons = {e.reason for e in errors}
        statuses = {e.status for e in errors}
        reason = errors[0].reason if len(reasons) == 1 else MULTIPLE_REASONS
        status = errors[0].status if len(statuses) == 1 else REASON_STATUS[MULTIPLE_REASONS]
        message = errors[0].message if len(errors) == 1 else f"none of the {len(errors)} images could be classified"
        self.metrics.requests.labels(outcome="rejected", reason=reason).inc()
        detail = ErrorDetail(status=status, reason=reason, message=message)
        return status, ErrorResponse(error=detail, results=results)

    # ---------------------------------------------------------------- steps shared by /classify and /v2 (oip_routes)
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
            self.metrics.images.labels(outcome="classified", reason="none").inc()
            self.metrics.predictions.labels(label=names[best]).inc()
            self.metrics.confidence.observe(float(row[best]))

    def _record_batch(self, report: BatchReport) -> None:
        self.metrics.batch_images.observe(report.images)
        self.metrics.batch_requests.observe(report.requests)
        self.metrics.inference_seconds.observe(report.inference_s)
        self.metrics.queue_images.set(self.batcher.queued_images)

    # ---------------------------------------------------------------- GET /model
    def summary(self) -> ModelSummary:
        card, predictor, config = self.predictor.card, self.predictor, self.config
        export = {k: v for k, v in card.export.items() if k not in ("files", "input", "output")}
        return ModelSummary(
            name=self.name, version=predictor.model_version, arch=card.arch, base_weights=card.base_weights,
            class_names=list(card.class_names), num_classes=card.num_classes, preprocess=card.preprocess.to_dict(),
            input=dict(card.export.get("input", {})), precision=predictor.precision, provider=predictor.provider,
            device=config.device, files=dict(card.export.get("files", {})), export=export,
            metrics=dict(card.metrics), lineage=dict(card.lineage), calibration=dict(card.calibration),
            batching={"sizes": list(self.plan.sizes), "pad": self.plan.pad, "wait_ms": config.batch_wait_ms,
                      "max_queue_images": config.max_queue_images, "workers": config.workers},
            limits={"max_body_bytes": config.max_body_bytes, "max_images": config.max_images,
                    "max_image_bytes": config.max_image_bytes, "max_pixels": config.max_pixels,
                    "default_top_k": config.default_top_k},
        )


def _ms(seconds: float) -> float:
    return round(seconds * 1000.0, 3)
