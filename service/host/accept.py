"""Least-connections accept: the workers of one server share keep-alive clients evenly.

Every BentoML worker listens on the same socket (the arbiter's ``--fd``). asyncio's selector loop
accepts every pending connection each time that socket is readable, so when clients connect
together (a load balancer's pool, 16 keep-alive benchmark clients) the first worker to wake takes
them all and keeps them for as long as they live. Measured with 2 workers and 16 keep-alive clients
(MobileNet-v2, 2 cores): all 16 on one worker in most runs; that worker's single ONNX Runtime thread
queued everything while the other's idled: p50 145 ms, p99 about 250 ms. With this module the
split is 7/9 and p50 107-112 ms, p99 156-171 ms, 30 % more requests per second.

Each worker publishes its open connection count (and pid) in a slot of a small shared file in the
server's state directory (``imgcls.service.host.worker_board``). When the listening socket becomes readable, a worker holding more
connections than the least-loaded live worker waits ``DEFER_MS_PER_CONNECTION`` per connection of
difference (at most ``MAX_DEFER_S``) before accepting, so the less loaded worker takes the
connection first; if nobody did by then, it accepts anyway (a new connection is never left waiting
longer than that). The accept itself is asyncio's own, one connection per wake-up.

On by default (``imgcls serve --no-balance-connections`` turns it off). A worker's readiness marker
waits until its accept is wrapped, so a server is never ready while a worker still accepts the
default way. Deferred connections wait in the kernel's queue a few milliseconds longer, which the
drain handles (``accept_queued``, then closing asyncio's servers only once their transports exist):
0 requests lost in 8 SIGTERM trials of ``benchmarks.reliability.drain_trial`` (16 clients, about
1,200 requests each), where closing at once had lost 1-6 in 5 of 6 trials.

``accept_queued`` (every worker, balanced or not) is the drain's first step on SIGTERM: accept what
the kernel has queued before the socket is shut down, so those requests are answered, not reset.

This re-registers asyncio's accept callback (``loop._accept_connection`` and the handle's arguments:
private API of the selector event loop, stable from Python 3.8 to 3.13); when anything differs from
what is expected it leaves asyncio's default alone and says so. ``tests/test_accept_balance.py``
checks the split on a real server.
"""
from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any, Callable

from imgcls.service.host.worker_board import WorkerBoard

log = logging.getLogger(__name__)

BOARD_NAME = "connections.board"
DEFER_MS_PER_CONNECTION = 1.0
MAX_DEFER_S = 0.005
PUBLISH_EVERY_S = 0.01  # while this worker's count moves
PUBLISH_STEADY_MAX_S = 0.25  # the interval doubles up to this while the count stays the same
BACKLOG_ARG = 4  # _accept_connection(protocol_factory, sock, sslcontext, server, backlog, ...)


