"""The cheapest benchmark scripts run end to end in their tiny mode, and the table renders.

No figure is asserted (timings belong to ``make bench``); this only keeps the scripts from rotting:
real export of a tiny bundle, real ORT and PyTorch runs, the real ``imgcls score`` path.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from benchmarks import ceiling, ort_vs_torch, run_all, scoring


def test_quick_benchmarks_write_json_and_the_table(tmp_path: Path) -> None:
    work, out = tmp_path / "work", tmp_path / "results"
    for module in (ceiling, ort_vs_torch, scoring):
        name = module.__name__.rsplit(".", 1)[-1]
        assert module.main(["--quick", "--workdir", str(work), "--out", str(out / f"{name}.json")]) == 0

    ceiling_result = json.loads((out / "ceiling.json").read_text())
    tiny = ceiling_result["models"]["tiny"]
    assert tiny["peak_gflops"] > 0 and tiny["gflops_per_image"] > 0 and tiny["ceiling_images_per_s"] > 0
    pair = json.loads((out / "ort_vs_torch.json").read_text())["models"]["tiny"]
    assert set(pair["batches"]) == {"1", "4"}
    assert pair["max_abs_logit_diff"] < 1e-3  # the same weights on both sides
    scored = json.loads((out / "scoring.json").read_text())["models"]["tiny"]
    assert scored["rows_written"] == scored["images"] == 8

    markdown = run_all.render(out)
    assert "| 1 limit | tiny |" in markdown
    assert "| 2 ORT vs eager | tiny | ORT fp32 img/s, batch 4 |" in markdown
    assert "| 9 scoring | tiny |" in markdown
    assert "Machine: " in markdown


def _strings(value):
    if isinstance(value, dict):
        for item in value.values():
            yield from _strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)
    elif isinstance(value, str):
        yield value


def names_a_folder(text: str) -> bool:
    """An absolute path into one of this machine's top-level folders (``/tmp/...``, ``/root/...``), as
    opposed to a route such as ``/v2 infer``."""
    first = text.split()[0] if text.split() else ""
    parts = Path(first).parts
    return first.startswith("/") and len(parts) > 2 and parts[1] in set(os.listdir("/"))


def test_committed_results_name_no_folder_of_the_machine_that_made_them():
    from tests.conftest import REPO_ROOT

    results = sorted((REPO_ROOT / "benchmarks" / "results").glob("*.json"))
    assert results, "no committed benchmark results"
    for path in results:
        absolute = [s for s in _strings(json.loads(path.read_text())) if str(REPO_ROOT) in s or names_a_folder(s)]
        assert not absolute, (path.name, absolute[:3])


def test_portable_rewrites_this_machines_paths():
    from benchmarks.report import REPO_ROOT, portable

    out = portable({"a": [str(REPO_ROOT / "x" / "y")], "b": str(Path.home() / "z"), "c": "plain"})
    assert out == {"a": ["./x/y"], "b": "~/z", "c": "plain"}

def test_render_only_prints_the_table_and_leaves_the_tracked_file_alone(tmp_path: Path, capsys) -> None:
    tracked = run_all.DEFAULT_MD
    before = tracked.read_bytes() if tracked.exists() else None
    (tmp_path / "ceiling.json").write_text(json.dumps({"models": {}}))
    assert run_all.main(["--render-only", "--out-dir", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert "Machine: " in printed  # the table, on stdout
    assert (tracked.read_bytes() if tracked.exists() else None) == before
    chosen = tmp_path / "table.md"
    assert run_all.main(["--render-only", "--out-dir", str(tmp_path), "--markdown", str(chosen)]) == 0
    assert chosen.read_text() == printed
