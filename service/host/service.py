"""The BentoML 1.4 service: ``POST /classify``, ``GET /model``, ``GET /models``, health and ``/metrics``,
plus the Open Inference Protocol (KServe v2) routes ``/v2/...`` (``imgcls.service.protocols.oip.routes``)
and its model repository extension.

Run it with ``imgcls serve BUNDLE...`` (or ``IMGCLS_BUNDLE=... bentoml serve imgcls.service.host.service:ImageClassifier``).
Configuration comes from ``IMGCLS_*`` variables (``imgcls.service.host.config``). Each worker loads
every model in ``__init__`` (``imgcls.service.host.models``) and warms every batch size in a
background thread; ``/livez`` answers as soon as the worker serves, ``/readyz`` only once every worker
of the server has warmed up and is alive (a worker killed by a crash no longer counts; its restarted
successor warms up before it accepts). On SIGTERM the workers stop listening at once and answer what
they had accepted (``drain``).

The request body of ``/classify`` is parsed by ``imgcls.service.protocols.classify.uploads`` (not by
BentoML's input validation), so that every failure is our JSON error with a reason code instead of
BentoML's generic 400/500 answers; the declared input model still documents the multipart form, and
``bentoml.SyncHTTPClient(url).classify(images=[path, ...], top_k=3)`` works.
"""
from __future__ import annotations

import asyncio
import logging
import os
import threading
from pathlib import Path
from typing import Any

import bentoml
from pydantic import Field
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from imgcls.service.engine.types import ClassifyRequest, EngineError
from imgcls.service.host import accept, drain, openapi, pages, private, readiness, tracing
from imgcls.service.host.auth import APIKeyMiddleware, public_groups, read_keys
from imgcls.service.host.config import ServiceConfig
from imgcls.service.host.metrics import (HTTPMetricsMiddleware, ServiceMetrics, count_outer_answers, install,
                                        metrics_endpoint)
from imgcls.service.host.private import worker_index
from imgcls.service.host.server_metrics import ServerCollector
from imgcls.service.host.timeout import Timeout
from imgcls.service.priority import io_cpu, pin_this_thread
from imgcls.service.protocols.classify import encode
from imgcls.service.protocols.classify.schemas import REASON_STATUS, ClassifyResponse, error_body
from imgcls.service.protocols.classify.uploads import RequestRejected, parse_request
from imgcls.service.protocols.oip.routes import FIXED_ROUTES as OIP_ROUTES, MODEL_ROUTES as OIP_MODEL_ROUTES, build_routes

log = logging.getLogger("imgcls.service")
CONFIG = ServiceConfig.from_env().with_workers_resolved()  # imgcls serve has resolved it already
KNOWN_ROUTES = ("/classify", "/model", "/models", "/livez", "/healthz", "/readyz", "/metrics", "/docs.json",
                "/schema.json", "/", "/ui", *pages.ASSETS, *OIP_ROUTES)
METRICS_ROUTES: dict[str, Any] = dict(routes=KNOWN_ROUTES, prefixes=("/static_content/",), templates=OIP_MODEL_ROUTES)
_CURRENT: dict[str, "ImageClassifier"] = {}  # this worker's service instance, for the mounted apps
_BACKGROUND: set[asyncio.Task] = set()  # tasks started by the service (kept referenced until done)


class ClassifyInput(bentoml.IODescriptor):
    """multipart/form-data: one or several image files (field ``images``) and an optional ``top_k``."""

    images: list[Path] = Field(description="image files (JPEG, PNG, WebP, GIF, BMP, TIFF...), one part each")
    top_k: int = Field(default=CONFIG.default_top_k, description="predictions per image (clamped to the class count)")
    model: str = Field(default="", description="which served model answers (needed when several are served)")

    @classmethod
    async def from_http_request(cls, request: Request, serde: Any) -> "ClassifyInput":
        """Our parser instead of BentoML's; ``images`` then holds the ``ClassifyRequest`` or the rejection."""
        try:
            parsed: ClassifyRequest | RequestRejected = await parse_request(
                request, max_body_bytes=CONFIG.max_body_bytes, max_images=CONFIG.max_images)
        except RequestRejected as exc:
            parsed = exc
        return cls.model_construct(images=parsed, top_k=0, model="")


