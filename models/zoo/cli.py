"""``imgcls models``: choose a backbone. One row per zoo architecture (params, GFLOPs, ImageNet
accuracy, weights and whether they are here) plus speed measured on this machine.

    imgcls models                                   # the table
    imgcls models --benchmark mobilenet_v2 resnet50 --batch 1,8     # measure, then the table
    imgcls models --max-params 10M --min-top1 75 --sort latency_ms --json
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from imgcls.models.zoo.catalog import FIELDS, CatalogRow

# Sort keys and their direction (True: largest first); missing values always sort last.
SORTS = {"arch": False, "params": False, "gflops": False, "imagenet_top1": True, "imagenet_top5": True,
         "weights_mb": False, "latency_ms": False, "images_per_s": True}


class UsageError(ValueError):
    """Bad options: one line on stderr, exit status 2."""


@dataclass(frozen=True)
class Shortlist:
    max_params: float | None = None
    min_top1: float | None = None
    max_latency_ms: float | None = None
    sort: str | None = None  # None: the zoo's order

    def apply(self, rows: Sequence[CatalogRow]) -> list[CatalogRow]:
        kept = [r for r in rows if self._keeps(r)]
        if self.sort is None:
            return kept
        present = [r for r in kept if getattr(r, self.sort) is not None]
        absent = [r for r in kept if getattr(r, self.sort) is None]
        present.sort(key=lambda r: getattr(r, self.sort), reverse=SORTS[self.sort])
        return present + absent

    def _keeps(self, r: CatalogRow) -> bool:
        """A row whose figure is unknown cannot satisfy a filter on that figure."""
        if self.max_params is not None and r.params > self.max_params:
            return False
        if self.min_top1 is not None and (r.imagenet_top1 is None or r.imagenet_top1 < self.min_top1):
            return False
        return self.max_latency_ms is None or (r.latency_ms is not None and r.latency_ms <= self.max_latency_ms)


def count(text: str) -> float:
    """``5M``, ``500k``, ``2.5e6`` -> a number (parameters)."""
    scale = {"k": 1e3, "m": 1e6, "g": 1e9}.get(text[-1:].lower(), 1.0)
    try:
        return float(text[:-1] if scale != 1.0 else text) * scale
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a count: {text!r} (e.g. 5M, 500k, 2.5e6)") from None


def batches(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        values = ()
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"batch sizes: positive integers separated by commas, got {text!r}")
    return tuple(sorted(set(values)))


def _fmt(value: Any, spec: str = ".3g") -> str:
    return "?" if value is None else format(value, spec)


def _smallest_batch(r: CatalogRow, precision: str, figure: str) -> float | None:
    timed = (r.measured or {}).get(precision) or {}
    return timed[min(timed, key=int)].get(figure) if timed else None


def table(rows: Sequence[CatalogRow], markdown: bool) -> str:
    headers = ["arch", "params M", "GFLOPs", "top-1 %", "top-5 %", "weights MB", "input", "weights",
               "fp32 ms", "int8 ms", "fp32 img/s", "CPU share", "edge (INT8)"]
    cells = [[r.arch, f"{r.params / 1e6:.2f}", f"{r.gflops:.3g}", _fmt(r.imagenet_top1, ".2f"),
              _fmt(r.imagenet_top5, ".2f"), _fmt(r.weights_mb, ".1f"), f"{r.resize}->{r.crop}", r.weights_status,
              _fmt(r.latency_ms), _fmt(_smallest_batch(r, "int8", "latency_ms_p50")), _fmt(r.images_per_s, ".4g"),
              _fmt(_smallest_batch(r, "fp32", "cpu_share"), ".2f"), r.edge]
             for r in rows]
    if markdown:
        lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
        return "\n".join(lines + ["| " + " | ".join(c) + " |" for c in cells])
    widths = [max(len(h), *(len(c[i]) for c in cells)) if cells else len(h) for i, h in enumerate(headers)]
    return "\n".join("  ".join(v.ljust(w) for v, w in zip(line, widths)).rstrip() for line in [headers, *cells])


def footer(machine: dict[str, Any], measured: int) -> str:
    where = f"{machine['cpu']}, {machine['threads']} thread(s), onnxruntime {machine['onnxruntime']}"
    if machine.get("gpu"):
        where += f", {machine['gpu']}"
    return (f"\nGFLOPs: multiply-adds per image (torchvision's convention). Speed: {measured} model(s) measured on "
            f"this machine ({machine['device']}: {where}); ms: median latency at the smallest batch "
            "measured, img/s: throughput at the largest; "
            "CPU share: of the threads' CPU time asked for, what the timed runs got (other load lowers it). "
            "`imgcls models --benchmark ARCH` measures more.")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="imgcls models", description="Compare the zoo's backbones; "
                                "speed measured on this machine.")
    p.add_argument("--benchmark", nargs="*", metavar="ARCH", default=None,
                   help="export and time these architectures (all when none is named) before listing")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--batch", type=batches, default=(1, 8), help="batch sizes to time, e.g. 1,8")
    p.add_argument("--max-seconds", type=float, default=20.0, help="timing budget per model (default 20)")
    p.add_argument("--threads", type=int, default=None, help="ORT intra-op threads (default: all usable CPUs)")
    p.add_argument("--no-int8", action="store_true", help="benchmark fp32 only")
    p.add_argument("--cache-dir", type=Path, default=None,
                   help="benchmark cache (default $IMGCLS_CACHE_DIR, else $XDG_CACHE_HOME/imgcls)")
    p.add_argument("--max-params", type=count, default=None, help="e.g. 10M")
    p.add_argument("--min-top1", type=float, default=None, help="ImageNet top-1, percent")
    p.add_argument("--max-latency-ms", type=float, default=None, help="fp32 latency at the smallest batch measured")
    p.add_argument("--sort", choices=sorted(SORTS), default=None, help="default: the zoo's order")
    out = p.add_mutually_exclusive_group()
    out.add_argument("--json", action="store_true", help="JSON rows (schema: " + ", ".join(FIELDS) + ")")
    out.add_argument("--markdown", action="store_true", help="a Markdown table")
    p.add_argument("--no-progress", action="store_true")
    return p


def run(args: argparse.Namespace) -> int:
    from imgcls.models.zoo.bench import BenchConfig, benchmark, cache_root, load_results
    from imgcls.models.zoo.catalog import catalog
    from imgcls.models.zoo.registry import entry_for

    try:
        config = BenchConfig(cache=cache_root(args.cache_dir), device=args.device, batches=args.batch,
                             max_seconds=args.max_seconds, int8=not args.no_int8, threads=args.threads,
                             progress=not args.no_progress)
        archs = list(args.benchmark or [])
        for arch in archs:
            entry_for(arch)
    except (ValueError, KeyError) as exc:
        raise UsageError(str(exc)) from None
    if args.benchmark is not None:
        from imgcls.models.zoo.registry import ZOO

        results = benchmark(archs or list(ZOO), config)
    else:
        results = load_results(config)
    rows = Shortlist(args.max_params, args.min_top1, args.max_latency_ms, args.sort).apply(catalog(results["models"]))
    if args.json:
        sys.stdout.write(json.dumps({"machine": results["machine"], "rows": [r.to_dict() for r in rows]}, indent=1) + "\n")
    else:
        measured = sum(1 for r in rows if r.measured)
        sys.stdout.write(table(rows, args.markdown) + "\n" + footer(results["machine"], measured) + "\n")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    # Our progress lines only: the exporter and ORT's quantizer log every pass and every weight at INFO.
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("imgcls").setLevel(logging.INFO)
    from imgcls.service.runtime import DeviceError

    try:
        return run(args)
    except (UsageError, DeviceError) as exc:
        sys.stderr.write(f"imgcls models: {exc}\n")
        return 2
    except KeyboardInterrupt:
        sys.stderr.write("imgcls models: interrupted (models measured so far are cached)\n")
        return 130
