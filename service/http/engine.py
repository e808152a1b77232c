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
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from imgcls.models.core.calibration import abstains, effective_min_score
from imgcls.models.core.preprocess import ImageDecodeError
from imgcls.service.http.schemas import (
    MULTIPLE_REASONS, REASON_STATUS, ClassifyResponse, ErrorDetail, ErrorResponse, ImageResult,
    ImageTiming, ModelRef, ModelSummary, Prediction, RequestTiming,
)
from imgcls.service.http.batcher import BatchPlan, BatchReport, MicroBatcher, Overloaded
from imgcls.service.http.config import ServiceConfig
from imgcls.service.http.metrics import ServiceMetrics
from imgcls.service.predictor import Predictor
from imgcls.service.runtime import CUDA
from imgcls.service.http.uploads import ParsedRequest, Upload

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
        self.name = Path(config.bundle).resolve().name
        self.plan = BatchPlan.for_device(config.max_batch_size, on_gpu=self.predictor.provider == CUDA)
        self.batcher = MicroBatcher(self.predictor.infer, self.plan, max_queue_images=config.max_queue_images,
                                    batch_wait_ms=config.batch_wait_ms, on_batch=self._record_batch)
        self.decode_pool = ThreadPoolExecutor(config.decode_threads, thread_name_prefix="imgcls-decode")
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
        self.decode_pool.shutdown(wait=False, cancel_futures=True)
        self.predictor.close()

    # ---------------------------------------------------------------- one request
    def _decode(self, upload: Upload) -> Decoded:
        if upload.error is not None:
            return Decoded(upload, None, error_detail(*upload.error), 0.0)
        preprocess, started = self.predictor.card.preprocess, time.perf_counter()
        try:
            image = preprocess.load(upload.data, max_bytes=self.predictor.max_bytes,
                                    max_pixels=self.predictor.max_pixels)
            decoded = time.perf_counter()
            pixels = preprocess.pixels(image)
        except ImageDecodeError as exc:
            return Decoded(upload, None, error_detail(exc.reason, exc.message), time.perf_counter() - started)
        done = time.perf_counter()
        self.metrics.decode_seconds.observe(decoded - started)
        self.metrics.preprocess_seconds.observe(done - decoded)
        return Decoded(upload, pixels, None, done - started)

    async def classify(self, parsed: ParsedRequest) -> tuple[int, ClassifyResponse | ErrorResponse]:
        started = time.perf_counter()
        top_k = min(parsed.top_k or self.config.default_top_k, self.predictor.num_classes)
        min_score = effective_min_score(parsed.min_score, self.predictor.min_score)
        loop = asyncio.get_running_loop()
        decoded = await asyncio.gather(*(loop.run_in_executor(self.decode_pool, self._decode, u)
                                         for u in parsed.uploads))
        decode_done = time.perf_counter()
        good = [d for d in decoded if d.pixels is not None]
        queue_s = inference_s = 0.0
        probabilities: np.ndarray | None = None
        if good:
            try:
                job = await self.batcher.submit(np.stack([d.pixels for d in good]))
            except Overloaded as exc:
                self.metrics.requests.labels(outcome="rejected", reason="overloaded").inc()
                return 503, ErrorResponse(error=error_detail("overloaded", str(exc)))
            probabilities, queue_s, inference_s = job.probabilities, job.queue_s, job.inference_s
            self.metrics.queue_seconds.observe(queue_s)
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
            self.metrics.images.labels(outcome="classified", reason="none").inc()
            self.metrics.predictions.labels(label=predictions[0].label).inc()
            self.metrics.confidence.observe(predictions[0].score)
            abstained = abstains(predictions[0].score, min_score)
            if abstained:
                self.metrics.abstained.inc()
            results.append(ImageResult(predictions=[Prediction(**p.to_dict()) for p in predictions],
                                       abstained=abstained, **base))
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

    def _record_batch(self, report: BatchReport) -> None:
        self.metrics.batch_images.observe(report.images)
        self.metrics.batch_requests.observe(report.requests)
        self.metrics.inference_seconds.observe(report.inference_s)

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
