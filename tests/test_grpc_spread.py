"""ModelInfer calls run on the least busy worker, whatever connection they came on (a real `imgcls serve
--grpc-port` with two workers, real tritonclient.grpc clients).

16 tritonclient.grpc clients in one process share one TCP connection (gRPC channels with the same
arguments share it), which one worker accepted: without handing calls over, the other worker idles."""
from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest
import tritonclient.grpc as triton
from tritonclient.utils import InferenceServerException

from benchmarks.peer_servers import cpu_seconds
from imgcls.service.host import grpc_spread
from imgcls.service.host.launcher import LOOPBACK, free_port, start_server
from imgcls.service.host.worker_board import WorkerBoard
from imgcls.service.protocols.oip_grpc.servicer import Forwarded
from tests.conftest import encode, make_image
from tests.factories import make_tiny_bundle

pytestmark = pytest.mark.slow  # a bundle export and a server start

IMAGES = [encode(make_image(320, 240, seed=seed)) for seed in range(4)]


def infer_input(image: bytes, datatype: str = "BYTES") -> triton.InferInput:
    tensor = triton.InferInput("image", [1], datatype)
    tensor.set_data_from_numpy(np.array([image], dtype=object) if datatype == "BYTES" else np.zeros(1, np.uint8))
    return tensor


def worker_cpu(server) -> dict[int, float]:
    """CPU seconds of each worker process (the tree's processes but the supervisor and the arbiter)."""
    spent = cpu_seconds(server.process.pid)
    workers = {pid: used for pid, used in spent.items()
               if "_bentoml_impl.worker" in open(f"/proc/{pid}/cmdline", "rb").read().decode(errors="replace")}
    return workers


def test_calls_on_one_connection_run_on_both_workers(tmp_path):
    bundle = make_tiny_bundle(tmp_path / "bundle")
    port = free_port()
    server = start_server(bundle, tmp_path / "serve.log", args=["--grpc-port", str(port), "--workers", "2"])
    try:
        clients = [triton.InferenceServerClient(f"{LOOPBACK}:{port}") for _ in range(16)]  # one connection
        expected = [clients[0].infer(bundle.name, [infer_input(image)]).as_numpy("probabilities") for image in IMAGES]
        answers: list[tuple[int, np.ndarray]] = []
        errors: list[str] = []
        before = worker_cpu(server)
        assert len(before) == 2, before

        def loop(index: int) -> None:
            deadline = time.monotonic() + 4.0
            while time.monotonic() < deadline:
                try:
                    if index % 8 == 7:  # a bad request among the good ones: refused the same wherever it runs
                        clients[index].infer(bundle.name, [infer_input(b"", "UINT8")])
                        errors.append("answered")
                    else:
                        image = index % len(IMAGES)
                        answers.append((image, clients[index].infer(bundle.name, [infer_input(IMAGES[image])])
                                        .as_numpy("probabilities")))
                except InferenceServerException as exc:
                    errors.append(f"{exc.status()} {exc.message()[:60]}")

        threads = [threading.Thread(target=loop, args=(i,)) for i in range(16)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        after = worker_cpu(server)
    finally:
        assert server.stop() == 0
    used = sorted(after[pid] - before.get(pid, 0.0) for pid in after)
    assert used[0] >= 0.1 * sum(used), used  # the worker without the connection ran calls (without: 0.01 of 4.8 CPU s)
    assert len(answers) > 50 and all(np.allclose(probabilities, expected[image], atol=1e-6)
                                     for image, probabilities in answers)
    assert errors and {error.split(" ", 1)[0] for error in errors} == {"StatusCode.INVALID_ARGUMENT"}, errors[:5]
    assert len({error for error in errors}) == 1, set(errors)  # one message, handed over or not


class Context:
    def __init__(self, *metadata: tuple[str, str]) -> None:
        self.metadata = metadata

    def invocation_metadata(self) -> tuple:
        return self.metadata

    def time_remaining(self) -> float:
        return 5.0


def test_a_worker_hands_on_its_excess_share_of_calls_in_flight():
    assert grpc_spread.excess_share(9, [9, 7]) == pytest.approx(1 / 9)  # 16 connections hashed 9/7
    assert grpc_spread.excess_share(16, [16, 0]) == pytest.approx(0.5)  # one shared connection
    assert grpc_spread.excess_share(7, [9, 7]) == 0 and grpc_spread.excess_share(8, [8, 8]) == 0
    assert grpc_spread.excess_share(12, [12, 6, 0]) == pytest.approx(0.5)
    assert grpc_spread.excess_share(0, [0, 0]) == 0


def test_calls_in_flight_are_averaged_over_time(tmp_path):
    average = grpc_spread.Average(WorkerBoard(tmp_path / "board", 0))
    average.since = average.changed = 0.0
    average.add(1, 0.0)
    average.add(1, 0.1)
    average.add(-2, 0.2)
    average.roll(0.2)  # the window is not over: nothing published
    assert average.board.published() == 0
    average.roll(0.25)  # 1 call for 0.1 s, 2 for 0.1 s, none for 0.05 s: 1.2 on average, weighed in
    assert average.value == pytest.approx(grpc_spread.WEIGHT * 1.2)
    assert average.board.published() == round(grpc_spread.WEIGHT * 1.2 * grpc_spread.MILLI)


def handing(tmp_path, clients: list[float], runs: list[float], calls: int, context=None) -> list[int]:
    """The workers that ``calls`` calls arriving at worker 0 go to (none: it runs them), given each worker's
    average client calls in flight and calls running."""
    tmp_path.mkdir()
    spread = grpc_spread.Spread(str(tmp_path), 0, len(clients), 1 << 20)
    boards = [(WorkerBoard(tmp_path / grpc_spread.CLIENTS_BOARD, i), WorkerBoard(tmp_path / grpc_spread.RUNS_BOARD, i))
              for i in range(1, len(clients))]
    for (load, run), (client_board, run_board) in zip(zip(clients[1:], runs[1:]), boards):
        client_board.publish(round(load * grpc_spread.MILLI))
        run_board.publish(round(run * grpc_spread.MILLI))
    spread.clients.board.publish(round(clients[0] * grpc_spread.MILLI))
    handed: list[int] = []

    async def forward(index, raw, context):  # the transport is tested on a real server above
        handed.append(index)
        return Forwarded(raw)

    spread._forward = forward

    async def arrive() -> None:
        for _ in range(calls):
            assert await spread.hand(b"x", context or Context()) in (None, Forwarded(b"x"))
        await spread.close()

    asyncio.run(arrive())
    return handed


def test_a_crowded_worker_hands_its_excess_evenly_to_the_least_busy(tmp_path):
    assert len(handing(tmp_path / "a", [9, 7], [9, 7], 90)) in (9, 10, 11), "one call in nine"
    assert len(handing(tmp_path / "b", [16, 0], [16, 0], 100)) in (49, 50, 51), "one call in two"
    assert set(handing(tmp_path / "c", [12, 6, 0], [12, 6, 3], 20)) == {2}, "to the worker that runs the fewest"


def test_workers_as_busy_as_each_other_trade_no_calls(tmp_path):
    """Each trade would cost a transport and a second event loop; a handed call is never passed on."""
    assert handing(tmp_path / "a", [8, 8], [8, 8], 100) == []
    assert handing(tmp_path / "b", [7, 9], [7, 9], 100) == [], "below the mean: it hands none on"
    assert handing(tmp_path / "c", [16, 0], [16, 0], 100, Context((grpc_spread.FORWARDED, "1"))) == []
