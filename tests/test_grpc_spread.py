"""ModelInfer calls run on the least busy worker, whatever connection they came on (a real `imgcls serve
--grpc-port` with two workers, real tritonclient.grpc clients).

16 tritonclient.grpc clients in one process share one TCP connection (gRPC channels with the same
arguments share it), which one worker accepted: without handing calls over, the other worker idles."""
from __future__ import annotations

import asyncio
import os
import threading
import time

import httpx
import numpy as np
import pytest
import tritonclient.grpc as triton
from tritonclient.utils import InferenceServerException

from benchmarks.peer_servers import cpu_seconds
from imgcls.service.host import grpc_spread
from imgcls.service.host.launcher import LOOPBACK, free_port, start_server
from imgcls.service.host.worker_board import WorkerBoard
from imgcls.service.priority import io_cpu
from imgcls.service.protocols.oip_grpc.servicer import Forwarded
from imgcls.service.runtime import cgroup_cpu_limit
from tests.conftest import encode, make_image, metric_values, thread_placement
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


def assert_request_threads_have_a_cpu_each(workers: list[int]) -> None:
    """Each worker's event loop and gRPC threads run on one CPU of their own (when ``io_cpu`` gives one on this
    machine), its computing threads (raised nice value) on every CPU."""
    everywhere = os.sched_getaffinity(0)
    tied = []
    for pid in workers:
        threads = thread_placement(pid)
        loop_cpus = threads[pid][2]  # the main thread runs the event loop
        grpc_cpus = {frozenset(cpus) for name, _, cpus in threads.values() if name == "event_engine"}
        computing = [cpus for _, nice, cpus in threads.values() if nice > 0]
        assert grpc_cpus == {frozenset(loop_cpus)}, threads  # started by the loop thread: tied with it
        assert len(computing) >= 2 and all(cpus == everywhere for cpus in computing), threads  # inference, decode
        tied.append(loop_cpus)
    if io_cpu(1, 2, cgroup_cpu_limit()) is None:  # one CPU, or a quota below the CPUs visible: nothing tied
        assert all(cpus == everywhere for cpus in tied), tied
    else:
        assert all(len(cpus) == 1 for cpus in tied) and tied[0] != tied[1], tied


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
        metrics = httpx.get(server.url + "/metrics", timeout=10, trust_env=False).text
        assert_request_threads_have_a_cpu_each(list(after))
    finally:
        assert server.stop() == 0
    used = sorted(after[pid] - before.get(pid, 0.0) for pid in after)
    assert used[0] >= 0.1 * sum(used), used  # the worker without the connection ran calls (without: 0.01 of 4.8 CPU s)
    assert len(answers) > 50 and all(np.allclose(probabilities, expected[image], atol=1e-6)
                                     for image, probabilities in answers)
    assert errors and {error.split(" ", 1)[0] for error in errors} == {"StatusCode.INVALID_ARGUMENT"}, errors[:5]
    assert len({error for error in errors}) == 1, set(errors)  # one message, handed over or not
    timed = metric_values(metrics).get('imgcls_grpc_request_duration_seconds_count{method="ModelInfer"}')
    assert timed == len(expected) + len(answers) + len(errors)  # once each, handed or not


class Context:
    def __init__(self, *metadata: tuple[str, str]) -> None:
        self.metadata = metadata

    def invocation_metadata(self) -> tuple:
        return self.metadata

    def time_remaining(self) -> float:
        return 5.0


def test_a_call_is_handed_only_to_a_worker_two_calls_less_busy_and_never_back(tmp_path):
    """Two workers as busy as each other would trade calls back and forth, each trade costing both a transport."""
    spread = grpc_spread.Spread(str(tmp_path), 0, 2, 1 << 20)
    other = WorkerBoard(tmp_path / grpc_spread.BOARD_NAME, 1)
    handed: list[int] = []

    async def forward(index, raw, context):
        handed.append(index)
        return Forwarded(raw)

    spread._forward = forward
    spread.running = 3
    other.publish(2)
    assert asyncio.run(spread.hand(b"x", Context())) is None and not handed, "one call fewer: it stays"
    other.publish(1)
    assert asyncio.run(spread.hand(b"x", Context())) == Forwarded(b"x") and handed == [1]
    assert asyncio.run(spread.hand(b"x", Context((grpc_spread.FORWARDED, "1")))) is None, "a handed call stays"
    with spread.running_here(Context((grpc_spread.FORWARDED, "1"))):  # this worker runs a call handed to it
        assert spread.running == 4 and spread.handed_in == 1
        assert asyncio.run(spread.hand(b"x", Context())) is None and handed == [1], "a receiver hands none on"
    assert spread.running == 3 and spread.handed_in == 0
    asyncio.run(spread.close())
