"""Item 1, the limit: measured fp32 FMA peak (large sgemm) / model FLOPs = images/s ceiling; ORT's share.

The peak is the best of several large single-precision matrix products (PyTorch's and NumPy's BLAS)
on the threads imgcls uses; FLOPs per image are counted by ``torch.utils.flop_counter`` on the
checkpoint (2 per multiply-add). ORT fp32 runs the exported bundle on tensors already in memory.
The matrix products and ORT runs alternate in the same rounds; best sample is compared with best
sample (the machine's capability vs ORT's), and the ratio of medians is recorded too.
Goal: ORT reaches >= 75 % of the ceiling for ResNet-50.

    .venv/bin/python -m benchmarks.ceiling --out benchmarks/results/ceiling.json
"""
from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path
from typing import Any, Callable

from benchmarks import fixtures
from benchmarks.report import markdown_table, rate, setup_logging, summary_row, time_interleaved, write_result

log = logging.getLogger("bench.ceiling")
GOAL = 0.75


def sgemm_works(threads: int, n: int) -> dict[str, Callable[[], object]]:
    """n x n x n fp32 matrix products with PyTorch's and NumPy's BLAS on ``threads`` threads."""
    import torch

    torch.set_num_threads(threads)
    a, b = torch.rand(n, n), torch.rand(n, n)
    an, bn = a.numpy(), b.numpy()
    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(threads)  # numpy's BLAS (else its own default thread count)
    except ImportError:
        pass
    return {"sgemm_torch": lambda: a @ b, "sgemm_numpy": lambda: an @ bn}


def model_flops(run_dir: Path) -> float:
    """FLOPs of one image through the checkpoint's network (batch 1, eval mode)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from imgcls.models.training.checkpoint import load_checkpoint

    model, card = load_checkpoint(run_dir)
    size = card.preprocess.crop_size
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(torch.zeros(1, 3, size, size))
    return float(counter.get_total_flops())


def measure(arch: str, workdir: Path, threads: int, gemm_n: int, batches: tuple[int, ...],
            repeats: int) -> dict[str, Any]:
    """sgemm and ORT runs interleaved (with rests), so a noisy neighbour weighs on both alike."""
    prepared = fixtures.speed_bundle(arch, workdir)
    flops = model_flops(prepared.run_dir)
    session = fixtures.raw_session(prepared.bundle_dir / "model.onnx", threads)
    name = session.get_inputs()[0].name
    works = sgemm_works(threads, gemm_n)
    for batch in batches:
        pixels = fixtures.pixel_batch(prepared.bundle_dir, batch)
        works[f"ort_b{batch}"] = lambda pixels=pixels: session.run(None, {name: pixels})
    timings = time_interleaved(works, repeats, warmup=1, rest_s=0.2)
    gemm_flops = 2.0 * gemm_n ** 3
    sgemm = {k: {"gflops_best": gemm_flops / t.min_s / 1e9, "gflops_median": gemm_flops / t.median_s / 1e9}
             for k, t in timings.items() if k.startswith("sgemm")}
    peak = max(v["gflops_best"] for v in sgemm.values())
    ceiling = peak * 1e9 / flops
    ort = {b: {**rate(b, timings[f"ort_b{b}"]), "timing": timings[f"ort_b{b}"].as_dict()} for b in batches}
    best_batch = max(ort, key=lambda b: ort[b]["max"])
    fraction = ort[best_batch]["max"] / ceiling  # best sample vs best sample, from the same rounds
    is_goal = arch == "resnet50"
    return {"gflops_per_image": flops / 1e9, "sgemm": sgemm, "peak_gflops": peak, "gemm_n": gemm_n,
            "ceiling_images_per_s": ceiling, "ort_fp32": ort, "best_batch": best_batch,
            "fraction_of_ceiling": fraction,
            "fraction_of_ceiling_medians": ort[best_batch]["median"] / (max(v["gflops_median"] for v in sgemm.values()) * 1e9 / flops),
            "goal": GOAL if is_goal else None, "goal_met": (fraction >= GOAL) if is_goal else None}


def summary(result: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for arch, r in result["models"].items():
        rows.append(summary_row("1 limit", arch, "sgemm fp32 peak (GFLOP/s), best sample", r["peak_gflops"],
                                f"n={r['gemm_n']}, {result['threads']} threads, torch and numpy BLAS"))
        best = r["ort_fp32"][r["best_batch"]]["max"]
        rows.append(summary_row(
            "1 limit", arch, f"ORT fp32 img/s (batch {r['best_batch']}, best sample) vs ceiling", best,
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
    models = {arch: measure(arch, args.workdir, threads, args.gemm_size, tuple(args.batches), args.repeats)
              for arch in args.archs}
    result = {"threads": threads, "models": models, "seconds": time.perf_counter() - started}
    result["summary"] = summary(result)
    write_result(args.out, "ceiling", result)
    print(markdown_table(
        ["model", "GFLOP/img", "ceiling img/s", "ORT img/s (best batch)", "fraction", "goal"],
        [[a, r["gflops_per_image"], r["ceiling_images_per_s"], r["ort_fp32"][r["best_batch"]]["max"],
          r["fraction_of_ceiling"], "met" if r["goal_met"] else ("missed" if r["goal_met"] is False else "-")]
         for a, r in models.items()]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
