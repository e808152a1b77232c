"""Start, check and stop one peer server (Triton via PyTriton, LitServe, mosec) on loopback.

Each peer runs ``benchmarks.peer_apps.<app>`` in its own venv (``benchmarks.peer_env``) with its
settings as JSON in ``PEER_SETTINGS``; it is ready when a real classification request answers 200
(start-to-ready = process start to that answer). Requests are built here, once per JPEG, in the
form each server's docs recommend: Triton the Open Inference Protocol with the JPEG as a BYTES
element in the binary tensor extension (the request tritonclient sends), mosec the raw body,
LitServe base64 in JSON (its examples; its multipart uploads do not pickle across its worker
queue); imgcls ``/classify`` the raw ``image/jpeg`` body and ``/v2`` the same OIP request as Triton.
Peak memory is the sum of the high-water RSS of the server's process tree.
"""
from __future__ import annotations

import base64
import json
import logging
import os
import struct
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

from benchmarks.http_vs_peer import free_port_block
from benchmarks.loadgen import Request
from benchmarks.peer_apps.settings import PeerSettings
from benchmarks.peer_env import PeerEnv
from benchmarks.report import REPO_ROOT, stop_group

log = logging.getLogger("bench.peer_servers")
HOST = "127.0.0.1"
HEADER_LENGTH = "Inference-Header-Content-Length"
OIP_MODEL = "bundle"  # the speed bundle's folder name: imgcls's default /v2 model name, given to Triton too


def oip_request(path: str, jpeg: bytes, shape: tuple[int, ...], binary_output: bool = True) -> Request:
    """POST ``path`` with one JPEG as an OIP BYTES element in the binary tensor data extension."""
    raw = struct.pack("<I", len(jpeg)) + jpeg
    header = json.dumps({"inputs": [{"name": "image", "datatype": "BYTES", "shape": list(shape),
                                     "parameters": {"binary_data_size": len(raw)}}],
                         "parameters": {"binary_data_output": binary_output}}).encode()
    return Request("POST", path, header + raw, "application/octet-stream", ((HEADER_LENGTH, str(len(header))),))


def raw_request(path: str, jpeg: bytes) -> Request:
    return Request("POST", path, jpeg, "image/jpeg")


def base64_json_request(path: str, jpeg: bytes) -> Request:
    return Request("POST", path, json.dumps({"image": base64.b64encode(jpeg).decode()}).encode(), "application/json")


@dataclass(frozen=True)
class PeerDef:
    name: str
    app: str  # benchmarks.peer_apps.<app>
    build: Callable[[bytes, PeerSettings], Request]  # one JPEG -> the request this peer is driven with
    ports: int = 1  # consecutive loopback ports it needs


def triton_request(jpeg: bytes, settings: PeerSettings, binary_output: bool = True) -> Request:
    shape = (1, 1) if settings.batching else (1,)  # batching adds Triton's batch dimension
    return oip_request(f"/v2/models/{OIP_MODEL}/infer", jpeg, shape, binary_output)


PEERS: dict[str, PeerDef] = {
    "triton": PeerDef("triton", "triton_app", triton_request, ports=3),
    "litserve": PeerDef("litserve", "litserve_app", lambda jpeg, s: base64_json_request("/predict", jpeg)),
    "mosec": PeerDef("mosec", "mosec_app", lambda jpeg, s: raw_request("/inference", jpeg)),
}


def post(port: int, request: Request, timeout: float = 30.0) -> tuple[int, bytes]:
    """One request with urllib: (status, body); status 0 when nothing answers."""
    headers = {"Content-Type": request.content_type, **dict(request.headers)}
    call = urllib.request.Request(f"http://{HOST}:{port}{request.path}", data=request.body, method=request.method,
                                  headers=headers)
    try:
        with urllib.request.urlopen(call, timeout=timeout) as response:
            return int(response.status), response.read()
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read()
    except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
        return 0, b""


@dataclass
class Running:
    """A started peer: its process (own session), port and what it took to become ready."""

    name: str
    process: subprocess.Popen
    port: int
    settings: PeerSettings
    started_at: float
    ready_s: float = float("nan")

    def stop(self) -> int:
        return stop_group(self.process)


