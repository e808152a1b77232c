"""System programs some tests drive (Debian's chromium, prometheus/promtool), installed when missing."""
from __future__ import annotations

import shutil
import subprocess

from tests.conftest import REPO_ROOT


def require(binary: str, package: str) -> str:
    """The path of ``binary``; installs Debian ``package`` with ``.ci/apt-install`` first when missing."""
    found = shutil.which(binary)
    if found is None:
        done = subprocess.run(["bash", str(REPO_ROOT / ".ci" / "apt-install"), package], capture_output=True,
                              text=True, timeout=900)
        found = shutil.which(binary)
        assert found, f"{binary} missing and `.ci/apt-install {package}` failed:\n{done.stdout[-2000:]}{done.stderr[-2000:]}"
    return found
