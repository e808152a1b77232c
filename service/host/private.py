"""Private APIs of other libraries the host needs, each behind one function (tests/test_host_private.py
fails loudly when a library changes them)."""
from __future__ import annotations

from typing import Any, Callable


def worker_index() -> int:
    """This BentoML worker's id (``bentoml._internal.context.server_context.worker_index``; 0 outside a server)."""
    from bentoml._internal.context import server_context

    return int(server_context.worker_index or 0)


def replace_timeout(root: Any, make: Callable[[Any, float], Any]) -> bool:
    """Replace BentoML's request ``TimeoutMiddleware`` in the ASGI chain under ``root`` (uvicorn's loaded app:
    each middleware's ``.app``, a Starlette app's built ``middleware_stack``) by ``make(its app, its timeout)``.
    False when it is not there (no timeout configured, or BentoML builds its app otherwise)."""
    from bentoml._internal.server.http.traffic import TimeoutMiddleware

    node = root
    for _ in range(64):  # a chain of middlewares, never a cycle; bounded all the same
        link = "middleware_stack" if getattr(node, "middleware_stack", None) is not None else "app"
        child = getattr(node, link, None)
        if child is None:
            return False
        if isinstance(child, TimeoutMiddleware):
            setattr(node, link, make(child.app, child.timeout))
            return True
        node = child
    return False
