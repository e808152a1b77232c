"""``imgcls serve`` verifies the bundles while BentoML starts (``supervise --check-pid``): the server loads
nothing and says nothing until the check passed; a failed check stops it and ends with the check's status."""
from __future__ import annotations

import subprocess
import sys
import textwrap
import time

from imgcls.service.host.launcher import child_environment

# Stands in for `bentoml serve`: talks at once, then "loads" only once the check's marker exists.
SERVER = textwrap.dedent("""
    import os, pathlib, sys, time
    print("server starting", flush=True)
    marker = pathlib.Path(os.environ["IMGCLS_STATE_DIR"]) / "checked"
    assert os.environ["IMGCLS_AWAIT_CHECK"] == "true"
    while not marker.exists():
        time.sleep(0.01)
    print("server loaded", flush=True)
    sys.exit(int(os.environ.get("SERVER_EXIT", "0")))
""")

# Stands in for `imgcls serve`: forks the check, then becomes the supervisor (same pid) as serve does.
LAUNCH = textwrap.dedent("""
    import os, sys, time
    code, delay = int(sys.argv[1]), float(sys.argv[2])
    pid = os.fork()
    if pid == 0:
        time.sleep(delay)
        if code:
            sys.stderr.write("ERROR imgcls.serve: bundle x: the ONNX file was replaced\\n")
        sys.stderr.flush()
        os._exit(code)
    os.execv(sys.executable, [sys.executable, "-m", "imgcls.service.host.supervise", "--grace", "1", "--cwd", ".",
                              "--check-pid", str(pid), "--", sys.executable, "-c", sys.argv[3]])
""")


def launch(check_code: int, delay: float) -> tuple[subprocess.CompletedProcess, float]:
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-c", LAUNCH, str(check_code), str(delay), SERVER], capture_output=True,
                            text=True, env=child_environment(), timeout=60)
    return result, time.monotonic() - started


def test_a_failed_check_stops_the_server_before_it_loads_and_keeps_its_output():
    result, seconds = launch(2, 1.0)
    assert result.returncode == 2, result.stderr
    assert "server" not in result.stdout, result.stdout  # held, then dropped: only the check's line remains
    assert [line for line in result.stderr.splitlines() if line.strip()] == [
        "ERROR imgcls.serve: bundle x: the ONNX file was replaced"], result.stderr
    assert seconds < 30


def test_a_passed_check_lets_the_server_load_and_shows_its_output_in_order():
    result, _ = launch(0, 1.0)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["server starting", "server loaded"], result.stdout
