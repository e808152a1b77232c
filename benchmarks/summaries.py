"""RESULTS.md: one row per figure, from each benchmark's JSON.

Our scripts put a ``summary`` list of rows (``report.summary_row``) in their JSON; for the scripts
other helpers own (items 3, 4, 5, 8) the adapters below read their own keys.
"""
from __future__ import annotations

import math
import re
from typing import Any, Callable, Iterable

from benchmarks import peers_report
from benchmarks.report import summary_row

HEADERS = ("item", "model", "figure", "value", "baseline (same run)", "ratio", "goal", "goal met")


def decode_draft_rows(r: dict[str, Any]) -> list[dict[str, Any]]:
    ms = r["draft_decode_resize"]["median_s"] * 1e3
    return [summary_row("4 draft decode", "-", f"draft decode+resize ms ({r['image'].split(' (')[0]})", ms,
                        f"full decode+resize {r['full_decode_resize']['median_s'] * 1e3:.3g} ms", r["speedup"],
                        ">= 3x, top-1 unchanged", bool(r["goal_met"] and r["top1_unchanged"]))]


def predictor_rows(r: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for arch, m in r["results"].items():
        rates = m["images_per_s"]
        is_goal = arch == "resnet50"
        rows.append(summary_row("3 predictor", arch, f"Predictor img/s ({r['images']} JPEGs {r['jpeg_size'][0]}x{r['jpeg_size'][1]})",
                                rates["predictor"], f"raw ORT {rates['raw_ort']:.3g} img/s", m["ratio_predictor_to_raw"],
                                ">= 0.9x raw ORT" if is_goal else "", m["ratio_predictor_to_raw"] >= 0.9 if is_goal else None))
        rows.append(summary_row("3 predictor", arch, "decode share of CPU work per image", m["decode_share_of_cpu_work"],
                                f"decode {m['decode_ms_per_image']:.3g} ms/img on 1 thread"))
    return rows


def bundle_arch(bundle: str) -> str:
    """The architecture of a bundle path: from the folder name benchmarks.fixtures gives it
    (``speed-ARCH[-int8][-fp16]/bundle``), so the table renders the same on a machine without the
    bundles (docs/benchmarks.md is checked against it); else from its card, else the string as given."""
    import json
    from pathlib import Path

    match = re.search(r"speed-([A-Za-z0-9_]+?)(?:-int8)?(?:-fp16)?/bundle/?$", bundle)
    if match:
        return match.group(1)
    try:
        return str(json.loads((Path(bundle) / "card.json").read_text())["arch"])
    except (OSError, ValueError, KeyError):
        return bundle


def http_load_rows(r: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for level in r["levels"]:
        c = level["concurrency"]
        rows.append(summary_row(
            "5 HTTP", bundle_arch(str(r.get("bundle", ""))),
            f"/classify req/s, {r.get('workers', 1)} worker(s), c={c} "
            f"(p50 {level['p50_ms']:.0f} ms, p99 {level['p99_ms']:.0f} ms)",
            level["throughput_rps"], f"in-process Predictor {r['in_process_img_per_s']:.3g} img/s",
            level["vs_in_process"], ">= 0.85x at c=16" if c == 16 else "", level["vs_in_process"] >= 0.85 if c == 16 else None))
    return rows


def train_cache_rows(r: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        summary_row("8 training", r["arch"], f"head epoch s on cached features ({r['train_images']} images)",
                    r["cached_later_epoch_s"], f"recomputing the backbone {r['recompute_epoch_s']:.3g} s/epoch",
                    r["speedup_later_epochs"], f">= {r.get('goal_speedup', 20):g}x on later epochs",
                    r["speedup_later_epochs"] >= r.get("goal_speedup", 20)),
        summary_row("8 training", r["arch"], "full fine-tune img/s", r["finetune_images_per_s"],
                    f"frozen-backbone recompute {r['head_frozen_recompute_images_per_s']:.3g} img/s"),
    ]


def prepare_rows(r: dict[str, Any]) -> list[dict[str, Any]]:
    return [summary_row("-", b["arch"] + (" +INT8" if b["recipe"].get("int8") else ""),
                        "bundle prepared (s; 0 = cached)", b["prepared_s"],
                        str(b["recipe"].get("weights", b["recipe"].get("kind", ""))))
            for b in r.get("bundles", []) if b["prepared_s"] > 0]  # cached ones cost nothing this run


ADAPTERS: dict[str, Callable[[dict[str, Any]], list[dict[str, Any]]]] = {
    "decode_draft": decode_draft_rows, "predictor_throughput": predictor_rows, "http_load": http_load_rows,
    "http_load_workers1": http_load_rows,
    "train_cache": train_cache_rows, "fixtures": prepare_rows,
}


def rows_for(name: str, result: dict[str, Any]) -> list[dict[str, Any]]:
    if "summary" in result:
        return list(result["summary"])
    adapter = ADAPTERS.get(name)
    if adapter is None:
        return []
    try:
        return adapter(result)
    except (KeyError, TypeError, ValueError, ZeroDivisionError) as exc:
        return [summary_row(name, "-", f"result not understood ({type(exc).__name__}: {exc})", "-")]


def cell(value: Any) -> str:
    if value is None or value == "":
        return ""
    if isinstance(value, bool):
        return "**met**" if value else "**MISSED**"
    if isinstance(value, float):
        if math.isnan(value) or math.isinf(value):
            return str(value)
        return f"{value:.3g}"
    return str(value).replace("|", "/")


def table(rows: Iterable[dict[str, Any]]) -> str:
    lines = ["| " + " | ".join(HEADERS) + " |", "|" + "---|" * len(HEADERS)]
    for r in rows:
        ratio = f"{r['ratio']:.2f}x" if isinstance(r.get("ratio"), float) else cell(r.get("ratio"))
        values = [r["item"], r["model"], r["figure"], cell(r["value"]), r["baseline"], ratio, r["goal"], cell(r["met"])]
        lines.append("| " + " | ".join(cell(v) if not isinstance(v, str) else v.replace("|", "/") for v in values) + " |")
    return "\n".join(lines)


def machine_line(run: dict[str, Any], results: dict[str, dict[str, Any]]) -> str:
    info = run.get("machine") or next((r["machine"] for r in results.values() if "machine" in r), {})
    if not info:
        return "machine: unknown"
    isa = ", ".join(k for k in ("avx2", "avx512f", "vnni") if info.get(k))
    return (f"{info.get('cpu', '?')}, {info.get('cores_usable', '?')} usable cores ({isa}), "
            f"Python {info.get('python', '?')}, no GPU; date {info.get('date', '?')}")


def gpu_section(result: dict[str, Any] | None) -> list[str]:
    """Item 11 comes from a separate run on a GPU machine (``benchmarks/gpu_check.sh``), if any."""
    if result is None:
        return ["GPU (item 11): not measured in this run (no GPU on this machine); "
                "`benchmarks/gpu_check.sh` on a GPU machine writes `results/gpu_check.json`, which this table then includes.", ""]
    device = result.get("device", {})
    return [f"## GPU (item 11): {device.get('nvidia_smi') or device.get('torch_device')}, "
            f"onnxruntime {device.get('onnxruntime')}, torch {device.get('torch')}, date {result.get('machine', {}).get('date', '?')}",
            "", table(result.get("summary", [])), ""]


def render_markdown(results: dict[str, dict[str, Any]], run: dict[str, Any], benchmarks: Iterable[Any]) -> str:
    order = [b.name for b in benchmarks]
    statuses = run.get("statuses", {})
    rows: list[dict[str, Any]] = []
    problems = []
    for name in order + sorted(set(results) - set(order) - {"gpu_check"}):
        status = statuses.get(name, {})
        if status and status.get("status") != "ok":
            problems.append(f"- `{name}`: {status['status']} — {status.get('detail', '')}")
            if status.get("status") != "ok" and name in results:
                problems[-1] += " (the row below is from an earlier run)"
        if name in results:
            rows.extend(rows_for(name, results[name]))
    met = [r for r in rows if r.get("met") is True]
    missed = [r for r in rows if r.get("met") is False]
    text = [
        "# imgcls benchmark results", "",
        f"Machine: {machine_line(run, results)}.",
        f"Run: `make bench` (`python -m benchmarks.run_all`), commit {run.get('commit', '?')}, "
        f"{run.get('seconds', 0) / 60:.1f} min in all. Timings are medians of repeated runs; every ratio "
        "compares two figures measured in the same run on the same machine.", "",
        f"Goals: {len(met)} met, {len(missed)} missed"
        + (": " + "; ".join(f"{r['item']} {r['model']} ({r['goal']})" for r in missed) if missed else "") + ".", "",
        table(rows), "",
    ]
    if problems:
        text += ["Benchmarks that did not finish:", *problems, ""]
    text += gpu_section(results.get("gpu_check"))
    text += peers_report.section(results.get("peers"))
    text += [
        "Models: MobileNet-v2 and ResNet-50 are random-init backbones + heads (no ImageNet weights for them",
        "offline) saved as real checkpoints and exported by the real `export_bundle`: their speed, FLOPs and",
        "sizes are real, their accuracy is not. efficientnet_lite0 has real ImageNet weights; its head is",
        "trained by `imgcls train` on the bundled digits (the demo's recipe), so its INT8 accuracy is real.",
        "JPEGs are scikit-image's bundled photographs re-encoded at real-world sizes.", "",
        "Reproduce: `make bench` (about 10 minutes on 2 quiet cores; bundles are cached in `.bench-out/work`).",
        "One benchmark: `.venv/bin/python -m benchmarks.<name> --out /tmp/x.json`; the table alone:",
        "`.venv/bin/python -m benchmarks.run_all --render-only`. On a GPU machine: `benchmarks/gpu_check.sh`.",
        "",
    ]
    return "\n".join(text)
