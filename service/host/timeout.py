"""The request timeout (``--timeout``: 504 when no answer has started in time), without holding on to requests.

BentoML's ``TimeoutMiddleware`` schedules a timer per request and never cancels it: every answered request
stays referenced by the event loop until its timer fires (``--timeout`` seconds, 60 by default), with its
context (the request's context variables: trace spans, the service's request context). A worker answering
180 requests a second held over 10 000 of them, and its memory grew by ~2.5 KiB per request for the first
minute of load (MobileNet-v2, 2 workers, 16 clients; a no-op BentoML service grew by ~4.7 KiB per request).
``Timeout`` answers exactly as BentoML's does (504, ``{"error": "Not able to process the request in N
seconds"}``), and cancels its timer once the answer has started; asyncio drops cancelled timers in bulk,
so a few hundred at most are ever held. ``imgcls.service.host.private.replace_timeout`` puts it where
BentoML's was.
"""
from __future__ import annotations

import asyncio
from typing import Any

from starlette.responses import JSONResponse


def _time_out(waiter: asyncio.Future) -> None:
    if not waiter.done():
        waiter.set_exception(asyncio.TimeoutError)


class Timeout:
    """ASGI middleware: 504 when ``app`` has not started its answer within ``timeout`` seconds."""

    def __init__(self, app: Any, timeout: float) -> None:
        self.app, self.timeout = app, timeout

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        loop = asyncio.get_running_loop()
        waiter = loop.create_future()
        timer = loop.call_later(self.timeout, _time_out, waiter)

        async def started(message: dict) -> None:
            if not waiter.done():
                waiter.set_result(None)
            await send(message)

        answer = asyncio.ensure_future(self.app(scope, receive, started))
        try:
            await waiter
        except asyncio.TimeoutError:
            if answer.cancel():
                await JSONResponse({"error": f"Not able to process the request in {self.timeout} seconds"},
                                   status_code=504)(scope, receive, send)
            return
        finally:
            timer.cancel()
        await answer
