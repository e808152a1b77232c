"""`.ci/system-tools` (what `make test` runs first) and the tests' skip-or-fail policy, run for real with
bash on a PATH that holds only stand-ins for the system's `id`, `sudo` and `apt-get`: as root, as a user
with and without sudo, on a system without apt-get, with and without CI=true."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT
from tests.system_tools import LIST, SCRIPT, package_of

TOOLS = ("bash", "grep", "awk", "env", "dirname", "cat", "touch", "chmod")
LISTED = [line.split() for line in LIST.read_text().splitlines() if line.strip() and not line.startswith("#")]
PACKAGES = list(dict.fromkeys(fields[1] for fields in LISTED))


def stand_in(folder: Path, name: str, body: str) -> None:
    path = folder / name
    path.write_text("#!/bin/bash\n" + textwrap.dedent(body))
    path.chmod(0o755)


@pytest.fixture
def machine(tmp_path):
    """A PATH of real shell tools plus stand-ins; ``make(uid, sudo, apt)`` sets the machine up."""
    bin_dir, installed = tmp_path / "bin", tmp_path / "installed"
    bin_dir.mkdir()
    installed.mkdir()
    for tool in TOOLS:
        (bin_dir / tool).symlink_to(shutil.which(tool))
    log = tmp_path / "calls.log"
    programs = " ".join(fields[0] for fields in LISTED)

    def make(uid: int = 0, sudo: str | None = None, apt: bool = True, apt_fails_once: bool = False) -> dict:
        stand_in(bin_dir, "id", f'[ "$1" = -u ] && echo {uid}\n')
        if sudo is not None:  # "nopasswd" runs the command; "password" refuses -n
            stand_in(bin_dir, "sudo", f"""\
                [ "$1" = -n ] || {{ echo "sudo: a password is required" >&2; exit 1; }}
                shift
                [ "{sudo}" = nopasswd ] || {{ echo "sudo: a password is required" >&2; exit 1; }}
                echo "sudo $*" >> {log}
                [ "$1" = true ] && exit 0
                exec "$@"
                """)
        if apt:
            stand_in(bin_dir, "apt-get", f"""\
                echo "apt-get DEBIAN_FRONTEND=${{DEBIAN_FRONTEND:-unset}} $*" >> {log}
                if [ "$1" = install ] && {'[ ! -e ' + str(tmp_path / 'updated') + ' ]' if apt_fails_once else 'false'}; then
                  exit 100
                fi
                [ "$1" = update ] && touch {tmp_path / 'updated'}
                if [ "$1" = install ]; then
                  for p in {programs}; do printf '#!/bin/bash\\n' > {installed}/$p; chmod +x {installed}/$p; done
                fi
                exit 0
                """)
        return {"PATH": f"{bin_dir}:{installed}", "HOME": str(tmp_path)}

    def calls() -> list[str]:
        return log.read_text().splitlines() if log.exists() else []

    make.calls = calls
    return make


def run_script(env: dict, *args: str, ci: bool = False) -> subprocess.CompletedProcess:
    env = {**env, **({"CI": "true"} if ci else {})}
    return subprocess.run(["bash", str(SCRIPT), *args], env=env, capture_output=True, text=True, timeout=60,
                          stdin=subprocess.DEVNULL)


def test_as_root_it_installs_every_missing_package_saying_so_first(machine):
    done = run_script(machine(uid=0))
    assert done.returncode == 0, done.stderr
    assert f"installing Debian packages the tests need: {' '.join(PACKAGES)}" in done.stderr
    assert machine.calls() == [f"apt-get DEBIAN_FRONTEND=noninteractive install -y -q --no-install-recommends "
                               f"{' '.join(PACKAGES)}"]
    assert "command not found" not in done.stderr


def test_the_package_lists_are_updated_once_when_the_first_install_fails(machine):
    done = run_script(machine(uid=0, apt_fails_once=True))
    assert done.returncode == 0, done.stderr
    assert [call.split()[2] for call in machine.calls()] == ["install", "update", "install"]


def test_as_a_user_with_sudo_it_installs_through_sudo(machine):
    done = run_script(machine(uid=1000, sudo="nopasswd"))
    assert done.returncode == 0, done.stderr
    assert "sudo true" in machine.calls()  # asked without a password prompt first
    assert [call for call in machine.calls() if call != "sudo true"] == [
                               f"sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "
                               f"{' '.join(PACKAGES)}",
                               f"apt-get DEBIAN_FRONTEND=noninteractive install -y -q --no-install-recommends "
                               f"{' '.join(PACKAGES)}"]


@pytest.mark.parametrize("setup, why", [
    ({"uid": 1000}, "not root, and no sudo"),
    ({"uid": 1000, "sudo": "password"}, "not root, and sudo needs a password"),
    ({"uid": 0, "apt": False}, "this system has no apt-get (not Debian or Ubuntu)"),
])
def test_without_a_way_to_install_make_test_goes_on_and_names_each_package(machine, setup, why):
    done = run_script(machine(**setup))
    assert done.returncode == 0, done.stderr
    assert f"cannot install {' '.join(PACKAGES)}: {why}" in done.stderr
    for program, package, *_ in LISTED:
        assert f"missing: {program} (Debian package {package}): its tests will be skipped" in done.stderr
    assert not [call for call in machine.calls() if call.startswith("apt-get")]


def test_with_ci_a_missing_program_fails_the_run_naming_its_package(machine):
    done = run_script(machine(uid=1000), ci=True)
    assert done.returncode == 1
    for program, package, *_ in LISTED:
        assert f"missing: {program} (Debian package {package}) (CI=true: its tests fail)" in done.stderr


def test_one_package_asked_for_without_root_or_sudo_exits_3(machine):
    done = run_script(machine(uid=1000), "qemu-user")
    assert done.returncode == 3
    assert "cannot install qemu-user: not root, and no sudo" in done.stderr


def test_nothing_missing_means_nothing_said_and_no_apt(machine):
    env = machine(uid=0)
    assert run_script(env).returncode == 0  # installs the stand-in programs
    before = machine.calls()
    again = run_script(env)
    assert again.returncode == 0 and again.stderr == ""
    assert machine.calls() == before


TEST_FILE = """
from tests.system_tools import require

