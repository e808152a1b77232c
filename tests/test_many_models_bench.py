"""benchmarks.many_models runs end to end on tiny bundles: a real server holding several models, then a
real swap under load. No timing is asserted (figures belong to ``make bench``); the swap's outcome is:
a replaced model loses no request and every answer names the right version."""
from __future__ import annotations

import json
from pathlib import Path

from benchmarks import many_models, run_all
from tests.factories import make_tiny_bundle


def test_many_models_and_a_swap_under_load_on_tiny_bundles(tmp_path: Path) -> None:
    old = make_tiny_bundle(tmp_path / "v1")
    new = make_tiny_bundle(tmp_path / "v2", seed=1)
    out = tmp_path / "results" / "many_models.json"
    assert many_models.main(["--phases", "memory", "swap", "--bundle", str(old), "--bundle-v2", str(new),
                             "--models", "3", "--clients", "4", "--memory-seconds", "1", "--swap-seconds", "1",
                             "--workers", "1", "--workdir", str(tmp_path / "work"), "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    memory = result["memory"]
    assert memory["many_model_server"]["models"] == 3 and memory["one_model_server"]["models"] == 1
    assert set(memory["many_model_server"]["load"]["statuses"]) == {"200"}
    assert len(memory["many_model_server"]["workers_mb"]) == 1
    swap = result["swap"]
    assert swap["load_status"] == 200 and swap["old_version"] != swap["new_version"]
    assert swap["failed"] == 0 and swap["before"]["answers"] > 0 and swap["after"]["answers"] > 0
    assert set(swap["before"]["versions"]) == {swap["old_version"]}
    assert set(swap["after"]["versions"]) == {swap["new_version"]}
    assert swap["goal_met"] is True
    markdown = run_all.render(out.parent)
    assert "| 26 many models | tiny x3 |" in markdown
    assert "| 26 many models | tiny v1 -> v2 |" in markdown