def json_response(status: int, body: Any, headers: dict[str, str] | None = None) -> Response:
    if hasattr(body, "model_dump_json"):
        return Response(body.model_dump_json(exclude_none=True), status_code=status,
                        media_type="application/json", headers=headers)
    return JSONResponse(body, status_code=status, headers=headers)


async def model_endpoint(request: Request) -> Response:
    """``GET /model[?model=NAME]``: the card summary of one served model."""
    service = _CURRENT.get("service")
    if service is None:
        return json_response(503, error_body("not_ready", "the model is not loaded yet"))
    try:
        model = service.models.registry.resolve(request.query_params.get("model"))
    except EngineError as exc:
        return json_response(*encode.error(exc))
    return json_response(200, model.summary(), encode.model_headers(model.info))


async def models_endpoint(_: Request) -> Response:
    """``GET /models``: every served model's card summary."""
    service = _CURRENT.get("service")
    if service is None:
        return json_response(503, error_body("not_ready", "the models are not loaded yet"))
    return json_response(200, {"models": [m.summary() for m in service.models.registry.models()]})


async def openapi_endpoint(_: Request) -> Response:
    """``/docs.json``: BentoML's document completed by ``imgcls.service.host.openapi``."""
    service = _CURRENT.get("service")
    models = [m.summary() for m in service.models.registry.models()] if service is not None else None
    return JSONResponse(openapi.augment(ImageClassifier.openapi_spec.asdict(), models))


# Mounted at "/" as a passive mount: only these paths are taken, and they take precedence over
# BentoML's own /docs.json (registered after mounts); /metrics is free as BentoML's metrics are off.
EXTRA_ROUTES = Starlette(routes=[
    Route("/model", model_endpoint, methods=["GET"]),
    Route("/models", models_endpoint, methods=["GET"]),
    Route("/metrics", metrics_endpoint, methods=["GET"]),
    Route("/docs.json", openapi_endpoint, methods=["GET"]),
    *build_routes(lambda: _CURRENT.get("service")),  # the Open Inference Protocol (/v2), imgcls.service.protocols.oip.routes
    *pages.routes(),
])