def test_needs_qemu():
    require("qemu-x86_64")
"""


@pytest.mark.parametrize("ci", [False, True])
def test_a_test_whose_program_cannot_be_had_is_skipped_or_fails_in_ci_naming_the_package(machine, tmp_path, ci):
    test_file = tmp_path / "test_needs_tool.py"
    test_file.write_text(TEST_FILE)
    env = {**machine(uid=1000), "PYTHONPATH": str(REPO_ROOT), **({"CI": "true"} if ci else {"CI": ""})}
    done = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-rsf", "-q", str(test_file),
                           "--rootdir", str(tmp_path)], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=120)
    out = done.stdout + done.stderr
    assert package_of("qemu-x86_64") == "qemu-user"
    assert "needs `qemu-x86_64` from the Debian package qemu-user" in out, out
    assert "not root, and no sudo" in out, out
    if ci:
        assert done.returncode == 1 and "1 failed" in out and "CI=true: nothing may be skipped" in out, out
    else:
        assert done.returncode == 0 and "1 skipped" in out, out


def test_every_program_the_tests_require_is_listed():
    """A program required by a test but missing from the list would fail at run time on a machine without it."""
    import re

    used = set()
    for path in (REPO_ROOT / "tests").glob("test_*.py"):
        if path.name != Path(__file__).name:
            used.update(re.findall(r'\brequire\("([^"]+)"\)', path.read_text()))
    assert used and used <= {fields[0] for fields in LISTED}, used
    assert os.access(SCRIPT, os.X_OK)