def start_peer(peer: PeerDef, env: PeerEnv, settings: dict[str, Any], bundle: Path, log_path: Path) -> Running:
    port = free_port_block(peer.ports) if peer.ports > 1 else free_port_block(1)
    full = PeerSettings(bundle=str(bundle), port=port, extra_ports=tuple(range(port + 1, port + peer.ports)),
                        **settings)
    payload = json.dumps({**asdict(full), "extra_ports": list(full.extra_ports)})
    with open(log_path, "wb") as sink:
        process = subprocess.Popen([str(env.python), "-m", f"benchmarks.peer_apps.{peer.app}"], cwd=REPO_ROOT,
                                   env=env.environment({"PEER_SETTINGS": payload}), stdout=sink,
                                   stderr=subprocess.STDOUT, start_new_session=True)
    return Running(peer.name, process, port, full, time.monotonic())


def first_answer(process: subprocess.Popen, port: int, request: Request, started_at: float,
                 timeout_s: float = 240.0, poll_s: float = 0.02) -> float:
    """Seconds from ``started_at`` to the first 200 on ``request``, polling every ``poll_s``; raises
    RuntimeError when the process exits first or nothing answers 200 within ``timeout_s``."""
    while time.monotonic() - started_at < timeout_s:
        if process.poll() is not None:
            raise RuntimeError(f"exited with status {process.returncode} before answering")
        if post(port, request, timeout=30)[0] == 200:
            return time.monotonic() - started_at
        time.sleep(poll_s)
    raise RuntimeError(f"no answer within {timeout_s:.0f} s")


def wait_ready(running: Running, request: Request, log_path: Path, timeout_s: float = 240.0) -> float:
    """Seconds from process start to the first 200 on ``request``; raises with the log's tail."""
    refusals = 0
    while time.monotonic() - running.started_at < timeout_s and refusals < 150:
        if running.process.poll() is not None:
            break
        status, _ = post(running.port, request, timeout=30)
        if status == 200:
            running.ready_s = time.monotonic() - running.started_at
            return running.ready_s
        refusals += status not in (0, 503)  # answering, but not classifying (yet: Triton 400s until the model loads)
        time.sleep(0.2)
    running.stop()
    tail = log_path.read_text(errors="replace")[-1500:] if log_path.exists() else ""
    raise RuntimeError(f"{running.name} not ready within {timeout_s:.0f} s (exit {running.process.returncode}):\n{tail}")


def tree_pids(root: int) -> list[int]:
    """``root`` and all its descendants (from /proc/<pid>/task/<tid>/children)."""
    pids, queue = [], [root]
    while queue:
        pid = queue.pop()
        pids.append(pid)
        for task in Path(f"/proc/{pid}/task").glob("*"):
            try:
                queue += [int(child) for child in (task / "children").read_text().split()]
            except (OSError, ValueError):
                continue
    return pids


def peak_rss(root: int) -> dict[str, Any]:
    """The process tree's summed VmHWM in MiB, its number of processes and each one's share."""
    each = peak_rss_by_process(root)
    return {"peak_rss_mb": round(sum(mib for _, mib in each), 1), "processes": len(each), "peak_rss_by_process": each}


def peak_rss_by_process(root: int) -> list[tuple[str, float]]:
    """(what the process runs, its VmHWM in MiB) for each process of the tree, biggest first."""
    out = []
    for pid in tree_pids(root):
        try:
            hwm = next(line for line in Path(f"/proc/{pid}/status").read_text().splitlines()
                       if line.startswith("VmHWM:"))
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
        except (OSError, StopIteration):
            continue
        out.append((_process_name(argv), round(int(hwm.split()[1]) / 1024, 1)))
    return sorted(out, key=lambda item: -item[1])


def _process_name(argv: list[str]) -> str:
    """The module a Python process runs (``-m x``), else its program's file name; no paths."""
    if "-m" in argv[:-1]:
        return argv[argv.index("-m") + 1]
    return Path(argv[0]).name if argv and argv[0] else "?"


def cpu_seconds(root: int) -> dict[int, float]:
    """CPU seconds (user + system) used so far by each process of the tree under ``root``."""
    ticks = os.sysconf("SC_CLK_TCK")
    out = {}
    for pid in tree_pids(root):
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        out[pid] = (int(fields[11]) + int(fields[12])) / ticks  # utime, stime (fields 14 and 15)
    return out


