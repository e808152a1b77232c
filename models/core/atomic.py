"""Crash-safe writes (stdlib only): a file or a whole directory appears complete or not at all."""
from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

# tempfile creates 0600 files and 0700 directories; artefacts are meant to be shared (a bundle is
# mounted into a container that runs as another user), so published ones get ordinary modes.
FILE_MODE = 0o644
DIRECTORY_MODE = 0o755


def sha256_file(path: str | Path, chunk_size: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(chunk_size), b""):
            digest.update(chunk)
    return digest.hexdigest()


def write_atomically(target: str | Path, data: bytes) -> None:
    """Write ``data`` to a temporary file beside ``target``, fsync, then rename over it."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, temp_name = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(data)
            stream.flush()
            os.fsync(stream.fileno())
        os.chmod(temp_name, FILE_MODE)
        os.replace(temp_name, target)
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def staged_directory(target: str | Path) -> Iterator[Path]:
    """Yield an empty temporary directory beside ``target``; on success it replaces ``target``.

    On any exception (or a kill) ``target`` is untouched; the hidden staging directory is removed
    on exceptions and is recognisable (``.<name>.staging-*``) after a kill.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.staging-", dir=target.parent))
    try:
        yield staging
        for child in staging.rglob("*"):
            if child.is_file():
                with open(child, "rb") as handle:
                    os.fsync(handle.fileno())
            os.chmod(child, DIRECTORY_MODE if child.is_dir() else FILE_MODE)
        os.chmod(staging, DIRECTORY_MODE)
        retired = None
        if target.exists():
            retired = target.with_name(f".{target.name}.retired-{os.getpid()}")
            os.replace(target, retired)
        os.replace(staging, target)
        if retired is not None:
            shutil.rmtree(retired, ignore_errors=True)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
