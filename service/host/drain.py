"""Worker-side graceful drain: on SIGTERM, stop LISTENING for the whole server before draining.

A BentoML server's listening socket is created by its circus arbiter and shared by every worker
(``--fd N``). On SIGTERM uvicorn stops accepting in its own process and answers what it holds,
but the arbiter still holds the socket open until every worker has exited: connections made
meanwhile complete the TCP handshake into the kernel's backlog, are never accepted, and are reset
when the arbiter finally closes the socket. A client cannot tell such a reset from a request lost
in flight.

``install(fd)`` wraps uvicorn's SIGTERM handler: it first accepts the connections the kernel has
already queued (``imgcls.service.host.accept.accept_queued``: their requests were sent), stops this
worker's accept loop (closing its asyncio servers one loop iteration later, once the connections
just accepted have their transports) and ``shutdown(SHUT_RD)``s the shared listening socket (on
Linux that takes it out of the LISTEN state for every process holding it: new connections are
refused, which a client or load balancer can safely retry elsewhere), then, ``READ_QUEUED_S`` later
(uvicorn's shutdown closes connections whose request it has not read yet), hands over to uvicorn,
which answers every request already accepted.
"""
from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import sys
from types import FrameType
from typing import Any, Callable, Sequence

from imgcls.service.host import accept

log = logging.getLogger(__name__)
READ_QUEUED_S = 0.2  # after accepting the queued connections, before uvicorn starts its shutdown


def listening_fd(argv: Sequence[str] | None = None) -> int | None:
    """The ``--fd N`` BentoML passes to each worker (``_bentoml_impl.worker.service``), if any."""
    argv = list(sys.argv if argv is None else argv)
    for flag, value in zip(argv, argv[1:]):
        if flag == "--fd" and value.isdigit():
            return int(value)
    return None


def stop_listening(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RD)
    except OSError as exc:  # already stopped by another worker: ENOTCONN
        log.debug("listening socket already shut down: %s", exc)


def uvicorn_server() -> Any:
    """This worker's uvicorn ``Server`` (the owner of the SIGTERM handler), or None."""
    server = getattr(signal.getsignal(signal.SIGTERM), "__self__", None)
    return server if server is not None and hasattr(server, "should_exit") else None


def install(fd: int | None = None) -> bool:
    """Wrap the current SIGTERM handler (uvicorn's ``Server.handle_exit``); True when installed.

    Call from the worker's main thread inside the running event loop (the service's ``__init__``).
    """
    fd = listening_fd() if fd is None else fd
    previous = signal.getsignal(signal.SIGTERM)
    server = uvicorn_server()
    if fd is None or server is None:
        log.debug("no BentoML worker socket or uvicorn handler here; drain hook not installed")
        return False
    sock = socket.socket(fileno=os.dup(fd))  # our own descriptor of the shared socket
    loop = asyncio.get_running_loop()

    handler: Callable[[int, FrameType | None], Any] = previous  # type: ignore[assignment]

    def stop_accepting(signum: int, frame: FrameType | None) -> None:
        accept.accept_queued(server)  # connections the kernel queued are answered, not reset below
        for fd in accept.listening_fds(server):
            loop.remove_reader(fd)  # this worker: no more accept() calls
        stop_listening(sock)  # every worker and the arbiter: no more handshakes
        # Close the asyncio servers only after the connections just accepted got their transports:
        # asyncio makes them in tasks that run next, and a transport made for a closed Server fails
        # its ``_attach`` assertion, which drops the connection (a reset the client cannot retry safely).
        loop.call_soon(close_servers)
        log.info("SIGTERM: stopped listening; answering the requests already accepted")
        # uvicorn's shutdown closes connections whose request it has not read yet: give the ones just
        # accepted a moment to start their request, then let uvicorn drain everything in flight
        loop.call_later(READ_QUEUED_S, handler, signum, frame)

    def close_servers() -> None:
        for asyncio_server in list(getattr(server, "servers", ())):  # set once uvicorn serves
            asyncio_server.close()

    def on_term(signum: int, frame: FrameType | None) -> None:
        if getattr(server, "should_exit", False):  # a second SIGTERM: uvicorn's own force exit
            handler(signum, frame)
            return
        loop.call_soon_threadsafe(stop_accepting, signum, frame)

    signal.signal(signal.SIGTERM, on_term)
    return True
