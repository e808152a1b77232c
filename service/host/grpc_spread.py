"""Least-loaded ModelInfer across the workers: a worker hands a call to a less busy worker.

Every worker's gRPC server listens on the public port (``SO_REUSEPORT``) and a gRPC connection stays on
the worker that accepted it. Clients make few connections: 16 ``tritonclient.grpc`` clients in one
process share ONE (gRPC channels with the same arguments share their connection), which left the other
workers idle; and 16 separate connections are spread by a hash of their addresses, as unevenly as 4/12,
so the crowded worker's clients waited twice as long as the others. HTTP connections are balanced at
accept (``imgcls.service.host.accept``); a gRPC connection cannot be, so the calls are.

Each worker answers the calls handed to it on a Unix socket of the server's state directory
(``grpc-<worker>.sock``: ``imgcls.service.host.handoff``, event loop to event loop) and publishes how
many ModelInfer calls it is running (its slot in the shared, memory-mapped ``grpc-calls.board``:
``imgcls.service.host.worker_board``). A ModelInfer call arriving from a client runs where it
arrived unless another live worker runs at least two calls fewer and this worker runs no call handed
to it: then it goes to that worker's socket. A worker that receives calls hands none
on, so that two workers as busy as each other do not trade calls back and forth (each trade costs both
the transport of the call once more); a worker that must shed calls (its connections carry more clients)
keeps handing them while the other runs fewer. The call goes as its bytes were received (ModelInfer's
handler takes the request unparsed: it is parsed only where it runs), marked as handed so it is not
passed on again, with its ``authorization`` metadata (the receiving worker checks the key; this worker
keeps the deadline); its answer, or its error status, comes back as is. A handed call that fails
without an answer of the other worker (that worker restarting or stopping: no socket, a closed
connection, UNAVAILABLE) runs here instead: inference has no side effects. Metrics count each call
once, where it ran. A handed call is admitted by the worker it came to: the other runs it even while
draining.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path
from typing import Any, Iterator

import grpc

from imgcls.service.host.handoff import FORWARDED, Receiver, Sender
from imgcls.service.host.worker_board import WorkerBoard
from imgcls.service.protocols.oip_grpc.servicer import Forwarded

log = logging.getLogger(__name__)
BOARD_NAME = "grpc-calls.board"
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
        self.senders: dict[int, Sender] = {}
        self.receiver: Receiver | None = None

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

    async def listen(self, handler: Any) -> None:
        """Answer the calls the other workers hand over (``handler``: ModelInfer's, as for a gRPC call)."""
        self.receiver = Receiver(socket_path(self.state_dir, self.board.index), handler, self.max_message_bytes)
        await self.receiver.start()

    async def _forward(self, index: int, raw: bytes, context: Any) -> Forwarded | None:
        metadata = context.invocation_metadata() or ()
        passed = [(key, value) for key, value in metadata if key in PASSED_METADATA and isinstance(value, str)]
        if index not in self.senders:
            self.senders[index] = Sender(socket_path(self.state_dir, index))
        sender = self.senders[index]
        try:
            code, answer = await sender.call(raw, passed, context.time_remaining())
        except (OSError, asyncio.IncompleteReadError) as exc:
            log.debug("worker %d did not answer a handed call (%s): running it here", index, exc)
            return None
        except asyncio.TimeoutError:
            return Forwarded(None, grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded")
        if code == grpc.StatusCode.OK:
            return Forwarded(answer)
        if code in RUN_HERE_INSTEAD:
            log.debug("worker %d did not answer a handed call (%s): running it here", index, code)
            return None
        return Forwarded(None, code, answer.decode(errors="replace"))

    @staticmethod
    def handed(context: Any) -> bool:
        """A call another worker handed here (admitted there: it runs here even while this worker drains)."""
        return any(key == FORWARDED for key, _ in context.invocation_metadata() or ())

    async def close(self) -> None:
        if self.receiver is not None:
            await self.receiver.close()
        for sender in self.senders.values():
            await sender.close()
        self.senders.clear()
