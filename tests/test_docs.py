"""The documentation: generated pages match the code, the site builds strictly, the README's quick
start runs as written, and no page tells the project's history."""
from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from imgcls import docs_gen
from imgcls.service.host.launcher import child_environment
from tests.conftest import REPO_ROOT


def test_generated_references_match_the_code():
    """docs/reference/commands.md (argparse), docs/reference/http.md (OpenAPI) and docs/benchmarks.md
    (benchmarks/results/*.json) are exactly what the generator produces from the code now."""
    stale = docs_gen.stale()
    assert not stale, (f"out of date: {', '.join(map(str, stale))}; regenerate with `{docs_gen.REGENERATE}` "
                       "(from the checkout root) and commit the result")


def test_the_generator_check_fails_on_a_hand_edited_page(tmp_path):
    """--check compares against the files: a page edited by hand is reported, naming the command."""
    page = next(iter(docs_gen.PAGES))
    copy = tmp_path / page
    copy.parent.mkdir(parents=True)
    copy.write_text((REPO_ROOT / page).read_text() + "\nedited by hand\n")
    assert page in docs_gen.stale(tmp_path)
    done = subprocess.run([sys.executable, "-m", "imgcls.docs_gen", "--check"], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]


# ---------------------------------------------------------------- the site builds, strictly
def mkdocs_build(config: Path, site: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(config), "-d", str(site)],
                          cwd=config.parent, env={**child_environment(), "NO_MKDOCS_2_WARNING": "1"},
                          capture_output=True, text=True, timeout=300)


def test_the_site_builds_strictly(tmp_path):
    """mkdocs build --strict: a broken link or anchor, a page missing from the nav or a nav entry
    without its page fails it (mkdocs.yml's validation settings)."""
    done = mkdocs_build(REPO_ROOT / "mkdocs.yml", tmp_path / "site")
    assert done.returncode == 0, done.stderr[-3000:]
    pages = {p.relative_to(tmp_path / "site").as_posix() for p in (tmp_path / "site").rglob("index.html")}
    assert {"index.html", "getting-started/index.html", "reference/commands/index.html",
            "reference/http/index.html", "benchmarks/index.html", "architecture/index.html"} <= pages
    assert "fonts.googleapis.com" not in (tmp_path / "site" / "index.html").read_text()


def test_a_broken_link_fails_the_build(tmp_path):
    """The same configuration on a copy of docs/ with one link to a page that does not exist."""
    shutil.copytree(REPO_ROOT / "docs", tmp_path / "docs")
    shutil.copy(REPO_ROOT / "mkdocs.yml", tmp_path / "mkdocs.yml")
    (tmp_path / "docs" / "index.md").write_text((REPO_ROOT / "docs" / "index.md").read_text()
                                                + "\n[gone](no-such-page.md)\n")
    done = mkdocs_build(tmp_path / "mkdocs.yml", tmp_path / "site")
    assert done.returncode != 0 and "no-such-page.md" in done.stderr, done.stderr[-3000:]


# ---------------------------------------------------------------- no history on any page
# "run 5" / "runs 4–6" as labels of past runs (not "runs 2 workers", not "a run 1.5 s long")
HISTORY = re.compile(r"this session|\bissue\s*#?\d|\bissue |before this work|before \(main\)"
                     r"|\brun [1-9]\b(?!\.\d)|\bruns [1-9](?:[–-]|, | and )\d", re.IGNORECASE)


def documentation_pages() -> list[Path]:
    return [REPO_ROOT / "README.md", *sorted((REPO_ROOT / "docs").rglob("*.md"))]


def history_lines(path: Path) -> list[str]:
    return [f"{path.relative_to(REPO_ROOT)}:{n}: {line.strip()[:160]}"
            for n, line in enumerate(path.read_text().splitlines(), 1) if HISTORY.search(line)]


def test_no_page_tells_the_history():
    """Docs are written for users in the present tense; history stays in git."""
    assert len(documentation_pages()) > 10
    found = [hit for page in documentation_pages() for hit in history_lines(page)]
    assert not found, "\n".join(found)


def test_the_history_check_catches_a_run_label_and_an_issue_number(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("| run 5 | 92 req/s |\nFixed in issue 12.\nWhat changed this session\nA run 1.5 s long\n"
                    "a container limited to 2 CPUs runs 2\nparity (runs 4–6)\n")
    hits = [line for line in page.read_text().splitlines() if HISTORY.search(line)]
    assert hits == ["| run 5 | 92 req/s |", "Fixed in issue 12.", "What changed this session", "parity (runs 4–6)"], hits


# ---------------------------------------------------------------- the README
def quick_start(text: str) -> str:
    """The first ```bash block under the README's "Your own photos" heading."""
    section = text[text.index("## Your own photos"):]
    return re.search(r"```bash\n(.*?)```", section, re.S).group(1)


def test_readme_is_short_and_keeps_the_two_commands():
    readme = (REPO_ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 200
    assert "make demo" in readme and "make test" in readme


def test_getting_started_shows_the_readme_quick_start():
    """One quick start: the getting-started page's block is the README's, so the test below covers both."""
    assert quick_start((REPO_ROOT / "docs" / "getting-started.md").read_text()) == \
        quick_start((REPO_ROOT / "README.md").read_text())


@pytest.mark.slow
def test_readme_quick_start_runs_as_written(tmp_path):
    """Every line of the README's quick start, in a fresh folder, in one bash process with the installed
    `imgcls` first on PATH: train, export, serve in the background, classify with curl, stop the server.
    The answer is a correct classification by the model just trained."""
    script = quick_start((REPO_ROOT / "README.md").read_text())
    commands = [line for line in script.splitlines() if line.strip()]
    assert [c.split()[:2] for c in commands[1:4]] == [["imgcls", "train"], ["imgcls", "export"], ["imgcls", "serve"]]
    assert commands[4].startswith("curl ") and commands[-1].startswith("kill ")
    env = child_environment({"PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"})
    with socket.socket() as probe:  # the README's server listens on the default port
        assert probe.connect_ex(("127.0.0.1", 3000)) != 0, "port 3000 is taken: the quick start needs it free"
    shell = subprocess.Popen(["bash", "-e", "-c", script], cwd=tmp_path, env=env, start_new_session=True,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        stdout, stderr = shell.communicate(timeout=1200)
    finally:
        stop_group(shell.pid)
    assert shell.returncode == 0, stderr[-4000:]
    # curl's answer ends without a newline: whatever is printed next may follow it on the same line
    answer, _ = json.JSONDecoder().raw_decode(stdout[stdout.rindex('{"model"'):])
    image = re.search(r"images=@(\S+)", commands[4]).group(1)
    assert answer["model"]["name"] == "mine" and answer["results"][0]["filename"] == Path(image).name
    assert answer["results"][0]["predictions"][0]["label"] == Path(image).parent.name, answer["results"][0]


def stop_group(pgid: int, seconds: float = 30) -> None:
    """The quick start's server is stopped by its own `kill %1`; whatever is left of its group goes too."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.2)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)
