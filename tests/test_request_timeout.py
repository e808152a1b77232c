"""The request timeout (imgcls.service.host.timeout): 504 when no answer started in time, as BentoML's,
and an answered request is released at once instead of staying referenced for --timeout seconds."""
from __future__ import annotations

import asyncio
import contextvars
import gc
import json
import weakref

from starlette.applications import Starlette
from starlette.middleware import Middleware

from imgcls.service.host.private import replace_timeout
from imgcls.service.host.timeout import Timeout

REQUEST = contextvars.ContextVar("request")


class Sentinel:
    """Stands for what a request's context holds (spans, the service's request context)."""


async def _answer(app, scope_type: str = "http", refs: list | None = None) -> list[dict]:
    """One request through ``app``; the request's context holds a ``Sentinel`` set before the timeout
    middleware runs (as BentoML's outer middlewares set the request's span and context)."""
    sent: list[dict] = []
    sentinel = Sentinel()
    REQUEST.set(sentinel)
    if refs is not None:
        refs.append(weakref.ref(sentinel))
    del sentinel

    async def receive() -> dict:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict) -> None:
        sent.append(message)

    await app({"type": scope_type, "method": "GET", "path": "/", "headers": []}, receive, send)
    return sent


def _app(delay_s: float = 0.0):
    async def app(scope, receive, send) -> None:
        await asyncio.sleep(delay_s)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})
    return app


def test_answered_requests_are_released_at_once():
    refs: list = []

    async def run() -> None:
        app = Timeout(_app(), timeout=60.0)
        for _ in range(400):  # each in its own task (its own context), as uvicorn runs requests
            sent = await asyncio.ensure_future(_answer(app, refs=refs))
            assert sent[0]["status"] == 200

    asyncio.run(run())
    gc.collect()
    alive = sum(ref() is not None for ref in refs)
    assert alive == 0, f"{alive} of {len(refs)} answered requests still referenced"


def test_held_until_the_loop_ends_is_bounded_while_serving():
    refs: list = []

    async def run() -> int:
        app = Timeout(_app(), timeout=60.0)
        for _ in range(1000):
            await asyncio.ensure_future(_answer(app, refs=refs))
        gc.collect()
        return sum(ref() is not None for ref in refs)  # counted while the loop (and its timers) still runs

    alive = asyncio.run(run())
    assert alive <= 250, f"{alive} of 1000 answered requests still referenced by the running loop"


def test_an_answer_not_started_in_time_is_a_504():
    sent = asyncio.run(_answer(Timeout(_app(delay_s=2.0), timeout=0.05)))
    assert sent[0]["status"] == 504
    assert json.loads(sent[1]["body"]) == {"error": "Not able to process the request in 0.05 seconds"}


def test_other_scopes_pass_through():
    seen: list = []

    async def app(scope, receive, send) -> None:
        seen.append(scope["type"])

    asyncio.run(_answer(Timeout(app, timeout=0.01), scope_type="lifespan"))
    assert seen == ["lifespan"]


def test_bentoml_timeout_middleware_is_found_and_replaced():
    # BentoML's own class in a Starlette stack, as BentoML builds its service app (a library change fails here)
    from bentoml._internal.server.http.traffic import TimeoutMiddleware

    inner = Starlette(middleware=[Middleware(TimeoutMiddleware, timeout=7.0)])
    inner.middleware_stack = inner.build_middleware_stack()

    class Outer:  # a uvicorn wrapper around the app
        def __init__(self, app) -> None:
            self.app = app

    root = Outer(inner)
    assert replace_timeout(root, Timeout)
    chain, node = [], root
    while node is not None:
        chain.append(node)
        node = getattr(node, "middleware_stack", None) or getattr(node, "app", None)
    replaced = [n for n in chain if isinstance(n, Timeout)]
    assert len(replaced) == 1 and replaced[0].timeout == 7.0
    assert not any(isinstance(n, TimeoutMiddleware) for n in chain)
    assert not replace_timeout(Outer(Starlette()), Timeout)  # none there: says so