@bentoml.asgi_app(EXTRA_ROUTES, path="/", name="imgcls-extra")
@bentoml.service(
    name="imgcls",
    workers=CONFIG.workers,
    traffic={"timeout": CONFIG.timeout, **({"max_concurrency": CONFIG.max_concurrency} if CONFIG.max_concurrency else {})},
    metrics={"enabled": False},  # replaced by imgcls.service.host.metrics (bounded labels, see there)
    logging={"access": {"enabled": CONFIG.access_log}},
    tracing=tracing.service_settings(CONFIG.access_log, os.environ),  # spans only when read (see tracing)
)
class ImageClassifier:
    """Image classification with an imgcls bundle (ONNX Runtime), batching concurrent requests."""

    def __init__(self) -> None:
        self._pin_request_threads()
        self.metrics = ServiceMetrics.create()
        self.metrics.initialise(REASON_STATUS)
        install(self.metrics, [ServerCollector(CONFIG.workers, CONFIG.state_dir)])
        from imgcls.service.host.models import ServedModels  # ONNX Runtime: in the workers, not the arbiter

        self.models = ServedModels(CONFIG, self.metrics, worker_index())
        self.models.open_initial()
        self._warm = threading.Event()
        # the readiness marker waits for every part of this worker's start: the warm-up, when
        # balancing the wrapped accept (a server ready before it would let one worker take a burst),
        # and with --grpc-port the listening gRPC server (gRPC clients of a ready server were refused)
        self._pending = {"warm-up"} | ({"accept"} if self._balancing() else set()) | ({"grpc"} if CONFIG.grpc_port else set())
        self._pending_lock = threading.Lock()
        self._marker = self._marker_path()
        if self._marker is not None:
            self._marker.unlink(missing_ok=True)
        if self._marker is not None and readiness.live_markers(self._marker.parent):
            # A worker restarted (crashed) while the others serve: warm up BEFORE uvicorn starts
            # accepting (it accepts once __init__ returns), so it never answers 503 not_ready.
            log.info("other workers are serving: warming up before accepting connections")
            self._warm_up()
        else:  # the server is starting: answer /livez at once, /readyz 503 until warm
            threading.Thread(target=self._warm_up, name="imgcls-warmup", daemon=True).start()
        uvicorn_server = drain.uvicorn_server()  # before drain.install() wraps its SIGTERM handler
        self._release_timed_requests(uvicorn_server)
        # BentoML's timeout (504) and max_concurrency (429) answer outside our middlewares: counted around them
        count_outer_answers(uvicorn_server, HTTPMetricsMiddleware(None, **METRICS_ROUTES))
        drain.install()
        self._balance_connections(uvicorn_server)
        _CURRENT["service"] = self
        self._grpc: dict[str, Any] = {}
        if CONFIG.grpc_port:  # the Open Inference Protocol over gRPC on this worker's loop (imgcls.service.host.grpc_server)
            from imgcls.service.host import grpc_server

            self._grpc = grpc_server.start_in_background(CONFIG, lambda: _CURRENT.get("service"), _BACKGROUND,
                                                         lambda: self._started("grpc"))

    @staticmethod
    def _pin_request_threads() -> None:
        """This worker's event loop, and the threads it starts (gRPC's), on a CPU of its own
        (``imgcls.service.priority``); the computing threads untie themselves."""
        from imgcls.service.runtime import cgroup_cpu_limit  # ONNX Runtime: in the workers, not the arbiter

        cpu = io_cpu(worker_index(), CONFIG.workers, cgroup_cpu_limit()) if CONFIG.pin_io_threads else None
        if cpu is not None:
            pin_this_thread(cpu)
            log.info("request threads of worker %d on CPU %d", worker_index(), cpu)

    @staticmethod
    def _release_timed_requests(server: Any) -> None:
        """BentoML's request timeout held every answered request for --timeout seconds: ours releases it
        (``imgcls.service.host.timeout``)."""
        app = getattr(getattr(server, "config", None), "loaded_app", None)
        if app is None or not private.replace_timeout(app, Timeout):
            log.warning("BentoML's request timeout is not replaced: each answered request stays in memory for "
                        "--timeout seconds (%s s)", CONFIG.timeout)

    @staticmethod
    def _balancing() -> bool:
        return bool(CONFIG.balance_connections and CONFIG.workers >= 2 and CONFIG.state_dir)

    def _balance_connections(self, server: Any) -> None:
        """Least-connections accept across the workers (``imgcls.service.host.accept``)."""
        if not self._balancing():
            return
        if server is None:  # not under uvicorn: nothing to wrap, nothing to wait for
            self._started("accept")
            return
        task = asyncio.get_running_loop().create_task(
            accept.install_when_serving(server, CONFIG.state_dir, worker_index(), CONFIG.workers))
        _BACKGROUND.add(task)
        task.add_done_callback(_BACKGROUND.discard)
        task.add_done_callback(lambda _task: self._started("accept"))

    def _started(self, part: str) -> None:
        """One part of the start is done; the last one publishes the readiness marker."""
        with self._pending_lock:
            self._pending.discard(part)
            complete = not self._pending
        if complete and self._marker is not None:
            self._marker.write_text(str(os.getpid()))

    @staticmethod
    def _marker_path() -> Path | None:
        if not CONFIG.state_dir:
            return None
        return Path(CONFIG.state_dir) / f"ready-{worker_index()}"

    def _warm_up(self) -> None:
        if CONFIG.warmup_delay_s:
            threading.Event().wait(CONFIG.warmup_delay_s)
        try:
            self.models.warm_up()
        except Exception:  # a model that cannot run: stay not-ready, say why
            log.exception("warm-up failed; this worker stays not ready")
            return
        self._warm.set()
        self._started("warm-up")

    def warmed(self) -> bool:
        """This worker has warmed up (``/classify`` and ``/v2`` infer answer 503 before)."""
        return self._warm.is_set()

    def __is_ready__(self) -> bool:
        if not self._warm.is_set():
            return False
        if self._marker is None:
            return True
        return len(readiness.live_markers(self._marker.parent)) >= CONFIG.workers

    @bentoml.on_shutdown
    async def shutdown(self) -> None:
        if self._marker is not None:
            self._marker.unlink(missing_ok=True)
        if self._grpc:  # the running gRPC calls answer before the models close and the loop ends
            from imgcls.service.host import grpc_server

            await grpc_server.stopped(self._grpc, CONFIG.grace)
        self.models.close()

    @bentoml.api(route="/classify", input_spec=ClassifyInput, output_spec=ClassifyResponse)
    async def classify(self, images: Any, top_k: int, model: str) -> Response:
        """Classify one or several images.

        Send them as multipart/form-data file parts (field ``images``), as JSON
        ``{"images": ["<base64>", {"data": "<base64>", "name": "x.jpg"}], "top_k": 3, "model": "NAME"}``, or
        one image as the raw body (``Content-Type: image/*``). ``model`` names the served model that
        answers (``GET /models``); it may be left out when one model is served. Per image: top-k
        ``{label, index, score}`` or that image's ``error``; other images are classified regardless.
        Errors: JSON ``ErrorResponse`` with a reason code (400, 404 unknown model, 413, 415; 503 only when
        overloaded or warming up). The answer's ``model.version`` and the header ``X-Model-Version`` name
        the version that produced it.
        """
        if isinstance(images, RequestRejected):
            self.metrics.requests.labels(model="", outcome="rejected", reason=images.reason).inc()
            return json_response(images.status, error_body(images.reason, images.message))
        if not self._warm.is_set():
            self.metrics.requests.labels(model="", outcome="rejected", reason="not_ready").inc()
            return json_response(503, error_body("not_ready", "the model is still warming up"), {"Retry-After": "1"})
        headers: dict[str, str] = {}
        name = ""
        try:
            async with self.models.registry.use(images.model) as served:
                name, headers = served.name, encode.model_headers(served.info)
                result = await served.classify(images)
        except EngineError as exc:
            self.metrics.requests.labels(model=name, outcome="rejected", reason=exc.reason).inc()
            status, body = encode.error(exc)
            if status == 503:
                headers["Retry-After"] = "1"
            return json_response(status, body, headers)
        outcome = "ok" if result.classified == len(result.images) else "partial"
        self.metrics.requests.labels(model=name, outcome=outcome, reason="none").inc()
        return json_response(200, encode.response(result), headers)


class ClassifyMethodGuard:
    """ASGI middleware: any method but POST (and OPTIONS) on /classify answers JSON 405 like other errors."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"] == "/classify" and scope["method"] not in ("POST", "OPTIONS"):
            body = error_body("method_not_allowed", f"{scope['method']} /classify: send the images with POST")
            await json_response(405, body, {"Allow": "POST"})(scope, receive, send)
            return
        await self.app(scope, receive, send)


# The first added is the outermost: the metrics see every answer of the service, the guard's 405s too.
ImageClassifier.add_asgi_middleware(HTTPMetricsMiddleware, **METRICS_ROUTES)
if CONFIG.api_keys_file:  # then every request not in a public group needs Authorization: Bearer <key>
    ImageClassifier.add_asgi_middleware(APIKeyMiddleware, keys=read_keys(CONFIG.api_keys_file),
                                        public=public_groups(CONFIG.public_routes))
ImageClassifier.add_asgi_middleware(ClassifyMethodGuard)
