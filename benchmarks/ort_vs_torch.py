"""Item 2: raw ONNX Runtime vs PyTorch eager at batch 1 / 8 / 32, same weights, same threads.

Both get tensors already in memory: ORT the bundle's uint8 pixels (the graph normalises), PyTorch
the checkpoint's model on the same pixels normalised beforehand, under ``torch.inference_mode``.
The two alternate run by run with a 0.3 s rest before each (idle ORT and OpenMP threads spin for a
while after a run and would otherwise slow the next one); a noisy neighbour then weighs on both
alike, though PyTorch's OpenMP threads suffer more from CPU contention than ORT's pool; the ratio is ORT images/s over PyTorch images/s.

    .venv/bin/python -m benchmarks.ort_vs_torch --out benchmarks/results/ort_vs_torch.json
"""
from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path
from typing import Any

from benchmarks import fixtures
from benchmarks.report import markdown_table, rate, setup_logging, summary_row, time_interleaved, write_result

log = logging.getLogger("bench.ort_vs_torch")


def measure(arch: str, workdir: Path, threads: int, batches: tuple[int, ...], repeats: int) -> dict[str, Any]:
    import numpy as np
    import torch

    from imgcls.models.training.checkpoint import load_checkpoint

    torch.set_num_threads(threads)
    prepared = fixtures.speed_bundle(arch, workdir)
    model, card = load_checkpoint(prepared.run_dir)
    session = fixtures.raw_session(prepared.bundle_dir / "model.onnx", threads)
    name = session.get_inputs()[0].name
    rows: dict[int, Any] = {}
    for batch in batches:
        pixels = fixtures.pixel_batch(prepared.bundle_dir, batch)
        tensor = torch.from_numpy(card.preprocess.normalize(pixels))

        def eager() -> None:
            with torch.inference_mode():
                model(tensor)

        timings = time_interleaved({"ort": lambda: session.run(None, {name: pixels}), "torch": eager}, repeats,
                                   warmup=2, rest_s=0.3)
        ort_rate, torch_rate = rate(batch, timings["ort"]), rate(batch, timings["torch"])
        rows[batch] = {"ort_images_per_s": ort_rate, "torch_images_per_s": torch_rate,
                       "ratio_ort_to_torch": ort_rate["median"] / torch_rate["median"],
                       "timings": {k: t.as_dict() for k, t in timings.items()}}
        log.info("%s batch %d: ORT %.1f img/s, torch %.1f img/s", arch, batch, ort_rate["median"], torch_rate["median"])
    agreement = _agreement(session, name, model, card, prepared.bundle_dir)
    return {"batches": rows, "max_abs_logit_diff": agreement, "torch_version": torch.__version__,
            "numpy_version": np.__version__}


def _agreement(session: Any, name: str, model: Any, card: Any, bundle_dir: Path) -> float:
    """Same weights really: the largest logit difference on a batch of real photos."""
    import numpy as np
    import torch

    pixels = fixtures.pixel_batch(bundle_dir, 4)
    (ort_logits,) = session.run(None, {name: pixels})
    with torch.inference_mode():
        torch_logits = model(torch.from_numpy(card.preprocess.normalize(pixels))).numpy()
    return float(np.max(np.abs(ort_logits - torch_logits)))


def summary(result: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for arch, r in result["models"].items():
        for batch, b in r["batches"].items():
            rows.append(summary_row("2 ORT vs eager", arch, f"ORT fp32 img/s, batch {batch}",
                                    b["ort_images_per_s"]["median"],
                                    f"PyTorch eager {b['torch_images_per_s']['median']:.3g} img/s",
                                    b["ratio_ort_to_torch"]))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archs", nargs="+", default=["mobilenet_v2", "resnet50"])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--workdir", type=Path, default=fixtures.DEFAULT_WORKDIR)
    parser.add_argument("--quick", action="store_true", help="tiny arch, batches 1 and 4, 2 repeats (smoke test)")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    setup_logging()
    if args.quick:
        args.archs, args.batches, args.repeats = ["tiny"], [1, 4], 2
    threads = fixtures.threads_in_use()
    started = time.perf_counter()
    models = {arch: measure(arch, args.workdir, threads, tuple(args.batches), args.repeats) for arch in args.archs}
    result = {"threads": threads, "models": models, "seconds": time.perf_counter() - started}
    result["summary"] = summary(result)
    write_result(args.out, "ort_vs_torch", result)
    print(markdown_table(
        ["model", "batch", "ORT img/s", "PyTorch img/s", "ORT / PyTorch"],
        [[a, b, r["ort_images_per_s"]["median"], r["torch_images_per_s"]["median"], r["ratio_ort_to_torch"]]
         for a, m in models.items() for b, r in m["batches"].items()]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
