"""Item 9: ``imgcls score`` on a folder of real-size JPEGs vs raw ONNX Runtime on the same images.

The scoring path is the command itself (``imgcls.service.scoring.cli.main``, in this process so Python start-up
is not counted): list the folder, load and verify the bundle, decode in a thread pool overlapping
batched inference, write a CSV. Raw ORT runs the same images already decoded to uint8 tensors, at
the same batch size and threads. The two alternate, several times, with a short rest before each run.
Goal: scoring >= 0.9x raw ORT (for ResNet-50; MobileNet-v2 is reported: there decoding, not the
network, is most of the work on a small CPU).

    .venv/bin/python -m benchmarks.scoring --out benchmarks/results/scoring.json
"""
from __future__ import annotations

import argparse
import contextlib
import io
import logging
import re
import statistics
import time
from pathlib import Path
from typing import Any

from benchmarks import fixtures
from benchmarks.report import markdown_table, rate, setup_logging, summary_row, time_interleaved, write_result

log = logging.getLogger("bench.scoring")
GOAL = 0.9


def score_once(bundle: Path, folder: Path, out: Path, batch: int, loop_rates: list[float]) -> None:
    """One ``imgcls score`` run; appends the rate it reports for its scoring loop (bundle load excluded)."""
    from imgcls.service.scoring.cli import main as score_main

    captured = io.StringIO()
    with contextlib.redirect_stdout(captured):
        code = score_main([str(bundle), str(folder), "--out", str(out), "--overwrite", "--no-progress",
                           "--batch-size", str(batch)])
    if code != 0:
        raise RuntimeError(f"imgcls score exited {code}")
    reported = re.search(r"([0-9.]+) img/s", captured.getvalue())
    if reported:
        loop_rates.append(float(reported.group(1)))


def measure(arch: str, workdir: Path, jpegs: list[Path], batch: int, threads: int, repeats: int) -> dict[str, Any]:
    import numpy as np

    from imgcls.service.predictor import Predictor

    prepared = fixtures.speed_bundle(arch, workdir)
    started = time.perf_counter()
    with Predictor.load(prepared.bundle_dir, device="cpu") as predictor:
        load_s = time.perf_counter() - started
        pixels = np.stack([predictor.decode(p) for p in jpegs])
    session = fixtures.raw_session(prepared.bundle_dir / "model.onnx", threads)
    name = session.get_inputs()[0].name

    def raw() -> None:
        for start in range(0, len(pixels), batch):
            session.run(None, {name: pixels[start:start + batch]})

    out = workdir / f"scores-{arch}.csv"
    loop_rates: list[float] = []
    timings = time_interleaved({"score": lambda: score_once(prepared.bundle_dir, jpegs[0].parent, out, batch, loop_rates),
                                "raw_ort": raw}, repeats, warmup=1, rest_s=0.3)
    score_rate, raw_rate = rate(len(jpegs), timings["score"]), rate(len(jpegs), timings["raw_ort"])
    rows = out.read_text().count("\n") - 1
    ratio = score_rate["median"] / raw_rate["median"]
    return {"images": len(jpegs), "rows_written": rows, "batch_size": batch, "predictor_load_s": load_s,
            "score_images_per_s": score_rate, "raw_ort_images_per_s": raw_rate, "ratio": ratio,
            "score_loop_images_per_s": statistics.median(loop_rates[1:] or loop_rates) if loop_rates else None,
            "goal": GOAL if arch == "resnet50" else None, "goal_met": ratio >= GOAL if arch == "resnet50" else None}


def summary(result: dict[str, Any]) -> list[dict[str, Any]]:
    return [summary_row("9 scoring", arch, f"imgcls score img/s ({r['images']} JPEGs, {result['long_side']} px)",
                        r["score_images_per_s"]["median"], f"raw ORT {r['raw_ort_images_per_s']['median']:.3g} img/s"
                        + (f"; score loop alone {r['score_loop_images_per_s']:.3g} img/s" if r.get("score_loop_images_per_s") else ""),
                        r["ratio"], ">= 0.9x raw ORT" if r["goal"] else "", r["goal_met"])
            for arch, r in result["models"].items()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archs", nargs="+", default=["resnet50", "mobilenet_v2"])
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--long-side", type=int, default=1024, help="JPEG size: longer side in pixels")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workdir", type=Path, default=fixtures.DEFAULT_WORKDIR)
    parser.add_argument("--quick", action="store_true", help="tiny arch, 8 images, 1 repeat (smoke test)")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    setup_logging()
    if args.quick:
        args.archs, args.images, args.repeats, args.batch_size = ["tiny"], 8, 1, 4
    threads = fixtures.threads_in_use()
    jpegs = fixtures.real_jpegs(args.workdir / f"jpegs-{args.long_side}-{args.images}", args.images, args.long_side)
    started = time.perf_counter()
    models = {arch: measure(arch, args.workdir, jpegs, args.batch_size, threads, args.repeats) for arch in args.archs}
    result = {"threads": threads, "long_side": args.long_side, "models": models, "seconds": time.perf_counter() - started}
    result["summary"] = summary(result)
    write_result(args.out, "scoring", result)
    print(markdown_table(["model", "imgcls score img/s", "raw ORT img/s", "ratio", "goal"],
                         [[a, r["score_images_per_s"]["median"], r["raw_ort_images_per_s"]["median"], r["ratio"],
                           {True: "met", False: "missed", None: "-"}[r["goal_met"]]] for a, r in models.items()]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
