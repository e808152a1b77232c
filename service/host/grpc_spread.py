"""Least-loaded ModelInfer across the workers: a worker hands its excess calls to a less busy worker's gRPC server.

Every worker's gRPC server listens on the public port (``SO_REUSEPORT``) and a gRPC connection stays on
the worker that accepted it. Clients make few connections: 16 ``tritonclient.grpc`` clients in one
process share ONE (gRPC channels with the same arguments share their connection), which left the other
workers idle; and 16 separate connections are spread by a hash of their addresses, as unevenly as 4/12,
so the crowded worker's clients waited twice as long as the others. HTTP connections are balanced at
accept (``imgcls.service.host.accept``); a gRPC connection cannot be, so the calls are.

Each worker's server also listens on a Unix socket of the server's state directory
(``grpc-<worker>.sock``) and publishes two averages over time (about a second, in windows of
``WINDOW_S``), each in its slot of a shared, memory-mapped board (``imgcls.service.host.worker_board``):
its clients' ModelInfer calls in flight (running here or handed on), which is how many clients it
serves at once, and the calls it runs (its own and those handed to it). A worker whose clients keep
more calls in flight than the live workers' mean hands on its excess share of the calls that arrive,
``(mine - mean) / mine``, evenly spread (one call in nine for 16 connections split 9/7; one in two
when all of them share one connection), each to the live worker that runs the fewest calls. A worker
at or below the mean hands none on, so calls are not traded between equally busy workers: each trade
costs the transport of the call once more, and its answer waits on two event loops instead of one.
Counts of the moment cannot tell equally busy workers apart (they jump as micro-batches end), and
rates of calls cannot tell crowded ones (a crowded worker's clients wait longer, so they call less
often: 9 clients at 70 ms send as many calls as 7 at 55 ms); an average in flight can.
The call goes as its bytes were received (ModelInfer's handler takes the
request unparsed: it is parsed only where it runs), marked ``imgcls-forwarded`` so it is not passed on
again, with its deadline and its ``authorization`` metadata (the receiving worker checks the key); its
answer, or its error status, comes back as is. gRPC's own threads move the bytes. A handed call that
fails without an answer of the other worker (that worker restarting or stopping: UNAVAILABLE,
CANCELLED) runs here instead: inference has no side effects. Metrics count each call once, where it
ran. A handed call is admitted by the worker it came to: the other runs it even while draining.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from pathlib import Path
from typing import Any, ContextManager, Iterator

import grpc

from imgcls.service.host.worker_board import WorkerBoard
from imgcls.service.protocols.oip_grpc.servicer import Forwarded

log = logging.getLogger(__name__)
CLIENTS_BOARD = "grpc-clients.board"
RUNS_BOARD = "grpc-runs.board"
FORWARDED = "imgcls-forwarded"
METHOD = "/inference.GRPCInferenceService/ModelInfer"
RUN_HERE_INSTEAD = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED, grpc.StatusCode.UNKNOWN,
                    grpc.StatusCode.INTERNAL}
PASSED_METADATA = ("authorization",)
WINDOW_S = 0.25  # calls in flight are averaged over windows this long ...
WEIGHT = 0.3  # ... and published smoothed: the newest window weighs this much (about a second in all)
MILLI = 1000  # an average is published in thousandths of a call (the board holds integers)


def socket_path(state_dir: str, index: int) -> str:
    return str(Path(state_dir) / f"grpc-{index}.sock")


def excess_share(mine: float, loads: list[float]) -> float:
    """The share of this worker's arriving calls to hand on: its excess over the mean of the live workers'
    client calls in flight (``loads``, this worker's ``mine`` among them); 0 when it has none."""
    mean = sum(loads) / len(loads) if loads else 0.0
    return (mine - mean) / mine if mine > mean else 0.0


class Average:
    """A count's average over time (calls in flight), taken over ``WINDOW_S`` windows and published on a
    board, smoothed over about a second."""

    def __init__(self, board: WorkerBoard) -> None:
        self.board, self.count, self.area, self.value = board, 0, 0.0, 0.0
        self.since = self.changed = time.monotonic()

    def add(self, delta: int, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        self.area += self.count * (now - self.changed)
        self.count, self.changed = self.count + delta, now

    def roll(self, now: float) -> None:
        """End the window when it is over: fold its average into the smoothed value and publish that."""
        if now - self.since < WINDOW_S:
            return
        self.add(0, now)
        self.value += WEIGHT * (self.area / (now - self.since) - self.value)
        self.area, self.since = 0.0, now
        self.board.publish(round(self.value * MILLI))

    @contextlib.contextmanager
    def counting(self) -> Iterator[None]:
        self.add(1)
        try:
            yield
        finally:
            self.add(-1)


class Spread:
    """This worker's side: averages its client calls in flight and the calls it runs, hands its excess on."""

    def __init__(self, state_dir: str, index: int, workers: int, max_message_bytes: int) -> None:
        self.state_dir, self.index, self.workers = state_dir, index, workers
        self.max_message_bytes = max_message_bytes
        self.clients = Average(WorkerBoard(Path(state_dir) / CLIENTS_BOARD, index))
        self.runs = Average(WorkerBoard(Path(state_dir) / RUNS_BOARD, index))
        self.credit = 0.0  # calls owed to other workers: a call is handed when it reaches 1
        self.channels: dict[int, Any] = {}
        self.closed = False

    @property
    def listen_address(self) -> str:
        return "unix:" + socket_path(self.state_dir, self.index)

    def tick(self, now: float | None = None) -> None:
        """Publish the averages of the windows that are over."""
        now = time.monotonic() if now is None else now
        self.clients.roll(now)
        self.runs.roll(now)

    async def publish(self) -> None:
        """Publish the averages every ``WINDOW_S`` until ``close()``."""
        while not self.closed:
            await asyncio.sleep(WINDOW_S)
            self.tick()

    def arriving(self, context: Any) -> ContextManager[None]:
        """Counts a call from a client while it is in flight here (running here or handed on)."""
        return contextlib.nullcontext() if self.handed(context) else self.clients.counting()

    async def hand(self, raw: bytes, context: Any) -> Forwarded | None:
        """The answer of the worker this call was handed to (its bytes as received), or None: it runs here."""
        if self.handed(context):  # a handed call stays
            return None
        target = self.target()
        return None if target is None else await self._forward(target, raw, context)

    def target(self) -> int | None:
        """The worker an arriving call goes to, or None (here): this worker's excess share, evenly spread."""
        clients = self.clients.board.live(self.workers)
        share = excess_share(clients.get(self.index, 0) / MILLI, [load / MILLI for load in clients.values()])
        self.credit = min(1.0, self.credit + share) if share else 0.0
        runs = self.runs.board.live(self.workers)
        others = sorted((load, index) for index, load in runs.items() if index != self.index and index in clients)
        if self.credit < 1.0 or not others:
            return None
        self.credit -= 1.0
        return others[0][1]

    def running_here(self, context: Any) -> ContextManager[None]:
        """Counts a call while it runs here (this worker's own or one handed to it)."""
        return self.runs.counting()

    async def _forward(self, index: int, raw: bytes, context: Any) -> Forwarded | None:
        call = self._channel(index).unary_unary(METHOD)  # bytes in, bytes out: neither side parses here
        metadata = context.invocation_metadata() or ()
        passed = [(key, value) for key, value in metadata if key in PASSED_METADATA] + [(FORWARDED, "1")]
        try:
            return Forwarded(await call(raw, timeout=context.time_remaining(), metadata=passed))
        except grpc.aio.AioRpcError as exc:
            if exc.code() in RUN_HERE_INSTEAD:
                log.debug("worker %d did not answer a handed call (%s): running it here", index, exc.code())
                return None
            return Forwarded(None, exc.code(), exc.details() or "")

    def _channel(self, index: int) -> Any:
        if index not in self.channels:
            self.channels[index] = grpc.aio.insecure_channel("unix:" + socket_path(self.state_dir, index), options=[
                ("grpc.max_send_message_length", self.max_message_bytes), ("grpc.max_receive_message_length", -1)])
        return self.channels[index]

    @staticmethod
    def handed(context: Any) -> bool:
        """A call another worker handed here (admitted there: it runs here even while this worker drains)."""
        return any(key == FORWARDED for key, _ in context.invocation_metadata() or ())

    async def close(self) -> None:
        self.closed = True
        for channel in self.channels.values():
            await channel.close()
        self.channels.clear()