class LeastConnectionsAccept:
    """Wraps one listening socket's accept callback on this worker's event loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop, fd: int, accept: Callable[..., None], args: tuple,
                 board: WorkerBoard, workers: int, open_connections: Callable[[], int]) -> None:
        self.loop, self.fd, self.accept, self.original_args = loop, fd, accept, args
        self.args = (*args[:BACKLOG_ARG], 1, *args[BACKLOG_ARG + 1:])  # one connection per wake-up
        self.board, self.workers, self.open_connections = board, workers, open_connections
        self.stopped = False  # set by the drain: a deferred accept must not resume afterwards

    def held(self) -> int:
        """Open connections, counting those accepted since the last publication whose protocol
        uvicorn has not registered yet (asyncio finishes an accept in a task, a moment later)."""
        return max(self.open_connections(), self.board.published())

    def on_readable(self) -> None:
        mine = self.held()
        elsewhere = self.board.least_elsewhere(self.workers)
        least = None if elsewhere is None else elsewhere[1]
        if least is not None and mine > least:  # a less loaded worker should take it: let it
            self.loop.remove_reader(self.fd)
            delay = min(MAX_DEFER_S, (mine - least) * DEFER_MS_PER_CONNECTION / 1000.0)
            self.loop.call_later(delay, self._after_deferring)
            return
        self._accept()

    def _after_deferring(self) -> None:
        server = self.args[3]  # the asyncio Server: closed on SIGTERM (drain) meanwhile? then stay closed
        if self.stopped or (server is not None and not server.is_serving()):
            return
        self.loop.add_reader(self.fd, self.on_readable)
        self._accept()  # still pending after the wait: take it (asyncio returns quietly on EAGAIN)

    def _accept(self) -> None:
        before = self.held()
        self.accept(*self.args)
        self.board.publish(before + 1)  # until the next tick republishes the registered count


_BALANCERS: list[LeastConnectionsAccept] = []  # this worker's wrapped listening sockets


def listening_fds(uvicorn_server: Any) -> list[int]:
    return [transport_socket.fileno() for server in getattr(uvicorn_server, "servers", None) or ()
            for transport_socket in getattr(server, "sockets", ())]


def _registered_reader(loop: asyncio.AbstractEventLoop, fd: int) -> tuple[Callable[..., Any], tuple] | None:
    """``(callback, args)`` the selector event loop calls when ``fd`` is readable, or None."""
    try:
        handle = loop._selector.get_key(fd).data[0]  # type: ignore[attr-defined]
        return handle._callback, tuple(handle._args)
    except (AttributeError, KeyError, ValueError, IndexError, TypeError):
        return None


def accept_queued(uvicorn_server: Any) -> None:
    """Accept every connection the kernel has queued on this worker's listening sockets, now.

    Called when SIGTERM arrives, before the socket is shut down (which resets what is still queued,
    losing requests clients have already sent). Uses asyncio's own accept with its full batch (the
    registered one, or the one a balancer wraps); quietly does nothing when the internals differ.
    """
    loop = asyncio.get_running_loop()
    if _BALANCERS:
        for balancer in _BALANCERS:
            balancer.stopped = True
        accepts = [(balancer.accept, balancer.original_args) for balancer in _BALANCERS]
    else:
        accepts = [found for fd in listening_fds(uvicorn_server) if (found := _registered_reader(loop, fd))]
    for accept, args in accepts:
        try:
            accept(*args)
        except OSError as exc:  # another worker already shut the listening socket down
            log.debug("accepting the queued connections failed: %s", exc)


def install(uvicorn_server: Any, state_dir: str, index: int, workers: int) -> int:
    """Balance every listening socket of ``uvicorn_server`` (once it serves); sockets wrapped."""
    loop = asyncio.get_running_loop()
    accept = getattr(loop, "_accept_connection", None)
    state = getattr(uvicorn_server, "server_state", None)
    if workers < 2 or not state_dir or accept is None or state is None:
        return 0
    board = WorkerBoard(Path(state_dir) / BOARD_NAME, index)
    open_connections = lambda: len(state.connections)  # noqa: E731 - uvicorn's registered connections
    wrapped = 0
    for fd in listening_fds(uvicorn_server):
        found = _registered_reader(loop, fd)
        if found is None or found[0] != accept or len(found[1]) <= BACKLOG_ARG or not isinstance(found[1][BACKLOG_ARG], int):
            continue
        balancer = LeastConnectionsAccept(loop, fd, accept, found[1], board, workers, open_connections)
        _BALANCERS.append(balancer)
        loop.remove_reader(fd)
        loop.add_reader(fd, balancer.on_readable)
        wrapped += 1
    if wrapped:
        _keep_publishing(loop, board, open_connections)
    return wrapped


def _keep_publishing(loop: asyncio.AbstractEventLoop, board: WorkerBoard, count: Callable[[], int]) -> None:
    """Republish the registered count (closed connections have no hook): every 10 ms while it moves,
    backing off to 250 ms while it holds. An accept publishes at once, so a count is never low; a stale
    high one only lets the other workers take the next connection first. Idle, a worker spent 1.4 % of
    a core on 100 ticks a second (0.3 % without balancing)."""
    interval = [PUBLISH_EVERY_S]

    def tick() -> None:
        now = count()
        steady = now == board.published()
        board.publish(now)
        interval[0] = min(PUBLISH_STEADY_MAX_S, interval[0] * 2) if steady else PUBLISH_EVERY_S
        loop.call_later(interval[0], tick)

    tick()


async def install_when_serving(uvicorn_server: Any, state_dir: str, index: int, workers: int,
                               timeout_s: float = 120.0) -> None:
    """Wait until uvicorn has its listening servers (after the service's startup), then install."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not getattr(uvicorn_server, "servers", None) and loop.time() < deadline:
        await asyncio.sleep(0.01)
    wrapped = install(uvicorn_server, state_dir, index, workers)
    if wrapped:
        log.info("least-connections accept on %d listening socket(s) (worker %d of %d)", wrapped, index, workers)
    else:
        log.warning("least-connections accept not installed (asyncio internals differ or one worker): "
                    "keep-alive connections may gather on one worker")
