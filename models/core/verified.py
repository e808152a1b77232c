"""sha256 of large files, computed once per file version and remembered.

A bundle's ONNX file is verified against its card at every load; hashing a 100 MB file costs more
than a short scoring job's inference. The digest is kept (in this process and in a small JSON file
under the user's cache directory) under a key made of what any change to the file changes: device,
inode, size, modification time and status-change time (``st_ctime_ns``, which no user-space call can
set back). A replaced or rewritten file therefore gets a new key and is hashed again.
"""
from __future__ import annotations

import json
import logging
import os
import threading
from pathlib import Path

from imgcls.models.core.atomic import sha256_file, write_atomically

log = logging.getLogger(__name__)

CACHE_ENV = "IMGCLS_CACHE_DIR"
CACHE_FILENAME = "verified-sha256.json"
MAX_ENTRIES = 256
_MEMO: dict[str, str] = {}
_LOCK = threading.Lock()


def cache_dir() -> Path:
    """``$IMGCLS_CACHE_DIR``, else ``$XDG_CACHE_HOME/imgcls``, else ``~/.cache/imgcls``."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "imgcls"


def file_key(path: Path) -> str:
    stat = os.stat(path)
    return f"{os.path.realpath(path)}|{stat.st_dev}|{stat.st_ino}|{stat.st_size}|{stat.st_mtime_ns}|{stat.st_ctime_ns}"


def _read_cache(path: Path) -> dict[str, str]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return {k: v for k, v in data.items() if isinstance(k, str) and isinstance(v, str)} if isinstance(data, dict) else {}


def cached_sha256(path: str | Path) -> str:
    """The file's sha256, hashed only when this version of the file has not been hashed before."""
    path = Path(path)
    key = file_key(path)
    with _LOCK:
        if key in _MEMO:
            return _MEMO[key]
    store = cache_dir() / CACHE_FILENAME
    known = _read_cache(store)
    digest = known.get(key)
    if digest is None:
        digest = sha256_file(path)
        if file_key(path) == key:  # unchanged while we read it: safe to remember
            known[key] = digest
            try:
                write_atomically(store, json.dumps(dict(list(known.items())[-MAX_ENTRIES:])).encode())
            except OSError as exc:  # a read-only home (containers) only costs the next load a hash
                log.debug("cannot remember the digest in %s: %s", store, exc)
    with _LOCK:
        _MEMO[key] = digest
    return digest
