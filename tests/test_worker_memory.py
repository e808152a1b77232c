"""A worker hands the heap memory freed while opening and warming its models back to the OS
(``imgcls.service.host.models.return_freed_heap``), instead of carrying it for its whole life."""
from __future__ import annotations

import ctypes
import subprocess
import sys

import pytest

from tests.conftest import REPO_ROOT

# Free 60 MiB of heap blocks (below glibc's mmap threshold) that sit between blocks still in use,
# so glibc cannot give them back by itself; then RSS before and after return_freed_heap().
CODE = """
import sys
from imgcls.service.host.models import return_freed_heap

def rss_mib():
    return int(next(l for l in open('/proc/self/status') if l.startswith('VmRSS')).split()[1]) // 1024

big, kept = [], []
for i in range(600):
    big.append(bytes(100_000) + bytes([i % 256]))
    kept.append(bytes(2_000) + bytes([i % 256]))
big.clear()
before = rss_mib()
return_freed_heap()
print(before, rss_mib(), len(kept))
"""


def _glibc() -> bool:
    try:
        return hasattr(ctypes.CDLL(None), "malloc_trim")
    except OSError:
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux") or not _glibc(), reason="malloc_trim is glibc's")
def test_freed_heap_goes_back_to_the_os():
    result = subprocess.run([sys.executable, "-c", CODE], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr[-2000:]
    before, after, _ = map(int, result.stdout.split())
    assert before - after >= 40, f"RSS {before} -> {after} MiB"
