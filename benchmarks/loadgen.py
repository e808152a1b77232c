"""A bounded, low-CPU HTTP/1.1 load generator for loopback servers (asyncio streams, keep-alive).

Each of ``concurrency`` clients sends the same pre-built request over one kept-alive connection
until ``max_requests`` in total or ``duration_s`` elapsed. Only loopback hosts are accepted.
"""
from __future__ import annotations

import asyncio
import ipaddress
import statistics
import time
import uuid
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    body: bytes
    content_type: str
    headers: tuple[tuple[str, str], ...] = ()  # extra headers, e.g. Inference-Header-Content-Length

    def encode(self, host: str, port: int) -> bytes:
        extra = "".join(f"{name}: {value}\r\n" for name, value in self.headers)
        head = (
            f"{self.method} {self.path} HTTP/1.1\r\nHost: {host}:{port}\r\n"
            f"Content-Type: {self.content_type}\r\nContent-Length: {len(self.body)}\r\n{extra}"
            "Connection: keep-alive\r\n\r\n"
        )
        return head.encode() + self.body


def multipart_request(path: str, field_name: str, files: list[tuple[str, bytes, str]]) -> Request:
    boundary = uuid.uuid4().hex
    chunks = []
    for filename, data, content_type in files:
        chunks.append(
            f'--{boundary}\r\nContent-Disposition: form-data; name="{field_name}"; filename="{filename}"\r\n'
            f"Content-Type: {content_type}\r\n\r\n".encode() + data + b"\r\n"
        )
    body = b"".join(chunks) + f"--{boundary}--\r\n".encode()
    return Request("POST", path, body, f"multipart/form-data; boundary={boundary}")


@dataclass
class LoadResult:
    concurrency: int
    duration_s: float
    latencies_s: list[float] = field(default_factory=list)
    statuses: dict[int, int] = field(default_factory=dict)
    errors: int = 0

    def summary(self) -> dict[str, float | int | dict[int, int]]:
        ok = self.statuses.get(200, 0)
        ordered = sorted(self.latencies_s)

        def pct(q: float) -> float:
            return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1e3 if ordered else float("nan")

        return {
            "concurrency": self.concurrency,
            "requests": len(self.latencies_s),
            "ok": ok,
            "statuses": dict(self.statuses),
            "connection_errors": self.errors,
            "throughput_rps": ok / self.duration_s if self.duration_s else 0.0,
            "p50_ms": pct(0.50),
            "p99_ms": pct(0.99),
            "mean_ms": statistics.fmean(ordered) * 1e3 if ordered else float("nan"),
        }


def merge_results(parts: list[LoadResult]) -> LoadResult:
    """Several runs at one concurrency as one result (latencies, statuses, errors and time added up)."""
    total = LoadResult(parts[0].concurrency, sum(p.duration_s for p in parts))
    for part in parts:
        total.latencies_s += part.latencies_s
        total.errors += part.errors
        for status, count in part.statuses.items():
            total.statuses[status] = total.statuses.get(status, 0) + count
    return total


def rounds_summary(parts: list[LoadResult]) -> dict[str, object]:
    """The summary of interleaved rounds at one concurrency, with each round's own rate."""
    return {**merge_results(parts).summary(), "rounds_rps": [round(p.summary()["throughput_rps"], 2) for p in parts]}


async def _read_response(reader: asyncio.StreamReader) -> int:
    status_line = await reader.readline()
    if not status_line:
        raise ConnectionError("connection closed")
    status = int(status_line.split()[1])
    length = 0
    chunked = False
    while True:
        line = await reader.readline()
        if line in (b"\r\n", b"\n", b""):
            break
        name, _, value = line.decode("latin-1").partition(":")
        if name.strip().lower() == "content-length":
            length = int(value.strip())
        elif name.strip().lower() == "transfer-encoding" and "chunked" in value.lower():
            chunked = True
    if chunked:
        while True:
            size = int((await reader.readline()).strip() or b"0", 16)
            await reader.readexactly(size + 2)
            if size == 0:
                break
    elif length:
        await reader.readexactly(length)
    return status


async def _client(host: str, port: int, payload: bytes, deadline: float, budget: list[int], result: LoadResult) -> None:
    reader = writer = None
    while time.perf_counter() < deadline and budget[0] > 0:
        budget[0] -= 1
        try:
            if writer is None:
                reader, writer = await asyncio.open_connection(host, port)
            started = time.perf_counter()
            writer.write(payload)
            await writer.drain()
            status = await asyncio.wait_for(_read_response(reader), timeout=max(1.0, deadline - started + 30))
            result.latencies_s.append(time.perf_counter() - started)
            result.statuses[status] = result.statuses.get(status, 0) + 1
        except (OSError, ConnectionError, asyncio.IncompleteReadError, asyncio.TimeoutError, ValueError):
            result.errors += 1
            if writer is not None:
                writer.close()
            reader = writer = None
            await asyncio.sleep(0.05)
    if writer is not None:
        writer.close()


def check_loopback(host: str) -> None:
    if host != "localhost" and not ipaddress.ip_address(host).is_loopback:
        raise ValueError(f"load tests target loopback only, not {host}")


def run_load(host: str, port: int, request: Request, concurrency: int, duration_s: float, max_requests: int) -> LoadResult:
    """Drive ``concurrency`` keep-alive clients; bounded by ``duration_s`` and ``max_requests``."""
    check_loopback(host)
    payload = request.encode(host, port)
    result = LoadResult(concurrency, 0.0)

    async def drive() -> None:
        deadline = time.perf_counter() + duration_s
        budget = [max_requests]
        await asyncio.gather(*(_client(host, port, payload, deadline, budget, result) for _ in range(concurrency)))

    started = time.perf_counter()
    asyncio.run(drive())
    result.duration_s = time.perf_counter() - started
    return result
