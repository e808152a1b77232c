"""The Open Inference Protocol (KServe v2) REST routes, served beside ``/classify`` by the same worker.

``build_routes(current)`` returns Starlette routes that ``imgcls.service.host.service`` mounts like
``/model``; ``current()`` gives this worker's ``ImageClassifier`` (or None before it exists). The
routes share its engine: the same decode pool, limits and reason codes (``ClassifierEngine.decode_all``),
the same micro-batcher (``ClassifierEngine.infer``) and the same Prometheus metrics, plus
``imgcls_oip_requests{route, outcome, reason}``. Errors are the protocol's ``{"error": "..."}``
with a 4xx status for bad input (404 unknown model or version, 400 bad tensor, 413 over a limit),
503 only while warming up or overloaded. Every path under ``/v2`` answers that JSON, known or not:
a wrong method is 405 (with ``Allow``), an unknown path 404 (``/v2/{path}``, the last route). Readiness (server and model) is ``/readyz``'s: every
worker warmed; per the protocol a 4xx (400) means "not ready".
"""
from __future__ import annotations

import asyncio
import functools
import logging
from typing import Any, Awaitable, Callable

import numpy as np
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

import imgcls
from imgcls.service.engine.batcher import Overloaded
from imgcls.service.protocols.oip.messages import (
    EXTENSIONS, HEADER_LENGTH, InferRequest, ModelSpec, OIPError, decompress, json_length, parse_infer,
)
from imgcls.service.protocols.oip.response import encode_infer, error_document
from imgcls.service.protocols.classify.schemas import REASON_STATUS
from imgcls.service.protocols.classify.uploads import RequestRejected, Upload, read_body

log = logging.getLogger(__name__)
SERVER_NAME = "imgcls"
MODEL = "/v2/models/{name}"
VERSION = "/v2/models/{name}/versions/{version}"
FIXED_ROUTES = ("/v2", "/v2/health/live", "/v2/health/ready")
MODEL_ROUTES = (MODEL, VERSION, MODEL + "/ready", VERSION + "/ready", MODEL + "/infer", VERSION + "/infer")
PARSE_IN_THREAD_BYTES = 256 * 1024  # bigger JSON parts (JSON pixels, many base64 images) are parsed off the event loop
MAX_LISTED_FAILURES = 5
Handler = Callable[[Request, Any], Awaitable[Response]]


def model_spec(service: Any) -> ModelSpec:
    engine = service.engine
    predictor = engine.predictor
    return ModelSpec(name=engine.name, version=predictor.model_version.rsplit("@", 1)[-1],
                     crop_size=predictor.input_size, class_names=tuple(predictor.class_names),
                     max_images=engine.config.max_images)


def _json(status: int, body: Any, headers: dict[str, str] | None = None) -> Response:
    return JSONResponse(body, status_code=status, headers=headers)


def _check_model(request: Request, spec: ModelSpec) -> None:
    name, version = request.path_params["name"], request.path_params.get("version")
    if name != spec.name:
        raise OIPError(404, f"unknown model {name[:80]!r}: this server serves {spec.name!r}", "unknown_model")
    if version is not None and version != spec.version:
        raise OIPError(404, f"model {spec.name!r} has no version {version[:80]!r} (it serves {spec.version!r})",
                       "unknown_version")


# ---------------------------------------------------------------- handlers
async def server_metadata(_: Request, __: Any) -> Response:
    return _json(200, {"name": SERVER_NAME, "version": imgcls.__version__, "extensions": list(EXTENSIONS)})


async def live(_: Request, __: Any) -> Response:
    return _json(200, {"live": True})


async def ready(_: Request, service: Any) -> Response:
    is_ready = bool(service.__is_ready__())
    return _json(200 if is_ready else 400, {"ready": is_ready})


async def model_metadata(request: Request, service: Any) -> Response:
    spec = model_spec(service)
    _check_model(request, spec)
    return _json(200, spec.metadata(), service.model_headers)


async def model_ready(request: Request, service: Any) -> Response:
    spec = model_spec(service)
    _check_model(request, spec)
    is_ready = bool(service.__is_ready__())
    return _json(200 if is_ready else 400, {"name": spec.name, "ready": is_ready}, service.model_headers)


async def infer(request: Request, service: Any) -> Response:
    spec, engine = model_spec(service), service.engine
    _check_model(request, spec)
    try:
        body = await read_body(request, engine.config.max_body_bytes)
    except RequestRejected as exc:
        raise OIPError(exc.status, exc.message, exc.reason) from None
    encoding, header_length = request.headers.get("content-encoding"), request.headers.get(HEADER_LENGTH)
    work = functools.partial(_parse, body, encoding, header_length, spec, engine.config.max_body_bytes)
    # big JSON (or inflating) bodies: off the event loop. A binary tensor part costs a slice, not a parse:
    # sent to the decode threads, a camera JPEG queued behind the decodes there (p99 at 16 clients).
    # (A compressed body's header length counts inflated bytes: it is checked after inflating.)
    if encoding or json_length(len(body), header_length) > PARSE_IN_THREAD_BYTES:
        parsed = await asyncio.get_running_loop().run_in_executor(engine.predictor.decode_pool(), work)
    else:
        parsed = work()
    if not service.warmed():
        raise OIPError(503, "the model is still warming up", "not_ready")
    pixels = await _pixels(engine, parsed)
    try:
        job = await engine.infer(pixels)
    except Overloaded as exc:
        raise OIPError(503, str(exc), "overloaded") from None
    engine.record_classified(job.probabilities)
    content, headers = encode_infer(parsed, spec, job.probabilities)
    return Response(content, status_code=200, headers={**service.model_headers, **headers})


