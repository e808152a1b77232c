"""The documentation: generated pages match the code, the site builds strictly, the README's quick
start runs as written, and no page tells the project's history."""
from __future__ import annotations

import subprocess
import sys

from imgcls import docs_gen
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
