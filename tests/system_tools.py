"""Programs some tests drive (Debian's chromium, prometheus/promtool, qemu-user), listed in
``.ci/system-tools.txt``: installed by ``.ci/system-tools`` when missing. Where they cannot be had
(not root and no sudo, not Debian, apt-get failed) the test is skipped with a reason naming the
package; with ``CI=true`` it fails instead, since CI must run everything."""
from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from tests.conftest import REPO_ROOT

SCRIPT = REPO_ROOT / ".ci" / "system-tools"
LIST = REPO_ROOT / ".ci" / "system-tools.txt"


def package_of(program: str) -> str:
    """The Debian package of ``program``, from ``.ci/system-tools.txt`` (one list for the script and the tests)."""
    for line in LIST.read_text().splitlines():
        fields = line.split()
        if fields and not fields[0].startswith("#") and fields[0] == program:
            return fields[1]
    raise KeyError(f"{program} is not listed in {LIST.name}: add it with its Debian package")


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("true", "1")


def unavailable(reason: str) -> None:
    """Skip the calling test with ``reason``; under CI=true fail with it (CI runs every test)."""
    if in_ci():
        pytest.fail(f"{reason} (CI=true: nothing may be skipped)", pytrace=False)
    pytest.skip(reason)


def require(program: str) -> str:
    """The path of ``program``; installs its Debian package first when missing, else skips (fails in CI)."""
    found = shutil.which(program)
    if found is not None:
        return found
    package = package_of(program)
    done = subprocess.run(["bash", str(SCRIPT), package], capture_output=True, text=True, timeout=900,
                          stdin=subprocess.DEVNULL)
    found = shutil.which(program)
    if found is None:
        said = " ".join(done.stderr.strip().splitlines()[-2:]) or f"exit {done.returncode}"
        unavailable(f"needs `{program}` from the Debian package {package}, which is not installed ({said})")
    return found
