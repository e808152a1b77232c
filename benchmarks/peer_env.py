"""One virtual environment per peer server, built by the benchmark, never touching the project's.

Each peer (``triton``, ``litserve``, ``mosec``) gets ``.bench-out/peers/<name>/venv``, made with
``python -m venv`` from the first interpreter of its candidate list that exists, and the pinned
packages below installed from PyPI. A stamp file records the interpreter and the requirements; a
matching stamp means the venv is reused. The peers import our ``Preprocess`` from the repository:
imgcls is installed into each peer venv editable and without its dependencies (``models/core``
needs numpy and Pillow only).

PyTriton: its Python-backend stub fails on some interpreter builds (an ``_recursion_count``
AttributeError inside multiprocessing on pyenv's 3.11.7, the project venv's interpreter) and works
on Debian's ``/usr/bin/python3.11`` (3.11.2), so that interpreter comes first for Triton.

    .venv/bin/python -m benchmarks.peer_env triton litserve mosec
"""
from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from benchmarks.report import REPO_ROOT

log = logging.getLogger("bench.peer_env")
PEERS_DIR = REPO_ROOT / ".bench-out" / "peers"
DEBIAN_PYTHON = "/usr/bin/python3.11"
COMMON = ("onnxruntime==1.31.1", "numpy>=1.26,<3", "pillow>=10.3")
PROJECT = "imgcls (editable, --no-deps)"  # recorded in the stamp: venvs built before it get rebuilt


@dataclass(frozen=True)
class PeerEnvSpec:
    name: str
    packages: tuple[str, ...]
    interpreters: tuple[str, ...]  # tried in order; the first that exists and makes a venv wins


SPECS: dict[str, PeerEnvSpec] = {
    "triton": PeerEnvSpec("triton", ("nvidia-pytriton==0.7.0", "tritonclient[http]==2.73.0", *COMMON),
                          (DEBIAN_PYTHON, sys.executable)),
    "litserve": PeerEnvSpec("litserve", ("litserve==0.2.19", "python-multipart>=0.0.9", *COMMON),
                            (sys.executable, DEBIAN_PYTHON)),
    "mosec": PeerEnvSpec("mosec", ("mosec==0.9.8", *COMMON), (sys.executable, DEBIAN_PYTHON)),
    # not a server: KServe's Python clients (REST and gRPC) against imgcls, tests/test_kserve_client.py;
    # kserve pins protobuf, psutil and brings uvloop, hence an environment of its own
    "kserve": PeerEnvSpec("kserve", ("kserve==0.21.0", *COMMON), (sys.executable, DEBIAN_PYTHON)),
    # not a server either: the schema fuzzer of tests/test_oip_fuzz.py
    "schemathesis": PeerEnvSpec("schemathesis", ("schemathesis==4.32.5",), (sys.executable, DEBIAN_PYTHON)),
}


@dataclass(frozen=True)
class PeerEnv:
    name: str
    python: Path  # the venv's interpreter
    interpreter: str  # the base interpreter it was made from, as `python -VV` says
    built_s: float  # seconds spent building now (0 when reused)

    def environment(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        """Environment for a peer process: the venv first on PATH, the repository importable."""
        bin_dir = str(self.python.parent)
        return {**os.environ, "PATH": os.pathsep.join([bin_dir, os.environ.get("PATH", "")]),
                "VIRTUAL_ENV": str(self.python.parent.parent), "PYTHONPATH": str(REPO_ROOT),
                "PYTHONUNBUFFERED": "1", **(extra or {})}


def describe_interpreter(python: str) -> str:
    """Version and kind of a base interpreter, without naming this machine's folders."""
    result = subprocess.run([python, "-c", "import sys; print(sys.version.split()[0])"],
                            capture_output=True, text=True, timeout=60)
    kind = "Debian's system python3.11" if python == DEBIAN_PYTHON else "the project venv's interpreter"
    return f"{result.stdout.strip()} ({kind})"


def ensure(name: str, root: Path = PEERS_DIR) -> PeerEnv:
    """The venv of peer ``name``, built when missing or out of date."""
    spec = SPECS[name]
    venv = root / name / "venv"
    python = venv / "bin" / "python"
    stamp_path = root / name / "stamp.json"
    try:
        stamp = json.loads(stamp_path.read_text())
        if stamp.get("packages") == [*spec.packages, PROJECT] and python.is_file():
            return PeerEnv(name, python, stamp["interpreter"], 0.0)
    except (OSError, ValueError, KeyError):
        pass
    started = time.perf_counter()
    base = next((p for p in spec.interpreters if Path(p).is_file() and _can_make_venv(p)), None)
    if base is None:
        raise RuntimeError(f"{name}: none of {spec.interpreters} can create a venv "
                           "(Debian: apt-get install -y python3-venv)")
    log.info("%s: building %s from %s (pip install %s)", name, venv, base, " ".join(spec.packages))
    subprocess.run([base, "-m", "venv", "--clear", str(venv)], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", *spec.packages],
                   check=True)
    subprocess.run([str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", "--no-deps", "-e",
                    str(REPO_ROOT)], check=True)  # imgcls.models.core, by setuptools' package-dir mapping
    interpreter = describe_interpreter(base)
    stamp_path.write_text(json.dumps({"packages": [*spec.packages, PROJECT], "interpreter": interpreter}))
    return PeerEnv(name, python, interpreter, time.perf_counter() - started)


def _can_make_venv(python: str) -> bool:
    check = subprocess.run([python, "-c", "import venv, ensurepip"], capture_output=True, timeout=60)
    return check.returncode == 0


def main(argv: list[str] | None = None) -> int:
    import argparse

    from benchmarks.report import setup_logging

    parser = argparse.ArgumentParser(description="build (or reuse) the peer servers' virtual environments")
    parser.add_argument("peers", nargs="*", help=f"among {', '.join(sorted(SPECS))} (default: every peer)")
    args = parser.parse_args(argv)
    unknown = sorted(set(args.peers) - set(SPECS))
    if unknown:
        parser.error(f"unknown peer(s) {unknown}; choose among {sorted(SPECS)}")
    setup_logging()
    for name in args.peers or sorted(SPECS):
        env = ensure(name)
        log.info("%s: %s (python %s, built in %.0f s)", name, env.python, env.interpreter, env.built_s)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
