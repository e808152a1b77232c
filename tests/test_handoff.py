"""The worker-to-worker handoff of ModelInfer calls over a Unix socket (imgcls.service.host.handoff): a real
Receiver and Sender on a socket of tmp_path. The whole path through a served model is tests/test_grpc_spread.py."""
from __future__ import annotations

import asyncio
import struct
from pathlib import Path

import grpc
import pytest

from imgcls.service.host import handoff
from imgcls.service.protocols.oip_grpc import grpc_service_pb2 as pb


STOPPED: list[str] = []  # calls whose handler was cancelled (the receiver gave up on them)


async def answer(message: bytes, context: handoff.HandedContext) -> pb.ModelInferResponse:
    """A handler as ModelInfer's: the request's bytes in, a response out, errors through ``context.abort``."""
    request = pb.ModelInferRequest.FromString(message)
    metadata = dict(context.invocation_metadata())
    if request.model_name == "missing":
        await context.abort(grpc.StatusCode.NOT_FOUND, "unknown model 'missing'")
    if request.model_name == "broken":
        raise RuntimeError("a bug")
    if request.model_name == "slow":
        try:
            await asyncio.sleep(1.0)
        except asyncio.CancelledError:
            STOPPED.append(request.model_name)
            raise
    return pb.ModelInferResponse(model_name=request.model_name, id=metadata.get("authorization", "") + "|" +
                                 metadata[handoff.FORWARDED])


def infer(name: str) -> bytes:
    return pb.ModelInferRequest(model_name=name).SerializeToString()


def test_a_handed_call_gets_the_answer_or_the_status_of_the_worker_that_ran_it(tmp_path: Path) -> None:
    path = str(tmp_path / "grpc-1.sock")

    async def scenario() -> None:
        receiver = handoff.Receiver(path, answer, 1 << 20)
        await receiver.start()
        sender = handoff.Sender(path)
        try:
            code, raw = await sender.call(infer("m"), [("authorization", "Bearer k")], 5.0)
            response = pb.ModelInferResponse.FromString(raw)
            assert code == grpc.StatusCode.OK and response.model_name == "m" and response.id == "Bearer k|1"
            assert len(sender.idle) == 1, "the connection is kept for the next call"
            answers = await asyncio.gather(*(sender.call(infer(f"m{i}"), [], 5.0) for i in range(4)))
            names = [pb.ModelInferResponse.FromString(raw).model_name for _, raw in answers]
            assert names == [f"m{i}" for i in range(4)]
            assert len(sender.idle) == 4, "calls at once open connections of their own, kept afterwards"
            missing = await sender.call(infer("missing"), [], 5.0)
            assert missing == (grpc.StatusCode.NOT_FOUND, b"unknown model 'missing'")
            code, raw = await sender.call(infer("broken"), [], 5.0)
            assert code == grpc.StatusCode.INTERNAL and b"failed" in raw
            idle = len(sender.idle)
            with pytest.raises(asyncio.TimeoutError):
                await sender.call(infer("slow"), [], 0.1)
            assert len(sender.idle) == idle - 1, "the timed-out connection is closed, not kept"
            await asyncio.sleep(0.2)  # the receiver's own timer: started when the call came, a moment later
            assert STOPPED == ["slow"], "the receiver stops a call once its time is up, not after 1 s"
            code, raw = await sender.call(infer("after"), [], 5.0)  # a timed-out connection is never reused
            assert code == grpc.StatusCode.OK and pb.ModelInferResponse.FromString(raw).model_name == "after"
        finally:
            await sender.close()
            await receiver.close()

    asyncio.run(scenario())


def test_a_worker_that_is_not_there_raises_so_the_call_runs_where_it_arrived(tmp_path: Path) -> None:
    async def scenario() -> None:
        with pytest.raises(OSError):
            await handoff.Sender(str(tmp_path / "grpc-7.sock")).call(infer("m"), [], 1.0)

    asyncio.run(scenario())


def test_an_oversized_or_malformed_call_closes_the_connection_and_the_receiver_serves_on(tmp_path: Path) -> None:
    path = str(tmp_path / "grpc-1.sock")

    async def scenario() -> None:
        receiver = handoff.Receiver(path, answer, 1024)
        await receiver.start()
        try:
            for frames in (struct.pack(">I", 2) + b"{}" + struct.pack(">I", 1 << 30),  # message over the limit
                           struct.pack(">I", 2) + b"[]" + struct.pack(">I", 0),  # a header that is not an object
                           struct.pack(">I", 3) + b"{x}" + struct.pack(">I", 0),  # metadata that is not JSON
                           struct.pack(">I", 1 << 30)):  # metadata over its limit
                reader, writer = await asyncio.open_unix_connection(path)
                writer.write(frames)
                assert await asyncio.wait_for(reader.read(), 5.0) == b"", "closed without an answer"
                writer.close()
            code, _ = await handoff.Sender(path).call(infer("m"), [], 5.0)
            assert code == grpc.StatusCode.OK
        finally:
            await receiver.close()

    asyncio.run(scenario())
