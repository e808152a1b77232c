"""Private APIs of other libraries the host needs, each behind one function (tests/test_host_private.py
fails loudly when a library changes them)."""
from __future__ import annotations


def worker_index() -> int:
    """This BentoML worker's id (``bentoml._internal.context.server_context.worker_index``; 0 outside a server)."""
    from bentoml._internal.context import server_context

    return int(server_context.worker_index or 0)
