"""Worker-to-worker handoff of ModelInfer calls: their bytes over a Unix socket, on the event loops alone.

``imgcls.service.host.grpc_spread`` hands a call that arrived on a busy worker to a less busy one. A gRPC
call between the two (what this replaced) crossed four threads each way under a loaded CPU: the sender's
gRPC core, the receiver's core, its completion-queue poller, its event loop (and back the same way).
Measured on 2 cores under 16 clients, from the sender's start to the receiver's handler: 5 ms at the
median, 28 ms at p90, 80 ms at p99. Here the sender's event loop writes the call to the receiver's Unix
socket and the receiver's event loop reads it: no other thread takes part.

One exchange at a time per connection (a connection is reused once its answer came; a sender opens more
for calls at once). The call: header length (4 bytes, big-endian), the header as JSON (``metadata``: a list
of ``[key, value]``, the call's ``authorization``; ``timeout``: the seconds left to the call's deadline, or
null), the message length, the message (ModelInfer's request as the client sent it). The sender gives up
when the time is up (the client gets DEADLINE_EXCEEDED there); the receiver stops the handler then too
(cancelled: a request still waiting for inference is dropped from the batch queue), so a call nobody
waits for any longer costs no more of its CPU. The answer: a status byte (0 = OK, else the gRPC status
code's value), its length, and its bytes (the serialised response, or the error's details in UTF-8). The
receiver runs the call through the same handler as a gRPC call that reached it (``context`` here:
``HandedContext``), as a handed call (admitted while draining, never handed on); lengths are bounded
(``--max-body-bytes``).
"""
from __future__ import annotations

import asyncio
import json
import logging
import struct
from typing import Any, Awaitable, Callable

import grpc

log = logging.getLogger(__name__)
LENGTH = struct.Struct(">I")
STATUS = struct.Struct(">B")
MAX_METADATA_BYTES = 64 * 1024
FORWARDED = "imgcls-forwarded"
CODES = {code.value[0]: code for code in grpc.StatusCode}
Handler = Callable[[bytes, Any], Awaitable[Any]]


class Aborted(Exception):
    """A handed call's handler ended it with a status (``context.abort``)."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self.code, self.details = code, details


class HandedContext:
    """What a gRPC handler reads of its context, for a call another worker handed over."""

    def __init__(self, metadata: list[tuple[str, str]]) -> None:
        self.metadata = tuple(metadata) + ((FORWARDED, "1"),)

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return self.metadata

    def time_remaining(self) -> None:
        return None  # the sender keeps the deadline (the receiver stops the handler when it passes)

    async def abort(self, code: grpc.StatusCode, details: str = "") -> None:
        raise Aborted(code, details)


async def _read_frame(reader: asyncio.StreamReader, limit: int) -> bytes:
    (length,) = LENGTH.unpack(await reader.readexactly(LENGTH.size))
    if length > limit:
        raise ValueError(f"a frame of {length} bytes (at most {limit})")
    return await reader.readexactly(length)


class Receiver:
    """This worker's end: answers the calls the other workers hand over, on a Unix socket."""

    def __init__(self, path: str, handler: Handler, max_message_bytes: int) -> None:
        self.path, self.handler, self.max_message_bytes = path, handler, max_message_bytes
        self.server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        self.server = await asyncio.start_unix_server(self._serve, path=self.path)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                header = json.loads(await _read_frame(reader, MAX_METADATA_BYTES))
                message = await _read_frame(reader, self.max_message_bytes)
                metadata = [(str(key), str(value)) for key, value in header["metadata"]]
                timeout = header.get("timeout")
                status, answer = await self._run(message, metadata, None if timeout is None else float(timeout))
                writer.write(STATUS.pack(status) + LENGTH.pack(len(answer)) + answer)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass  # the sender closed its end
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            log.warning("a worker handed a malformed call (%s): connection closed", exc)
        finally:
            writer.close()

    async def _run(self, message: bytes, metadata: list[tuple[str, str]], timeout: float | None) -> tuple[int, bytes]:
        try:
            response = await asyncio.wait_for(self.handler(message, HandedContext(metadata)), timeout)
            return 0, response.SerializeToString()
        except asyncio.TimeoutError:  # the sender has given up already: stop spending CPU on the call
            return grpc.StatusCode.DEADLINE_EXCEEDED.value[0], b"Deadline Exceeded"
        except Aborted as exc:
            return exc.code.value[0], exc.details.encode()
        except Exception:  # noqa: BLE001 - the sender runs the call itself on INTERNAL
            log.exception("a handed call failed")
            return grpc.StatusCode.INTERNAL.value[0], b"the worker the call was handed to failed"

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            self.server = None


class Sender:
    """The other end: hands calls to a worker's ``Receiver``, over connections kept for the next call."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []

    async def call(self, message: bytes, metadata: list[tuple[str, str]],
                   timeout: float | None) -> tuple[grpc.StatusCode, bytes]:
        """The other worker's status and answer. Raises OSError (and its ConnectionError) or
        asyncio.IncompleteReadError when it is not there or went away, TimeoutError after ``timeout``."""
        reader, writer = self.idle.pop() if self.idle else await asyncio.open_unix_connection(self.path)
        try:
            header = json.dumps({"metadata": metadata, "timeout": timeout}).encode()
            writer.write(LENGTH.pack(len(header)) + header + LENGTH.pack(len(message)) + message)
            status, answer = await asyncio.wait_for(self._answer(reader, writer), timeout)
        except BaseException:
            writer.close()  # its state is unknown: never reused
            raise
        self.idle.append((reader, writer))
        return CODES.get(status, grpc.StatusCode.UNKNOWN), answer

    @staticmethod
    async def _answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> tuple[int, bytes]:
        await writer.drain()
        (status,) = STATUS.unpack(await reader.readexactly(STATUS.size))
        (length,) = LENGTH.unpack(await reader.readexactly(LENGTH.size))
        return status, await reader.readexactly(length)

    async def close(self) -> None:
        for _, writer in self.idle:
            writer.close()
        self.idle.clear()
