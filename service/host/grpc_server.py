"""The Open Inference Protocol over gRPC in each worker process (``imgcls serve --grpc-port PORT``).

Every BentoML worker runs a ``grpc.aio`` server on its own event loop (the loop uvicorn serves HTTP
on), so a gRPC request reaches the same registry of models, decode pool, micro-batcher, limits and
metrics as ``/v2`` does. The workers listen on one port: gRPC sets ``SO_REUSEPORT`` on Linux and the
kernel spreads new connections over them (a connection stays on its worker); with two workers or more
each ModelInfer call runs on the least busy worker (``imgcls.service.host.grpc_spread``). A message
larger than ``--max-body-bytes`` is refused by gRPC itself (RESOURCE_EXHAUSTED). With API keys, every method but
the health ones (per ``--public-routes``) needs the metadata ``authorization: Bearer <key>``.
On SIGTERM, when the HTTP drain starts, the server stops admitting calls: a call that arrives from then
on answers UNAVAILABLE at once (the protocol's retryable status; no work done), the running ones
answer, and once none is left (at most ``--grace`` seconds) the gRPC server stops (GOAWAY, the port
closes). The worker's shutdown waits for that (``stopped``) before the models close and the event loop
ends. Stopping the gRPC server at once instead cancels calls: gRPC's server answers CANCELLED to
every call that reaches it after its stop began, and a loop ending under a running call cancels it.
"""
from __future__ import annotations

import asyncio
import logging
import signal
import time
from types import FrameType
from typing import Any, Callable, Sequence

import grpc

from imgcls.service.host import grpc_spread
from imgcls.service.host.auth import is_public, key_matches, public_groups, read_keys
from imgcls.service.host.config import ServiceConfig
from imgcls.service.host.private import worker_index
from imgcls.service.protocols.oip_grpc.servicer import handed_infer, handlers, route_path

log = logging.getLogger(__name__)


def authorizer(config: ServiceConfig) -> Callable[[str, Sequence[tuple[str, Any]]], bool]:
    """The API key check of a gRPC method (``authorization`` metadata), as the HTTP middleware checks a path."""
    keys = read_keys(config.api_keys_file) if config.api_keys_file else ()
    public = public_groups(config.public_routes)

    def authorize(method: str, metadata: Sequence[tuple[str, Any]]) -> bool:
        if not keys or is_public(route_path(method), public):
            return True
        header = next((value for key, value in metadata if key == "authorization"), "")
        header = header.encode() if isinstance(header, str) else bytes(header)
        scheme, _, candidate = header.partition(b" ")
        return scheme.lower() == b"bearer" and bool(candidate.strip()) and key_matches(candidate.strip(), keys)

    return authorize


def address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class CallGate:
    """The calls this worker's gRPC server admits: all until ``close()``, none afterwards; ``running`` counts
    the admitted calls that have not ended (the servicer's ``Gate``)."""

    def __init__(self) -> None:
        self.open, self.running, self.last_call = True, 0, 0.0

    def enter(self, context: Any) -> bool:
        self.last_call = time.monotonic()
        admitted = self.open or grpc_spread.Spread.handed(context)  # handed: admitted by the worker it came to
        if admitted:
            self.running += 1
        return admitted

    def leave(self) -> None:
        self.running -= 1

    def close(self) -> None:
        self.open = False


def spread_for(config: ServiceConfig) -> grpc_spread.Spread | None:
    """With two workers or more (balancing on, a state directory): ModelInfer calls go to the least busy
    worker (``imgcls.service.host.grpc_spread``)."""
    if not (config.balance_connections and config.workers >= 2 and config.state_dir):
        return None
    return grpc_spread.Spread(config.state_dir, worker_index(), config.workers, config.max_body_bytes)


