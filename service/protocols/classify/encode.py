"""``/classify``'s answers: the engine's ``Classification`` or ``EngineError`` as the HTTP contract.

The one place a ``/classify`` reason code becomes an HTTP status (``schemas.REASON_STATUS``).
"""
from __future__ import annotations

from imgcls.service.engine.types import AllImagesFailed, Classification, EngineError, ImageOutcome, ModelInfo
from imgcls.service.protocols.classify.schemas import (
    MODEL_HEADER, REASON_STATUS, VERSION_HEADER, ClassifyResponse, ErrorDetail, ErrorResponse, ImageResult, ImageTiming,
    ModelRef, RequestTiming,
)


def _ms(seconds: float) -> float:
    return round(seconds * 1000.0, 3)


def status_of(reason: str) -> int:
    return REASON_STATUS.get(reason, 500)


def _detail(reason: str, message: str) -> ErrorDetail:
    return ErrorDetail(status=status_of(reason), reason=reason, message=message)


def _image(outcome: ImageOutcome) -> ImageResult:
    error = _detail(outcome.error.reason, outcome.error.message) if outcome.error is not None else None
    return ImageResult(position=outcome.position, filename=outcome.filename, predictions=outcome.predictions,
                       abstained=outcome.abstained, error=error, timing=ImageTiming(decode_ms=_ms(outcome.decode_s)))


def model_ref(info: ModelInfo) -> ModelRef:
    return ModelRef(name=info.name, version=info.version, arch=info.arch, precision=info.precision,
                    provider=info.provider)


def model_headers(info: ModelInfo) -> dict[str, str]:
    """Every answer of a model names the version that produced it."""
    return {VERSION_HEADER: info.version, MODEL_HEADER: info.name}


def response(result: Classification) -> ClassifyResponse:
    timing = RequestTiming(decode_ms=_ms(result.decode_s), queue_ms=_ms(result.queue_s),
                           inference_ms=_ms(result.inference_s), total_ms=_ms(result.total_s))
    return ClassifyResponse(model=model_ref(result.model), top_k=result.top_k, min_score=result.min_score,
                            results=[_image(image) for image in result.images], timing=timing)


def error(exc: EngineError) -> tuple[int, ErrorResponse]:
    """The status and body of a refusal; every image's error when none could be classified."""
    if isinstance(exc, AllImagesFailed):
        results = [_image(image) for image in exc.outcome.images]
        statuses = {r.error.status for r in results if r.error is not None}
        status = statuses.pop() if len(statuses) == 1 else status_of(exc.reason)
        return status, ErrorResponse(error=ErrorDetail(status=status, reason=exc.reason, message=exc.message),
                                     results=results)
    return status_of(exc.reason), ErrorResponse(error=_detail(exc.reason, exc.message))

