"""Head-only training: epochs on cached backbone features vs recomputing the backbone (goal >= 20x on
later epochs), plus full fine-tune throughput, all through the real ``imgcls train`` code path.

    python -m benchmarks.train_cache --out results/train_cache.json [--arch efficientnet_lite0]

Each mode is a real run (``imgcls.models.training.cli.main``) on the bundled digits; epoch times are the runs' own
``train_seconds`` from metrics.jsonl (training only, validation excluded). Same machine, same run.
"""
from __future__ import annotations

import argparse
import json
import logging
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.report import markdown_table, write_result

log = logging.getLogger("bench.train_cache")


def _run(data: Path, out: Path, arch: str, weights: str, extra: list[str]) -> tuple[list[dict[str, Any]], float]:
    from imgcls.models.training.cli import main

    started = time.perf_counter()
    code = main(["--data", str(data), "--out", str(out), "--arch", arch, "--weights", weights,
                 "--val-fraction", "0.1", "--patience", "0", "--no-hflip", *extra])
    if code != 0:
        raise SystemExit(f"training run failed with exit code {code}")
    wall = time.perf_counter() - started
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()], wall


def measure(data: Path, work: Path, arch: str, weights: str, epochs: int, batch_size: int) -> dict[str, Any]:
    common = ["--batch-size", str(batch_size), "--loader-workers", "1"]
    recompute, recompute_wall = _run(data, work / "recompute", arch, weights,
                                     ["--strategy", "head", "--no-cached-features", "--epochs", "2", *common])
    cached, cached_wall = _run(data, work / "cached", arch, weights,
                               ["--strategy", "head", "--cached-features", "--epochs", str(epochs), *common])
    finetune, _ = _run(data, work / "finetune", arch, weights, ["--strategy", "finetune", "--epochs", "1", *common])
    recompute_epoch = recompute[-1]["train_seconds"]  # a later epoch: warm caches, as in real training
    cached_epoch = statistics.median(r["train_seconds"] for r in cached[1:])
    images = recompute[-1]["train_images"]
    return {
        "arch": arch, "weights": weights, "train_images": images, "batch_size": batch_size,
        "recompute_epoch_s": recompute_epoch,
        "cached_later_epoch_s": cached_epoch,
        "speedup_later_epochs": recompute_epoch / max(cached_epoch, 1e-9),
        "cached_run_wall_s": cached_wall, "recompute_run_wall_s_2_epochs": recompute_wall,
        "head_frozen_recompute_images_per_s": recompute[-1]["train_images_per_s"],
        "finetune_images_per_s": finetune[-1]["train_images_per_s"],
        "goal_speedup": 20.0,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="write the JSON result here (default: stdout)")
    parser.add_argument("--arch", default="efficientnet_lite0")
    parser.add_argument("--weights", default="imagenet")
    parser.add_argument("--per-class", type=int, default=40, help="digits per class (default 40 -> 400 images)")
    parser.add_argument("--epochs", type=int, default=6, help="cached-feature epochs (the first is excluded)")
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    from imgcls.digits import write_digits

    with tempfile.TemporaryDirectory(prefix="imgcls-bench-") as temp:
        data = Path(temp) / "digits"
        write_digits(data, limit_per_class=args.per_class)
        result = measure(data, Path(temp), args.arch, args.weights, args.epochs, args.batch_size)
    print(markdown_table(
        ["arch", "images", "recompute epoch s", "cached epoch s", "speed-up", "fine-tune img/s"],
        [[result["arch"], result["train_images"], result["recompute_epoch_s"], result["cached_later_epoch_s"],
          result["speedup_later_epochs"], result["finetune_images_per_s"]]],
    ))
    write_result(args.out, "train_cache", result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
