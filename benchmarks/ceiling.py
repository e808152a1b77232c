"""Item 1, the limit: measured fp32 FMA peak (large sgemm) / model FLOPs = images/s ceiling; ORT's share.

The peak is the best of several large single-precision matrix products (PyTorch's and NumPy's BLAS)
on the threads imgcls uses; FLOPs per image are counted by ``torch.utils.flop_counter`` on the
checkpoint (2 per multiply-add). ORT fp32 runs the exported bundle on tensors already in memory.
Goal: ORT reaches >= 75 % of the ceiling for ResNet-50.

    .venv/bin/python -m benchmarks.ceiling --out benchmarks/results/ceiling.json
"""
from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path
from typing import Any

from benchmarks import fixtures
from benchmarks.report import markdown_table, rate, setup_logging, summary_row, time_repeated, write_result

log = logging.getLogger("bench.ceiling")
GOAL = 0.75


def sgemm_peak(threads: int, n: int, repeats: int) -> dict[str, Any]:
    """GFLOP/s of an n x n x n fp32 matmul: torch and numpy, median and best of ``repeats``."""
    import numpy as np
    import torch

    torch.set_num_threads(threads)
    flops = 2.0 * n ** 3
    a, b = torch.rand(n, n), torch.rand(n, n)
    results = {"torch": time_repeated(lambda: a @ b, repeats)}
    an, bn = a.numpy(), b.numpy()
    try:
        from threadpoolctl import threadpool_limits

        with threadpool_limits(threads):
            results["numpy"] = time_repeated(lambda: an @ bn, repeats)
    except ImportError:  # numpy's BLAS then uses its own default thread count
        results["numpy"] = time_repeated(lambda: an @ bn, repeats)
    per_library = {name: {"gflops_median": flops / t.median_s / 1e9, "gflops_best": flops / t.min_s / 1e9}
                   for name, t in results.items()}
    best = max(per_library, key=lambda k: per_library[k]["gflops_best"])
    return {"n": n, "threads": threads, "libraries": per_library, "peak_library": best,
            "peak_gflops": per_library[best]["gflops_best"]}


def model_flops(run_dir: Path) -> float:
    """FLOPs of one image through the checkpoint's network (batch 1, eval mode)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from models.checkpoint import load_checkpoint

    model, card = load_checkpoint(run_dir)
    size = card.preprocess.crop_size
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(torch.zeros(1, 3, size, size))
    return float(counter.get_total_flops())


def ort_throughput(bundle_dir: Path, threads: int, batches: tuple[int, ...], repeats: int) -> dict[int, dict[str, float]]:
    session = fixtures.raw_session(bundle_dir / "model.onnx", threads)
    name = session.get_inputs()[0].name
    out = {}
    for batch in batches:
        pixels = fixtures.pixel_batch(bundle_dir, batch)
        timing = time_repeated(lambda: session.run(None, {name: pixels}), repeats)
        out[batch] = {**rate(batch, timing), "timing": timing.as_dict()}
    return out


def measure(arch: str, workdir: Path, threads: int, peak_gflops: float, batches: tuple[int, ...],
            repeats: int) -> dict[str, Any]:
    prepared = fixtures.speed_bundle(arch, workdir)
    flops = model_flops(prepared.run_dir)
    ceiling = peak_gflops * 1e9 / flops
    ort = ort_throughput(prepared.bundle_dir, threads, batches, repeats)
    best_batch = max(ort, key=lambda b: ort[b]["median"])
    fraction = ort[best_batch]["median"] / ceiling
    return {"gflops_per_image": flops / 1e9, "ceiling_images_per_s": ceiling, "ort_fp32": ort,
            "best_batch": best_batch, "fraction_of_ceiling": fraction,
            "fraction_by_batch": {b: r["median"] / ceiling for b, r in ort.items()},
            "goal": GOAL if arch == "resnet50" else None,
            "goal_met": (fraction >= GOAL) if arch == "resnet50" else None}


def summary(result: dict[str, Any]) -> list[dict[str, Any]]:
    rows = [summary_row("1 limit", "-", "sgemm fp32 peak (GFLOP/s)", result["peak"]["peak_gflops"],
                        f"{result['peak']['peak_library']} n={result['peak']['n']}, {result['threads']} threads")]
    for arch, r in result["models"].items():
        best = r["ort_fp32"][r["best_batch"]]["median"]
        rows.append(summary_row(
            "1 limit", arch, f"ORT fp32 img/s (batch {r['best_batch']}) vs ceiling", best,
            f"ceiling {r['ceiling_images_per_s']:.3g} img/s ({r['gflops_per_image']:.3g} GFLOP/img)",
            r["fraction_of_ceiling"], ">= 0.75 of ceiling" if r["goal"] else "", r["goal_met"]))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archs", nargs="+", default=["mobilenet_v2", "resnet50"])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--gemm-size", type=int, default=3072)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--workdir", type=Path, default=fixtures.DEFAULT_WORKDIR)
    parser.add_argument("--quick", action="store_true", help="tiny arch, small gemm, 2 repeats (smoke test)")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    setup_logging()
    if args.quick:
        args.archs, args.batches, args.gemm_size, args.repeats = ["tiny"], [1, 4], 512, 2
    threads = fixtures.threads_in_use()
    started = time.perf_counter()
    peak = sgemm_peak(threads, args.gemm_size, args.repeats)
    models = {arch: measure(arch, args.workdir, threads, peak["peak_gflops"], tuple(args.batches), args.repeats)
              for arch in args.archs}
    result = {"threads": threads, "peak": peak, "models": models, "seconds": time.perf_counter() - started}
    result["summary"] = summary(result)
    write_result(args.out, "ceiling", result)
    print(markdown_table(
        ["model", "GFLOP/img", "ceiling img/s", "ORT img/s (best batch)", "fraction", "goal"],
        [[a, r["gflops_per_image"], r["ceiling_images_per_s"], r["ort_fp32"][r["best_batch"]]["median"],
          r["fraction_of_ceiling"], "met" if r["goal_met"] else ("missed" if r["goal_met"] is False else "-")]
         for a, r in models.items()]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
