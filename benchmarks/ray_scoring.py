"""Item 14: ``imgcls score --engine ray`` vs the single-process scorer, on the same JPEGs, same run.

Both engines run their real code paths and stream the same rows: the single-process scorer's loop
(``Predictor.load`` + ``predict_batches`` + ``to_row``, all CPUs to one process) and the Ray
engine's job (``ray_engine.scored_dataset``: an actor pool, one Predictor per actor with the
actor's CPU share of ORT threads, rows back as Arrow batches). The Ray runtime is started once
(its start-up is reported, as a cluster that is already up would not pay it); each run starts
its own actors, and that start-up is in its figure. Per engine:

* images/s end to end: images / seconds from the call to the last row (bundle load, actor start-up,
  decode, inference, rows back), the median of alternating runs;
* first row after (s): the fixed start-up cost, which a long job amortises. On a cluster the
  per-node throughput (what the README's plan multiplies) is the end-to-end figure of a job long
  enough for this to vanish.

Runs alternate (local, ray, local, ray, ...) so a noisy neighbour hurts both alike.
Goal: ray >= 0.8x local (end to end).

    .venv/bin/python -m benchmarks.ray_scoring --out benchmarks/results/ray_scoring.json
"""
from __future__ import annotations

import argparse
import logging
import os
import statistics
import time
from pathlib import Path
from typing import Any, Callable, Iterable

from benchmarks import fixtures
from benchmarks.report import markdown_table, setup_logging, summary_row, write_result

log = logging.getLogger("bench.ray_scoring")
GOAL = 0.8


def clocked(batches: Iterable[int], started: float) -> dict[str, float]:
    """Consume batches (their row counts): total rows, seconds to the first batch and to the end."""
    rows, first_s = 0, None
    for count in batches:
        rows += count
        if first_s is None:
            first_s = time.perf_counter() - started
    return {"rows": rows, "first_batch_s": first_s or 0.0, "total_s": time.perf_counter() - started}


def local_run(bundle: Path, paths: list[str], batch: int, k: int) -> dict[str, float]:
    from imgcls.service.predictor import Predictor
    from imgcls.service.scoring.results import to_row

    started = time.perf_counter()
    with Predictor.load(bundle, device="cpu") as predictor:
        batches = (len([to_row(p, r) for p, r in scored])
                   for scored in predictor.predict_batches(paths, top_k=k, batch_size=batch))
        return clocked(batches, started)


def ray_run(ray: Any, bundle: Path, paths: list[str], batch: int, k: int) -> dict[str, float]:
    from imgcls.service.scoring.ray_engine import RayOptions, actor_spec, scored_dataset

    options = RayOptions()
    started = time.perf_counter()
    spec = actor_spec(bundle, "fp32", "cpu", k, batch, options, None, None)
    dataset = scored_dataset(ray, paths, spec, options, progress=False)
    batches = (table.num_rows for table in dataset.iter_batches(batch_size=None, batch_format="pyarrow"))
    return clocked(batches, started)


def alternate(works: dict[str, Callable[[], dict[str, float]]], repeats: int,
              rest_s: float = 0.5) -> dict[str, list[dict[str, float]]]:
    """Rounds of one run of each engine, engines alternating, so a noisy neighbour hurts both alike."""
    samples: dict[str, list[dict[str, float]]] = {name: [] for name in works}
    for round_index in range(repeats):
        for name, work in works.items():
            time.sleep(rest_s)
            sample = work()
            sample["images_per_s"] = sample["rows"] / sample["total_s"]
            samples[name].append(sample)
            log.info("round %d %s: %s", round_index + 1, name, {k: round(v, 2) for k, v in sample.items()})
    return samples


def medians(samples: list[dict[str, float]]) -> dict[str, float]:
    return {key: statistics.median(s[key] for s in samples) for key in samples[0]}


def measure(arch: str, workdir: Path, paths: list[str], batch: int, repeats: int) -> dict[str, Any]:
    from imgcls.service.scoring.ray_engine import import_ray

    bundle = fixtures.speed_bundle(arch, workdir).bundle_dir
    ray = import_ray()
    started = time.perf_counter()
    ray.init(num_cpus=fixtures.threads_in_use(), include_dashboard=False, logging_level=logging.WARNING)
    init_s = time.perf_counter() - started
    try:
        ray.data.DataContext.get_current().enable_progress_bars = False
        samples = alternate({"local": lambda: local_run(bundle, paths, batch, 5),
                             "ray": lambda: ray_run(ray, bundle, paths, batch, 5)}, repeats)
        actors = int(ray.cluster_resources().get("CPU", 1))
    finally:
        ray.shutdown()
    local, remote = medians(samples["local"]), medians(samples["ray"])
    ratio = remote["images_per_s"] / local["images_per_s"]
    paired = [r["images_per_s"] / l["images_per_s"] for l, r in zip(samples["local"], samples["ray"])]
    return {"images": len(paths), "batch_size": batch, "ray_init_s": init_s, "ray_actors": actors,
            "local": local, "ray": remote, "samples": samples, "ratio": ratio, "ratio_per_round": paired,
            "goal": GOAL, "goal_met": ratio >= GOAL}


def summary(result: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for arch, r in result["models"].items():
        local, remote = r["local"], r["ray"]
        what = (f"{r['images']} JPEGs {result['long_side']} px, {r['ray_actors']} actors x 1 CPU; "
                f"first row after {remote['first_batch_s']:.1f} s vs {local['first_batch_s']:.1f} s; "
                f"ratio per round {', '.join(f'{x:.2f}' for x in r['ratio_per_round'])}")
        rows.append(summary_row("14 ray scoring", arch, f"--engine ray img/s end to end ({what})",
                                remote["images_per_s"], f"single process {local['images_per_s']:.3g} img/s",
                                r["ratio"], ">= 0.8x single process", r["goal_met"]))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archs", nargs="+", default=["mobilenet_v2"])
    parser.add_argument("--images", type=int, default=1440)
    parser.add_argument("--long-side", type=int, default=640, help="JPEG size: longer side in pixels")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workdir", type=Path, default=fixtures.DEFAULT_WORKDIR)
    parser.add_argument("--quick", action="store_true", help="tiny arch, 16 images, 1 repeat (smoke test)")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    setup_logging()
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if args.quick:
        args.archs, args.images, args.repeats, args.batch_size = ["tiny"], 24, 1, 4
    jpegs = fixtures.real_jpegs(args.workdir / f"jpegs-{args.long_side}-{args.images}", args.images, args.long_side)
    paths = [str(p) for p in jpegs]
    started = time.perf_counter()
    models = {arch: measure(arch, args.workdir, paths, args.batch_size, args.repeats) for arch in args.archs}
    result = {"threads": fixtures.threads_in_use(), "long_side": args.long_side, "models": models,
              "seconds": time.perf_counter() - started}
    result["summary"] = summary(result)
    write_result(args.out, "ray_scoring", result)
    print(markdown_table(["model", "ray img/s", "single-process img/s", "ratio", "ray first row s", "goal"],
                         [[a, r["ray"]["images_per_s"], r["local"]["images_per_s"], r["ratio"],
                           r["ray"]["first_batch_s"], "met" if r["goal_met"] else "missed"] for a, r in models.items()]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
