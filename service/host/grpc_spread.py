"""Least-loaded ModelInfer across the workers: a worker hands a call to a less busy worker's gRPC server.

Every worker's gRPC server listens on the public port (``SO_REUSEPORT``) and a gRPC connection stays on
the worker that accepted it. Clients make few connections: 16 ``tritonclient.grpc`` clients in one
process share ONE (gRPC channels with the same arguments share their connection), which left the other
workers idle; and 16 separate connections are spread by a hash of their addresses, as unevenly as 4/12,
so the crowded worker's clients waited twice as long as the others. HTTP connections are balanced at
accept (``imgcls.service.host.accept``); a gRPC connection cannot be, so the calls are.

Each worker's server also listens on a Unix socket of the server's state directory
(``grpc-<worker>.sock``) and publishes how many ModelInfer calls it is running (its slot in the shared,
memory-mapped ``grpc-calls.board``: ``imgcls.service.host.worker_board``). A ModelInfer call arriving from
a client runs where it arrived unless another live worker runs at least two calls fewer and this worker
runs no call handed to it: then it goes to that worker's socket. A worker that receives calls hands none
on, so that two workers as busy as each other do not trade calls back and forth (each trade costs both
the transport of the call once more); a worker that must shed calls (its connections carry more clients)
keeps handing them while the other runs fewer. The call goes as its bytes were received (ModelInfer's
handler takes the request unparsed: it is parsed only where it runs), marked ``imgcls-forwarded`` so
it is not passed on again, with its deadline and its ``authorization`` metadata (the receiving worker
checks the key); its answer, or its error status, comes back as is. gRPC's own threads move the bytes.
A handed call that fails without an answer of the other worker (that worker restarting or stopping:
UNAVAILABLE, CANCELLED) runs here instead: inference has no side effects. Metrics count each call
once, where it ran. A handed call is admitted by the worker it came to: the other runs it even while
draining.
"""
from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import Any, Iterator

import grpc

from imgcls.service.host.worker_board import WorkerBoard
from imgcls.service.protocols.oip_grpc.servicer import Forwarded

log = logging.getLogger(__name__)
BOARD_NAME = "grpc-calls.board"
FORWARDED = "imgcls-forwarded"
METHOD = "/inference.GRPCInferenceService/ModelInfer"
RUN_HERE_INSTEAD = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED, grpc.StatusCode.UNKNOWN,
                    grpc.StatusCode.INTERNAL}
PASSED_METADATA = ("authorization",)


def socket_path(state_dir: str, index: int) -> str:
    return str(Path(state_dir) / f"grpc-{index}.sock")


class Spread:
    """This worker's side: counts the calls it runs, hands calls to a less busy worker."""

    def __init__(self, state_dir: str, index: int, workers: int, max_message_bytes: int) -> None:
        self.state_dir, self.workers, self.max_message_bytes = state_dir, workers, max_message_bytes
        self.board = WorkerBoard(Path(state_dir) / BOARD_NAME, index)
        self.running = self.handed_in = 0
        self.channels: dict[int, Any] = {}

    @property
    def listen_address(self) -> str:
        return "unix:" + socket_path(self.state_dir, self.board.index)

    async def hand(self, raw: bytes, context: Any) -> Forwarded | None:
        """The answer of the worker this call was handed to (its bytes as received), or None: it runs here."""
        if self.handed_in or self.handed(context):  # a handed call stays; a worker that receives hands none on
            return None
        target = self.board.least_elsewhere(self.workers)
        if target is None or target[1] + 1 >= self.running:  # one call fewer there would only swap the roles
            return None
        return await self._forward(target[0], raw, context)

    @contextlib.contextmanager
    def running_here(self, context: Any) -> Iterator[None]:
        """Counts a call while it runs here (published on the board), and apart those another worker handed."""
        handed = self.handed(context)
        self.running += 1
        self.handed_in += handed
        self.board.publish(self.running)
        try:
            yield
        finally:
            self.running -= 1
            self.handed_in -= handed
            self.board.publish(self.running)

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
        for channel in self.channels.values():
            await channel.close()
        self.channels.clear()
