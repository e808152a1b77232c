"""Shared pieces of the robustness tests: the real server (imgcls.service.host.launcher), the resident
memory of its process tree read from /proc, the cached Lite0 bundle, and the figures file.

Figures go to ``$IMGCLS_ROBUSTNESS_JSON`` (default: tests/robustness/last_run.json, not committed);
each test merges its own section, so one run of tests/robustness/ leaves one file with every figure.
"""
from __future__ import annotations

import fcntl
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import httpx

from tests.conftest import REPO_ROOT
from imgcls.service.host.launcher import Server, start_server  # noqa: F401 - re-exported for the test modules

log = logging.getLogger("imgcls.robustness")
PAGE_KIB = os.sysconf("SC_PAGE_SIZE") // 1024
FIGURES = Path(os.environ.get("IMGCLS_ROBUSTNESS_JSON", REPO_ROOT / "tests" / "robustness" / "last_run.json"))
SOAK = os.environ.get("IMGCLS_SOAK", "") not in ("", "0")


# ---------------------------------------------------------------- process tree memory (/proc)
def _parents() -> dict[int, int]:
    parents = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()  # after "(comm)": state, ppid, ...
        parents[int(entry.name)] = int(fields[1])
    return parents


def process_tree(root: int) -> list[int]:
    """``root`` and all its descendants (imgcls serve -> bentoml serve -> workers)."""
    parents = _parents()
    tree, frontier = [root], [root]
    while frontier:
        children = [pid for pid, parent in parents.items() if parent in frontier]
        tree += children
        frontier = children
    return tree


def _status_kib(pid: int, key: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def tree_memory_mib(root: int) -> dict[str, float]:
    """Resident memory now (VmRSS) and its high-water mark (VmHWM), summed over the tree, in MiB.

    VmHWM only grows, so a request that ever decoded a huge image shows up in it even after the
    memory was given back.
    """
    pids = process_tree(root)
    return {"rss_mib": sum(_status_kib(p, "VmRSS") for p in pids) / 1024,
            "hwm_mib": sum(_status_kib(p, "VmHWM") for p in pids) / 1024,
            "processes": len(pids)}


# ---------------------------------------------------------------- the server
def answers(client: httpx.Client, probe: dict[str, Any]) -> bool:
    """The server is alive, ready and still classifies a good image."""
    try:
        ready = client.get("/readyz", timeout=10).status_code == 200
        return ready and client.post("/classify", timeout=30, **probe).status_code == 200
    except httpx.HTTPError:
        return False


# ---------------------------------------------------------------- the Lite0 bundle, built once per session
def lite0_bundle(tmp_path_factory) -> Path:
    """The ImageNet Lite0 bundle, exported once per pytest session and shared by the modules that need it."""
    from tests.robustness.bundles import make_imagenet_lite0_bundle

    root = tmp_path_factory.getbasetemp() / "robustness-lite0"
    root.mkdir(exist_ok=True)
    bundle = root / "bundles" / "lite0-imagenet"
    with open(root / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (bundle / "card.json").is_file():
            started = time.perf_counter()
            make_imagenet_lite0_bundle(root)
            record("bundles", {"lite0_export_s": round(time.perf_counter() - started, 1)})
    return bundle


# ---------------------------------------------------------------- figures
def record(section: str, figures: dict[str, Any]) -> Path:
    """Merge ``figures`` under ``section`` into the figures JSON file and log them."""
    FIGURES.parent.mkdir(parents=True, exist_ok=True)
    with open(FIGURES, "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        handle.seek(0)
        try:
            data = json.loads(handle.read() or "{}")
        except ValueError:
            data = {}
        data[section] = {**figures, "recorded_at": time.strftime("%Y-%m-%dT%H:%M:%S")}
        text = json.dumps(data, indent=1, sort_keys=True) + "\n"  # before truncating: a failure keeps the file
        handle.seek(0)
        handle.truncate()
        handle.write(text)
    log.warning("robustness figures [%s] -> %s: %s", section, FIGURES, json.dumps(figures, sort_keys=True))
    return FIGURES
