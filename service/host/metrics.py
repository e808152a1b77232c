"""Prometheus metrics of the service (prometheus-client, correct across worker processes).

``bentoml serve`` points ``PROMETHEUS_MULTIPROC_DIR`` at a shared directory before the workers
start; metrics created afterwards (in the service's ``__init__``) write there and ``/metrics``
(``metrics_app``) merges every worker's files. BentoML's own HTTP metrics are switched off because
they label each series with the raw request path, so every unknown path (scanners, typos) would add
new series forever; ``HTTPMetricsMiddleware`` records the same figures with the route bounded to
the service's known routes plus ``"unmatched"``.

BentoML's own traffic middlewares (the request timeout's 504, ``max_concurrency``'s 429) sit outside
every middleware a service adds; ``count_outer_answers`` wraps the worker's uvicorn app so that the
answers they give are counted too (each request is counted once: by whichever layer saw it answered).
"""
from __future__ import annotations

import asyncio
import logging
import os
import re
import time
from dataclasses import dataclass
from typing import Any, Iterable

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)
CONFIDENCE_BUCKETS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0)
UNMATCHED = "unmatched"
RECORDED = "imgcls.metrics.recorded"  # scope key: the inner middleware has counted this request
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServiceMetrics:
    requests: Counter
    images: Counter
    decode_seconds: Histogram
    preprocess_seconds: Histogram
    queue_seconds: Histogram
    inference_seconds: Histogram
    batch_images: Histogram
    batch_requests: Histogram
    predictions: Counter
    confidence: Histogram
    model_info: Gauge
    queue_images: Gauge
    http_requests: Counter
    http_seconds: Histogram
    oip_requests: Counter
    grpc_seconds: Histogram
    abstained: Counter

    @classmethod
    def create(cls) -> "ServiceMetrics":
        """Create (in each worker, after BentoML set up multiprocess mode)."""
        return cls(
            requests=Counter("imgcls_requests", "POST /classify requests by model (empty: refused before one was chosen), outcome (ok, "
                             "partial, rejected) and reason code", ["model", "outcome", "reason"]),
            images=Counter("imgcls_images", "images by model, outcome (classified, failed) and reason code",
                           ["model", "outcome", "reason"]),
            decode_seconds=Histogram("imgcls_decode_seconds", "decode of one image (load_image: bytes -> RGB)",
                                     buckets=LATENCY_BUCKETS),
            preprocess_seconds=Histogram("imgcls_preprocess_seconds", "resize + centre crop of one decoded image",
                                         buckets=LATENCY_BUCKETS),
            queue_seconds=Histogram("imgcls_queue_seconds", "wait for the batcher, per request",
                                    buckets=LATENCY_BUCKETS),
            inference_seconds=Histogram("imgcls_inference_seconds", "ONNX Runtime time of one merged batch",
                                        buckets=LATENCY_BUCKETS),
            batch_images=Histogram("imgcls_batch_images", "images per merged inference batch (realised batch size)",
                                   buckets=BATCH_BUCKETS),
            batch_requests=Histogram("imgcls_batch_requests", "requests merged into one inference batch",
                                     buckets=BATCH_BUCKETS),
            predictions=Counter("imgcls_predictions", "top-1 predictions per model and class", ["model", "label"]),
            confidence=Histogram("imgcls_top1_confidence", "softmax probability of the top-1 class",
                                 buckets=CONFIDENCE_BUCKETS),
            model_info=Gauge("imgcls_model_info", "the models served (value 1; 0 once replaced or unloaded)",
                             ["name", "version", "arch", "provider", "precision"], multiprocess_mode="max"),
            queue_images=Gauge("imgcls_queue_images", "images waiting for inference (sampled after each batch), "
                               "summed over live workers", ["model"], multiprocess_mode="livesum"),
            http_requests=Counter("imgcls_http_requests", "HTTP requests by route (known routes or 'unmatched'), "
                                  "method and status", ["route", "method", "status"]),
            http_seconds=Histogram("imgcls_http_request_duration_seconds", "HTTP request duration by route",
                                   ["route"], buckets=LATENCY_BUCKETS),
            oip_requests=Counter("imgcls_oip_requests", "Open Inference Protocol (/v2) requests by route template, "
                                 "model (empty: none named), outcome (ok, rejected) and reason code",
                                 ["route", "model", "outcome", "reason"]),
            grpc_seconds=Histogram("imgcls_grpc_request_duration_seconds", "gRPC call duration by method, on the "
                                   "worker the client called (a call handed to another worker included)",
                                   ["method"], buckets=LATENCY_BUCKETS),
            abstained=Counter("imgcls_abstained", "classified images reported as abstained: top-1 (calibrated) "
                              "score below min_score (also counted in imgcls_images{outcome=classified})", ["model"]),
        )

    def initialise(self, reasons: Iterable[str]) -> None:
        """Rejection reasons known before a model is chosen appear (at 0) from the start."""
        object.__setattr__(self, "_reasons", tuple(reasons))  # frozen: set once, in the worker's start
        for reason in self._reasons:
            self.requests.labels(model="", outcome="rejected", reason=reason)

    def set_model(self, *, name: str, version: str, arch: str, provider: str, precision: str,
                  class_names: Iterable[str], serving: bool = True) -> None:
        """A model version starts (or stops) serving; its series appear at 0 so rates work at once."""
        self.model_info.labels(name=name, version=version, arch=arch, provider=provider,
                               precision=precision).set(1 if serving else 0)
        if not serving:
            return
        for outcome in ("ok", "partial"):
            self.requests.labels(model=name, outcome=outcome, reason="none")
        for reason in getattr(self, "_reasons", ()):
            self.requests.labels(model=name, outcome="rejected", reason=reason)
        self.images.labels(model=name, outcome="classified", reason="none")
        self.queue_images.labels(model=name).set(0)
        for label in class_names:
            self.predictions.labels(model=name, label=label)


