"""Item 7: INT8 vs fp32 — file size, throughput, top-1 accuracy on the validation split.

Accuracy and agreement are the export's own INT8 gate figures (``card.export["int8"]["gate"]``,
measured by ``imgcls export --int8`` on the run's validation split); size comes from the card;
throughput is measured here with raw ONNX Runtime on real photos at batch 1 and 8, fp32 and INT8
alternating run by run. Models: efficientnet_lite0 (real ImageNet weights, head trained on the digits:
the demo's recipe, or ``make demo``'s own bundle when present) and MobileNet-v2 (random-init: its
size and speed are real, its accuracy is chance and says nothing about quantization).

    .venv/bin/python -m benchmarks.int8 --out benchmarks/results/int8.json
"""
from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path
from typing import Any

from benchmarks import fixtures
from benchmarks.report import markdown_table, rate, setup_logging, summary_row, time_interleaved, write_result

log = logging.getLogger("bench.int8")


def speeds(bundle_dir: Path, threads: int, batches: tuple[int, ...], repeats: int) -> dict[int, dict[str, Any]]:
    sessions = {p: fixtures.raw_session(bundle_dir / f, threads) for p, f in (("fp32", "model.onnx"), ("int8", "model.int8.onnx"))}
    out: dict[int, dict[str, Any]] = {}
    for batch in batches:
        pixels = fixtures.pixel_batch(bundle_dir, batch)
        works = {p: (lambda s=s: s.run(None, {s.get_inputs()[0].name: pixels})) for p, s in sessions.items()}
        timings = time_interleaved(works, repeats, warmup=2, rest_s=0.3)
        rates = {p: rate(batch, t) for p, t in timings.items()}
        out[batch] = {"fp32_images_per_s": rates["fp32"], "int8_images_per_s": rates["int8"],
                      "speed_ratio": rates["int8"]["median"] / rates["fp32"]["median"]}
    return out


def measure(prepared: fixtures.Prepared, threads: int, batches: tuple[int, ...], repeats: int,
            accuracy_meaningful: bool) -> dict[str, Any]:
    from imgcls.models.core.card import ModelCard

    card = ModelCard.load(prepared.bundle_dir)
    files = card.export.get("files", {})
    section = card.export.get("int8", {})
    result: dict[str, Any] = {
        "recipe": prepared.recipe, "bundle": str(prepared.bundle_dir), "int8_status": section.get("status", "absent"),
        "int8_settings": {k: v for k, v in section.items() if k not in ("gate", "status")},
        "gate": section.get("gate", {}), "accuracy_meaningful": accuracy_meaningful,
        "fp32_bytes": files.get("model.onnx", {}).get("bytes"),
        "int8_bytes": files.get("model.int8.onnx", {}).get("bytes"),
    }
    if result["int8_bytes"]:
        result["size_ratio"] = result["int8_bytes"] / result["fp32_bytes"]
        result["throughput"] = speeds(prepared.bundle_dir, threads, batches, repeats)
    return result


def refused_rows(arch: str, r: dict[str, Any]) -> list[dict[str, Any]]:
    """INT8 not in the bundle: the export gate's own figures say why (measured before it refused)."""
    gate = r["gate"]
    if not gate:
        return [summary_row("7 INT8", arch, f"INT8 {r['int8_status']}", r["int8_settings"].get("reason", "-"))]
    return [
        summary_row("7 INT8", arch, "INT8 file MB (refused by the export gate, not kept)", gate["int8_bytes"] / 1e6,
                    f"fp32 {gate['fp32_bytes'] / 1e6:.3g} MB", gate["size_ratio"]),
        summary_row("7 INT8", arch, f"INT8 img/s, batch {gate['benchmark_batch']} (export gate)",
                    gate["int8_images_per_s"], f"fp32 {gate['fp32_images_per_s']:.3g} img/s", gate["speed_ratio"]),
        summary_row("7 INT8", arch, f"INT8 top-1 on {gate['images']} val images", gate["int8_top1"],
                    f"fp32 top-1 {gate['fp32_top1']:.3f}, agreement {gate['top1_agreement']:.3f}", None,
                    f"drop <= {gate['max_accuracy_drop_points']:g} points (export gate)", False),
    ]


def summary(result: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for arch, r in result["models"].items():
        gate = r["gate"]
        if not r.get("int8_bytes"):
            rows += refused_rows(arch, r)
            continue
        rows.append(summary_row("7 INT8", arch, "INT8 file MB", r["int8_bytes"] / 1e6,
                                f"fp32 {r['fp32_bytes'] / 1e6:.3g} MB", r["size_ratio"]))
        for batch, t in r["throughput"].items():
            rows.append(summary_row("7 INT8", arch, f"INT8 img/s, batch {batch}", t["int8_images_per_s"]["median"],
                                    f"fp32 {t['fp32_images_per_s']['median']:.3g} img/s", t["speed_ratio"]))
        note = "" if r["accuracy_meaningful"] else " (random weights: chance level, not meaningful)"
        rows.append(summary_row(
            "7 INT8", arch, f"INT8 top-1 on {gate.get('images')} val images{note}", gate.get("int8_top1"),
            f"fp32 top-1 {gate.get('fp32_top1', float('nan')):.3f}, agreement {gate.get('top1_agreement', float('nan')):.3f}",
            None, f"drop <= {gate.get('max_accuracy_drop_points')} points (export gate)",
            (gate.get("accuracy_drop_points", 0) <= gate.get("max_accuracy_drop_points", 1)) if r["accuracy_meaningful"] else None))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--per-class", type=int, default=40, help="digits per class for the efficientnet_lite0 run")
    parser.add_argument("--no-demo-bundle", action="store_true", help="ignore bundles/demo from `make demo`")
    parser.add_argument("--workdir", type=Path, default=fixtures.DEFAULT_WORKDIR)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    setup_logging()
    threads = fixtures.threads_in_use()
    started = time.perf_counter()
    lite0 = fixtures.demo_bundle(args.workdir, fixtures.DemoRecipe(per_class=args.per_class),
                                 use_demo=not args.no_demo_bundle)
    mobilenet = fixtures.speed_bundle("mobilenet_v2", args.workdir, int8=True)
    models = {"efficientnet_lite0": measure(lite0, threads, tuple(args.batches), args.repeats, True),
              "mobilenet_v2": measure(mobilenet, threads, tuple(args.batches), args.repeats, False)}
    result = {"threads": threads, "models": models, "seconds": time.perf_counter() - started}
    result["summary"] = summary(result)
    write_result(args.out, "int8", result)
    print(markdown_table(["item", "model", "figure", "value", "baseline", "ratio"],
                         [[r["item"], r["model"], r["figure"], r["value"], r["baseline"], r["ratio"] or ""]
                          for r in result["summary"]]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