async def serve(config: ServiceConfig, current: Callable[[], Any], gate: CallGate,
                spread: grpc_spread.Spread | None) -> grpc.aio.Server:
    """Start this worker's gRPC server on ``config.grpc_host:config.grpc_port`` (shared with the other workers),
    and with ``spread`` the answering of calls the other workers hand over (``imgcls.service.host.handoff``)."""
    server = grpc.aio.server(options=[
        ("grpc.so_reuseport", 1),
        ("grpc.max_receive_message_length", config.max_body_bytes),
        ("grpc.max_send_message_length", -1),
    ])
    server.add_generic_rpc_handlers((handlers(current, authorizer(config), gate, spread),))
    where = address(config.grpc_host, config.grpc_port)
    server.add_insecure_port(where)  # raises RuntimeError when the address cannot be bound
    await server.start()
    if spread is not None:
        await spread.listen(handed_infer(current, authorizer(config), gate, spread))
    log.info("Open Inference Protocol over gRPC on %s%s", where,
             " (calls go to the least busy worker)" if spread else "")
    return server


def start_in_background(config: ServiceConfig, current: Callable[[], Any], keep: set,
                        listening: Callable[[], None]) -> dict[str, Any]:
    """Start the server on the running loop; returns a holder whose "server" is set once it listens, when
    ``listening()`` is called (the worker's readiness waits for it; a server that cannot start stays not ready)."""
    holder: dict[str, Any] = {"gate": CallGate()}

    async def run() -> None:
        try:
            holder["spread"] = spread_for(config)
            holder["server"] = await serve(config, current, holder["gate"], holder["spread"])
            listening()
        except Exception:
            log.exception("the gRPC server could not start on %s", address(config.grpc_host, config.grpc_port))

    loop = asyncio.get_running_loop()
    task = loop.create_task(run())
    keep.add(task)
    task.add_done_callback(keep.discard)
    _stop_on_sigterm(holder, config.grace, loop)
    return holder


def _stop_on_sigterm(holder: dict[str, Any], grace: float, loop: asyncio.AbstractEventLoop) -> None:
    """On SIGTERM (the HTTP drain starts: ``imgcls.service.host.drain``), stop admitting gRPC calls and stop
    the server once the running ones answered (``grace`` seconds at most); then the previous handler runs."""
    previous = signal.getsignal(signal.SIGTERM)
    if not callable(previous):
        return

    def on_term(signum: int, frame: FrameType | None) -> None:
        loop.call_soon_threadsafe(stop, holder, grace)
        previous(signum, frame)

    signal.signal(signal.SIGTERM, on_term)


DRAIN_POLL_S = 0.01  # how often the drain looks whether the admitted calls have all answered
QUIET_S = 0.05  # ... and no call came for this long: a client's next call would meet the stop (CANCELLED)
QUIET_WAIT_MAX_S = 1.0  # clients that keep calling: stop anyway this long after the drain began


def stop(holder: dict[str, Any], grace: float) -> None:
    """Admit no more calls; stop the server once the running ones answered, or after ``grace`` seconds
    (scheduled on the loop when it still runs; ``holder["stopping"]`` is the task)."""
    holder["gate"].close()
    if "stopping" in holder:
        return
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        return
    holder["stopping"] = loop.create_task(_drain(holder, grace))


async def _drain(holder: dict[str, Any], grace: float) -> None:
    """Wait until the admitted calls answered and the clients stopped calling (each got UNAVAILABLE),
    then stop the server: gRPC answers CANCELLED to a call that reaches it while it stops."""
    loop, gate = asyncio.get_running_loop(), holder["gate"]
    began = loop.time()
    deadline = began + grace
    while loop.time() < deadline:
        quiet = time.monotonic() - gate.last_call >= QUIET_S or loop.time() - began >= QUIET_WAIT_MAX_S
        if gate.running == 0 and quiet:
            break
        await asyncio.sleep(DRAIN_POLL_S)
    server = holder.get("server")
    if server is not None:  # None: it never started listening
        await server.stop(max(0.0, deadline - loop.time()))
    if holder.get("spread") is not None:
        await holder["spread"].close()
    log.info("gRPC server stopped")


async def stopped(holder: dict[str, Any], grace: float) -> None:
    """Stop (if not yet) and wait until the running calls answered and the server stopped (``grace`` at most)."""
    stop(holder, grace)
    task = holder.get("stopping")
    if task is not None:
        await task
