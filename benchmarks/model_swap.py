"""Replacing a served model under load: does any request fail, and does every answer name the right version?

Part of ``benchmarks.many_models``. A model repository holds ``NAME/1`` (the old bundle); ``imgcls
serve`` serves it with its workers while ``clients`` keep-alive clients send ``/classify?model=NAME``
without pause. After ``before_s`` the new bundle is moved in whole as ``NAME/2`` (a rename on the same
file system) and ``POST /v2/repository/models/NAME/load`` is called; the load continues ``after_s``
past its answer. Every answer's ``X-Model-Version`` header and send/receive times are kept: answers
received before the load call was sent must name the old version, answers sent after it returned the
new one; in between either may answer (the workers switch one after the other).
Goal: 0 failed requests and no answer outside that rule.
"""
from __future__ import annotations

import asyncio
import json
import logging
import shutil
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.loadgen import Request, check_loopback

log = logging.getLogger("bench.model_swap")
HOST = "127.0.0.1"
VERSION_HEADER = "x-model-version"


@dataclass(frozen=True)
class Answer:
    sent: float  # time.monotonic()
    received: float
    status: int  # 0: the connection failed
    version: str


async def _read(reader: asyncio.StreamReader) -> tuple[int, str]:
    """(status, X-Model-Version) of one HTTP/1.1 response; the body is read and dropped."""
    status_line = await reader.readline()
    if not status_line:
        raise ConnectionError("connection closed")
    status, length, version = int(status_line.split()[1]), 0, ""
    while (line := await reader.readline()) not in (b"\r\n", b"\n", b""):
        name, _, value = line.decode("latin-1").partition(":")
        if name.strip().lower() == "content-length":
            length = int(value.strip())
        elif name.strip().lower() == VERSION_HEADER:
            version = value.strip()
    if length:
        await reader.readexactly(length)
    return status, version


async def _client(port: int, payload: bytes, stop: threading.Event, answers: list[Answer]) -> None:
    reader = writer = None
    while not stop.is_set():
        sent = time.monotonic()
        try:
            if writer is None:
                reader, writer = await asyncio.open_connection(HOST, port)
            writer.write(payload)
            await writer.drain()
            status, version = await asyncio.wait_for(_read(reader), timeout=60)
        except (OSError, ConnectionError, asyncio.IncompleteReadError, asyncio.TimeoutError, ValueError):
            status, version = 0, ""
            if writer is not None:
                writer.close()
            reader = writer = None
        answers.append(Answer(sent, time.monotonic(), status, version))
    if writer is not None:
        writer.close()


def _load_in_thread(port: int, payloads: list[bytes], stop: threading.Event, answers: list[Answer]) -> threading.Thread:
    async def run_all() -> None:
        await asyncio.gather(*(_client(port, p, stop, answers) for p in payloads))

    thread = threading.Thread(target=lambda: asyncio.run(run_all()), daemon=True)
    thread.start()
    return thread


def repository_load(port: int, name: str, timeout: float = 180.0) -> tuple[int, dict[str, Any]]:
    call = urllib.request.Request(f"http://{HOST}:{port}/v2/repository/models/{name}/load", data=b"{}",
                                  method="POST", headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(call, timeout=timeout) as response:
            return int(response.status), json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as exc:
        return int(exc.code), {"error": exc.read().decode(errors="replace")[:300]}


def served_version(port: int, name: str) -> str:
    with urllib.request.urlopen(f"http://{HOST}:{port}/model?model={name}", timeout=30) as response:
        return str(json.loads(response.read())["version"])


def swap_under_load(port: int, repository: Path, name: str, new_bundle: Path, jpegs: list[bytes], clients: int,
                    before_s: float, after_s: float) -> dict[str, Any]:
    """Swap ``name`` to ``new_bundle`` (as version 2) under ``clients`` clients; the verdict's figures."""
    check_loopback(HOST)
    old = served_version(port, name)
    payloads = [Request("POST", f"/classify?model={name}", jpegs[i % len(jpegs)], "image/jpeg").encode(HOST, port)
                for i in range(clients)]
    staging = repository.parent / f"{name}-staging"
    shutil.copytree(new_bundle, staging)  # copied beside the repository, then moved in whole
    stop, answers = threading.Event(), []
    thread = _load_in_thread(port, payloads, stop, answers)
    try:
        time.sleep(before_s)
        call_sent = time.monotonic()
        staging.rename(repository / name / "2")
        status, body = repository_load(port, name)
        call_returned = time.monotonic()
        time.sleep(after_s)
    finally:
        stop.set()
        thread.join(90)
    new = served_version(port, name)
    log.info("swap: load answered %d after %.2f s; %s -> %s", status, call_returned - call_sent, old, new)
    return verdict(list(answers), old, new, call_sent, call_returned) | {
        "load_status": status, "load_answer": body, "load_s": round(call_returned - call_sent, 3),
        "clients": clients, "before_s": before_s, "after_s": after_s}


def verdict(answers: list[Answer], old: str, new: str, call_sent: float, call_returned: float) -> dict[str, Any]:
    """Failed requests and versions before, during and after the load call."""
    before = [a for a in answers if a.received < call_sent]
    after = [a for a in answers if a.sent > call_returned]
    during = [a for a in answers if a.received >= call_sent and a.sent <= call_returned]
    failed = [a for a in answers if a.status != 200]
    first_new = min((a.received for a in answers if a.version == new), default=None)
    old_after_new = sum(1 for a in answers if a.version == old and first_new is not None and a.sent > first_new)
    result = {
        "old_version": old, "new_version": new, "requests": len(answers), "failed": len(failed),
        "statuses": _count(str(a.status) for a in answers),
        "before": {"answers": len(before), "versions": _count(a.version for a in before)},
        "during": {"answers": len(during), "versions": _count(a.version for a in during)},
        "after": {"answers": len(after), "versions": _count(a.version for a in after)},
        "old_sent_after_first_new_answer": old_after_new,
    }
    result["goal_met"] = (old != new and not failed and bool(before) and bool(after)
                          and all(a.version == old for a in before) and all(a.version == new for a in after))
    return result


def _count(values: Any) -> dict[str, int]:
    out: dict[str, int] = {}
    for value in values:
        out[value] = out.get(value, 0) + 1
    return out
