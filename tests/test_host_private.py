"""The private APIs the host uses (service/host/private.py, drain, accept) still exist in the installed
libraries: a library upgrade that moves them fails here, loudly, instead of in a running server."""
from __future__ import annotations

from imgcls.service.host.private import worker_index


def test_bentoml_still_exposes_the_worker_index():
    from bentoml._internal.context import server_context

    assert hasattr(server_context, "worker_index")
    assert worker_index() == int(server_context.worker_index or 0)
    previous = server_context.worker_index
    try:
        server_context.worker_index = 3
        assert worker_index() == 3
    finally:
        server_context.worker_index = previous
