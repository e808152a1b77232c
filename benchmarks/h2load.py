"""One load client in C for both transports: nghttp2's ``h2load``, one process per client.

The Python clients of ``benchmarks.loadgen`` (HTTP/1.1) and ``grpc.aio`` do not cost the same: on a
2-core machine where client and server share the cores, grpc.aio spent about twice the CPU per call
of the HTTP client, and that CPU came out of the server's. ``h2load`` speaks HTTP/1.1 (``--h1``) and
HTTP/2, where a gRPC call is a POST of the length-prefixed message with ``content-type:
application/grpc`` and ``te: trailers``: the same program drives ``/v2`` over HTTP and ModelInfer over
gRPC, at a fraction of a Python client's CPU. Each client is its own ``h2load -c1 -m1`` process with its
own body (client i sends JPEG i, as the Python clients do), on its own connection, for whole seconds.
Latencies come from each process's ``--log-file``. h2load sees HTTP statuses only, not gRPC's status
trailer: the gRPC forms count as answered (200) only the calls the server counted as answered
(``imgcls_oip_requests{route="grpc:ModelInfer",outcome="ok"}``, all workers), and any difference as 500.

``ensure_installed()`` installs Debian's ``nghttp2-client`` when ``h2load`` is missing (as root).
"""
from __future__ import annotations

import logging
import os
import shutil
import subprocess
import tempfile
import urllib.request
from pathlib import Path
from typing import Callable

from benchmarks.loadgen import LoadResult, check_loopback

log = logging.getLogger("bench.h2load")
PACKAGE = "nghttp2-client"
GRPC_HEADERS = ("content-type: application/grpc", "te: trailers")


def ensure_installed() -> str:
    """The path of ``h2load``, installing Debian's nghttp2-client first when it is missing."""
    found = shutil.which("h2load")
    if found:
        return found
    if os.geteuid() != 0:
        raise RuntimeError(f"h2load is missing: install it with `sudo apt-get install -y {PACKAGE}`")
    log.info("installing %s (h2load)", PACKAGE)
    subprocess.run(["apt-get", "install", "-y", "--no-install-recommends", PACKAGE], check=True,
                   stdout=subprocess.DEVNULL, env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
    found = shutil.which("h2load")
    if not found:
        raise RuntimeError(f"{PACKAGE} is installed but h2load is not on PATH")
    return found


def grpc_frame(message: bytes) -> bytes:
    """A gRPC message as it goes on the wire: uncompressed flag, 4-byte big-endian length, the bytes."""
    return b"\0" + len(message).to_bytes(4, "big") + message


def drive(url: str, bodies: list[bytes], headers: list[list[str]], concurrency: int, seconds: float,
          http1: bool) -> LoadResult:
    """``concurrency`` h2load clients for ``seconds`` (whole seconds, at least 1): client i POSTs body i (mod
    the set) to ``url`` with ``headers[i]``; HTTP/1.1 keep-alive with ``http1``, else HTTP/2 (h2c)."""
    check_loopback(url.split("//", 1)[1].rsplit(":", 1)[0].strip("[]"))
    whole, program = max(1, round(seconds)), ensure_installed()
    with tempfile.TemporaryDirectory(prefix="imgcls-h2load-") as scratch:
        work = Path(scratch)
        processes = []
        for index in range(concurrency):
            body = work / f"body-{index}"
            body.write_bytes(bodies[index % len(bodies)])
            command = [program, *(["--h1"] if http1 else []), "-c1", "-m1", "-D", str(whole),
                       "-d", str(body), "--log-file", str(work / f"log-{index}")]
            for header in headers[index % len(headers)]:
                command += ["-H", header]
            processes.append(subprocess.Popen([*command, url], stdout=subprocess.PIPE, stderr=subprocess.STDOUT))
        outputs = [process.communicate()[0].decode(errors="replace") for process in processes]
        result = LoadResult(concurrency, float(whole))
        for index, process in enumerate(processes):
            if process.returncode != 0:
                raise RuntimeError(f"h2load exited with {process.returncode}:\n{outputs[index][-2000:]}")
            _read_log(work / f"log-{index}", result)
    return result


def _read_log(path: Path, result: LoadResult) -> None:
    """h2load's log: a line per answer, ``start_us <TAB> status <TAB> duration_us``; -1: no answer."""
    if not path.exists():
        return
    for line in path.read_text().splitlines():
        fields = line.split("\t")
        status = int(fields[1])
        if status < 0:
            result.errors += 1  # the connection failed before an answer
            continue
        result.latencies_s.append(int(fields[2]) / 1e6)
        result.statuses[status] = result.statuses.get(status, 0) + 1


def ok_calls(metrics_url: str, route: str) -> float:
    """The calls of ``route`` the server answered (its Prometheus counter, summed over models and workers)."""
    with urllib.request.urlopen(metrics_url, timeout=10) as response:  # noqa: S310 - loopback, checked by callers
        text = response.read().decode()
    total = 0.0
    for line in text.splitlines():
        if line.startswith("imgcls_oip_requests_total{") and f'route="{route}"' in line and 'outcome="ok"' in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


def grpc_checked(run: Callable[[], LoadResult], metrics_url: str, route: str) -> LoadResult:
    """``run()`` with its 200s replaced by the server's own count of answered calls (gRPC's status is a
    trailer h2load does not read): calls h2load saw answered that the server did not count are 500s."""
    before = ok_calls(metrics_url, route)
    result = run()
    answered = int(round(ok_calls(metrics_url, route) - before))
    seen = result.statuses.pop(200, 0)
    result.statuses[200] = min(seen, answered)
    if seen > answered:
        result.statuses[500] = result.statuses.get(500, 0) + seen - answered
    return result