class HTTPMetricsMiddleware:
    """ASGI middleware: request count and duration per route, with a bounded route label."""

    def __init__(self, app: Any, routes: Iterable[str], prefixes: Iterable[str] = (),
                 templates: Iterable[str] = ()) -> None:
        self.app = app
        self.routes = frozenset(routes)
        self.prefixes = tuple(prefixes)
        # path templates ("/v2/models/{name}/infer"): the label is the template, never the raw path
        self.templates = tuple((_template_pattern(t), t) for t in templates)

    def route_label(self, path: str) -> str:
        if path in self.routes:
            return path
        template = next((label for pattern, label in self.templates if pattern.match(path)), None)
        if template is not None:
            return template
        return next((p + "*" for p in self.prefixes if path.startswith(p)), UNMATCHED)

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if not _counted(scope):
            await self.app(scope, receive, send)
            return
        started, status, unanswered = time.perf_counter(), [0], [False]
        try:
            await self.app(scope, receive, _noting_status(send, status))
        except asyncio.CancelledError:  # BentoML's timeout before any answer: it answers 504, counted outside
            unanswered[0] = not status[0]
            raise
        finally:
            if not unanswered[0]:
                self.record(scope, status[0] or 500, started)
                scope[RECORDED] = True  # before the app returns to OuterAnswers (which then leaves it)

    def record(self, scope: dict, status: int, started: float) -> None:
        metrics = _CURRENT["metrics"]
        route = self.route_label(scope["path"])
        metrics.http_requests.labels(route=route, method=_method(scope), status=str(status)).inc()
        metrics.http_seconds.labels(route=route).observe(time.perf_counter() - started)


def _counted(scope: dict) -> bool:
    """An HTTP request, in a process with metrics, to a route other than ``/metrics`` itself."""
    return scope["type"] == "http" and _CURRENT.get("metrics") is not None and scope["path"] != "/metrics"


def _noting_status(send: Any, status: list[int]) -> Any:
    """``send`` that also notes the answer's status in ``status[0]``."""

    async def send_and_note(message: dict) -> None:
        if message["type"] == "http.response.start":
            status[0] = message["status"]
        await send(message)

    return send_and_note


class OuterAnswers:
    """ASGI wrapper of the whole app: counts the answers the inner ``HTTPMetricsMiddleware`` did not see."""

    def __init__(self, app: Any, inner: HTTPMetricsMiddleware) -> None:
        self.app = app
        self.inner = inner

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if not _counted(scope):
            await self.app(scope, receive, send)
            return
        started, status = time.perf_counter(), [0]
        try:
            await self.app(scope, receive, _noting_status(send, status))
        finally:
            if status[0] and not scope.get(RECORDED):
                self.inner.record(scope, status[0], started)


def count_outer_answers(server: Any, inner: HTTPMetricsMiddleware) -> bool:
    """Wrap the app of this worker's uvicorn ``server`` (uvicorn hands ``config.loaded_app`` to each new
    connection); call before it accepts connections (the service's ``__init__``). True when installed."""
    config = getattr(server, "config", None)
    if config is None or getattr(config, "loaded_app", None) is None:
        log.debug("no uvicorn app to wrap: answers of BentoML's traffic middlewares are not counted")
        return False
    if not isinstance(config.loaded_app, OuterAnswers):
        config.loaded_app = OuterAnswers(config.loaded_app, inner)
    return True


def _template_pattern(template: str) -> re.Pattern[str]:
    """A regex for a path template such as "/v2/models/{name}": one path segment per placeholder."""
    return re.compile(re.sub(r"\\\{[^/]+?\\\}", "[^/]+", re.escape(template)) + "$")


_KNOWN_METHODS = frozenset({"GET", "POST", "HEAD", "PUT", "DELETE", "OPTIONS", "PATCH"})
_CURRENT: dict[str, ServiceMetrics] = {}  # the worker's metrics, once the service has created them


def _method(scope: dict) -> str:
    method = scope.get("method", "")
    return method if method in _KNOWN_METHODS else "other"


def install(metrics: ServiceMetrics, collectors: Iterable[Any] = ()) -> None:
    """Make ``metrics`` the ones the middleware records into (one service per worker process).

    ``collectors``: extra prometheus-client collectors evaluated at each scrape (server state).
    """
    _CURRENT["metrics"] = metrics
    _COLLECTORS[:] = list(collectors)


_COLLECTORS: list[Any] = []


def render() -> bytes:
    """Exposition text of every worker (multiprocess mode) or of this process, plus the extra collectors."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
    else:
        from prometheus_client import REGISTRY

        registry = REGISTRY
    text = generate_latest(registry)
    if _COLLECTORS:
        extra = CollectorRegistry()
        for collector in _COLLECTORS:
            extra.register(collector)
        text += generate_latest(extra)
    return text


async def metrics_endpoint(_request: Any) -> Any:
    """Starlette endpoint for ``GET /metrics`` (routed by the service)."""
    import anyio.to_thread
    from starlette.responses import Response

    body = await anyio.to_thread.run_sync(render)
    return Response(body, media_type=CONTENT_TYPE_LATEST)
