"""Readiness markers shared by the workers of one server: ``<state_dir>/ready-<worker index>``.

Each worker writes its marker (holding its pid) once warm and removes it on a clean shutdown. A
worker killed by SIGKILL (OOM killer, crash) cannot remove its marker, so a marker only counts while
its process is alive: ``/readyz`` answers 503 from the moment a worker dies until its restarted
successor has warmed up.
"""
from __future__ import annotations

from pathlib import Path

import psutil


def alive(pid: int) -> bool:
    """A running process (a zombie, dead but not yet reaped by circus, is not alive)."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def live_markers(state_dir: Path) -> list[Path]:
    """The markers of workers that are warm and still alive."""
    live = []
    for marker in sorted(state_dir.glob("ready-*")):
        try:
            pid = int(marker.read_text().strip() or "0")
        except (OSError, ValueError):  # removed meanwhile, or being written
            continue
        if pid > 0 and alive(pid):
            live.append(marker)
    return live