def _parse(body: bytes, encoding: str | None, header_length: str | None, spec: ModelSpec, limit: int) -> InferRequest:
    return parse_infer(decompress(body, encoding, limit), header_length, spec)


async def _pixels(engine: Any, parsed: InferRequest) -> np.ndarray:
    """The uint8 model input: the client's pixels, or the images decoded like ``/classify`` decodes them."""
    if parsed.images is None:
        assert parsed.pixels is not None
        return parsed.pixels
    decoded = await engine.decode_all([Upload(i, None, data) for i, data in enumerate(parsed.images)])
    failures = [(item.upload.position, item.error) for item in decoded if item.error is not None]
    if not failures:
        return np.stack([item.pixels for item in decoded])
    for _, error in failures:
        engine.metrics.images.labels(outcome="failed", reason=error.reason).inc()
    statuses = {error.status for _, error in failures}
    reasons = {error.reason for _, error in failures}
    listed = "; ".join(f"image[{i}]: {e.reason}: {e.message}" for i, e in failures[:MAX_LISTED_FAILURES])
    more = f" (and {len(failures) - MAX_LISTED_FAILURES} more)" if len(failures) > MAX_LISTED_FAILURES else ""
    status = statuses.pop() if len(statuses) == 1 else REASON_STATUS["all_images_failed"]
    reason = reasons.pop() if len(reasons) == 1 else "all_images_failed"
    raise OIPError(status, f"{len(failures)} of {len(decoded)} images could not be decoded: {listed}{more}", reason)


# ---------------------------------------------------------------- routes
UNKNOWN_PATH = "/v2/{path:path}"  # anything else under /v2: the metrics label it "unmatched"


class _AnyMethod:
    """An ASGI endpoint taking every method: the handler answers a wrong one (Starlette's own 405 is plain text)."""

    def __init__(self, endpoint: Callable[[Request], Awaitable[Response]]) -> None:
        self.endpoint = endpoint

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        response = await self.endpoint(Request(scope, receive))
        await response(scope, receive, send)


def _endpoint(template: str, handler: Handler, method: str | None,
              current: Callable[[], Any]) -> Callable[[Request], Awaitable[Response]]:
    """``method``: the one the route takes (GET takes HEAD too); None: any."""
    allowed = (method, "HEAD") if method == "GET" else (method,)

    async def endpoint(request: Request) -> Response:
        service = current()
        outcome, reason, headers = "ok", "none", None
        try:
            if method is not None and request.method not in allowed:
                headers = {"Allow": ", ".join(allowed)}
                raise OIPError(405, f"{request.method[:20]} {template}: use {method}", "method_not_allowed")
            if service is None:
                raise OIPError(503, "the model is not loaded yet", "not_ready")
            response = await handler(request, service)
        except OIPError as exc:
            outcome, reason = "rejected", exc.reason
            headers = {"Retry-After": "1"} if exc.status == 503 else headers
            response = _json(exc.status, error_document(exc.message), headers)
        if service is not None:
            service.metrics.oip_requests.labels(route=template, outcome=outcome, reason=reason).inc()
        return response

    endpoint.__name__ = handler.__name__
    return endpoint


async def unknown_path(request: Request, _: Any) -> Response:
    raise OIPError(404, f"no such path {request.url.path[:120]!r}: the Open Inference Protocol routes are /v2, "
                        "/v2/health/{live,ready} and /v2/models/{name}[/versions/{version}][/ready|/infer]",
                   "unknown_path")


def build_routes(current: Callable[[], Any]) -> list[Route]:
    """Every OIP route (the ``/versions/{version}`` forms too), for a Starlette app mounted at "/"."""
    table: list[tuple[str, Handler, str]] = [
        ("/v2", server_metadata, "GET"), ("/v2/health/live", live, "GET"), ("/v2/health/ready", ready, "GET"),
        (MODEL, model_metadata, "GET"), (VERSION, model_metadata, "GET"),
        (MODEL + "/ready", model_ready, "GET"), (VERSION + "/ready", model_ready, "GET"),
        (MODEL + "/infer", infer, "POST"), (VERSION + "/infer", infer, "POST"),
    ]
    routes = [Route(path, _AnyMethod(_endpoint(path, handler, method, current))) for path, handler, method in table]
    # the label "unmatched" (as the HTTP metrics): the raw path never becomes a label value
    catch_all = _endpoint("unmatched", unknown_path, None, current)
    return [*routes, Route(UNKNOWN_PATH, _AnyMethod(catch_all))]
