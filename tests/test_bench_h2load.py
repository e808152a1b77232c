"""The h2load load client of the benchmarks: its gRPC framing, its log and the server-side check of gRPC answers."""
from __future__ import annotations

import http.server
import threading
from pathlib import Path

from benchmarks import h2load
from benchmarks.loadgen import LoadResult
from imgcls.service.protocols.oip_grpc import grpc_service_pb2 as pb


def test_a_grpc_frame_is_the_flag_the_big_endian_length_and_the_message() -> None:
    message = pb.ModelInferRequest(model_name="m").SerializeToString()
    frame = h2load.grpc_frame(message)
    assert frame[0] == 0 and int.from_bytes(frame[1:5], "big") == len(message) and frame[5:] == message
    assert pb.ModelInferRequest.FromString(frame[5:]).model_name == "m"


def test_the_log_gives_latencies_and_statuses_and_counts_unanswered_requests(tmp_path: Path) -> None:
    log = tmp_path / "log"
    log.write_text("1000\t200\t52000\n2000\t503\t1000\n3000\t-1\t0\n")
    result = LoadResult(1, 1.0)
    h2load._read_log(log, result)
    assert result.statuses == {200: 1, 503: 1} and result.errors == 1
    assert result.latencies_s == [0.052, 0.001]


class Metrics(http.server.BaseHTTPRequestHandler):
    counts = [10.0, 15.0]

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        value = self.counts.pop(0)
        name = "imgcls_oip_requests_total"
        body = (f'{name}{{model="m",outcome="ok",reason="none",route="grpc:ModelInfer"}} {value}\n'
                f'{name}{{model="m",outcome="rejected",reason="bad",route="grpc:ModelInfer"}} 99.0\n'
                f'{name}{{model="m",outcome="ok",reason="none",route="/v2/models/{{name}}/infer"}} 7.0\n')
        self.send_response(200)
        self.end_headers()
        self.wfile.write(body.encode())

    def log_message(self, *args) -> None:
        pass


def test_grpc_answers_count_only_what_the_server_counted_as_answered() -> None:
    """h2load sees HTTP 200 for a gRPC error (its status is a trailer): 7 seen, 5 answered by the server."""
    server = http.server.HTTPServer(("127.0.0.1", 0), Metrics)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_port}/metrics"
        result = h2load.grpc_checked(lambda: LoadResult(1, 1.0, [0.01] * 7, {200: 7}), url, "grpc:ModelInfer")
    finally:
        server.shutdown()
    assert result.statuses == {200: 5, 500: 2}
