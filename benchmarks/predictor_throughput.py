"""Predictor throughput on real-size JPEGs vs raw ONNX Runtime on pre-made tensors, same model.

For each architecture (random weights, exported by the real ``export.export_bundle``):
- raw ORT: ``session.run`` on already decoded uint8 batches, with ORT's default thread spinning
  and without; the better of the two is the baseline,
- predictor: ``Predictor.predict(paths)`` (decode + preprocess in a thread pool overlapping ORT),
  with the predictor's default (spinning off) and with spinning on,
- decode alone (one thread) to give the decode share of the CPU work per image.
Measurements are interleaved and repeated; the best of each is kept (the machine is shared).

    .venv/bin/python -m benchmarks.predictor_throughput --out benchmarks/results/predictor_throughput.json
"""
from __future__ import annotations

import argparse
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from benchmarks.report import markdown_table, write_result
from imgcls.service.predictor import Predictor
from imgcls.service.runtime import RuntimeConfig

log = logging.getLogger("bench.predictor")
PHOTOS = ("chelsea", "coffee", "astronaut", "rocket", "cat", "hubble_deep_field", "retina", "immunohistochemistry")


def write_jpegs(folder: Path, size: tuple[int, int], count: int) -> list[Path]:
    """``count`` JPEGs of ``size`` made from scikit-image's bundled photos (quality 90)."""
    import skimage.data

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        name = PHOTOS[i % len(PHOTOS)]
        image = Image.fromarray(getattr(skimage.data, name)()).convert("RGB")
        shifted = image.rotate(3 * (i // len(PHOTOS)), resample=Image.Resampling.BILINEAR)
        path = folder / f"{i:04d}_{name}.jpg"
        shifted.resize(size, Image.Resampling.BICUBIC).save(path, format="JPEG", quality=90)
        paths.append(path)
    return paths


def export_random_bundle(arch: str, workdir: Path) -> Path:
    """A random-weights checkpoint of ``arch`` exported by the real export (fp32 only)."""
    from imgcls.export.bundle import export_bundle
    from imgcls.export.config import ExportConfig
    from tests.factories import make_tiny_run

    run_dir = make_tiny_run(workdir / arch, arch=arch, per_class=4, size=(256, 256))
    out = workdir / "bundles" / arch
    export_bundle(run_dir, out, ExportConfig(progress=False, parity_images=4))
    return out


def _rate(count: int, work) -> float:
    started = time.perf_counter()
    work()
    return count / (time.perf_counter() - started)


def measure(bundle: Path, paths: list[Path], batch: int, repeats: int) -> dict[str, Any]:
    threads = RuntimeConfig().intra_op_threads()
    quiet = Predictor.load(bundle, device="cpu", runtime=RuntimeConfig(device="cpu"))
    spinning = Predictor.load(bundle, device="cpu", runtime=RuntimeConfig(device="cpu", spin=True))
    pixels = np.stack([quiet.decode(p) for p in paths])
    name = quiet.session.get_inputs()[0].name

    def raw(session=spinning.session) -> None:
        for start in range(0, len(pixels), batch):
            session.run(None, {name: pixels[start:start + batch]})

    def raw_quiet() -> None:
        raw(quiet.session)

    def decode_only() -> None:
        for path in paths:
            quiet.decode(path)

    best: dict[str, float] = {"raw_ort": 0.0, "raw_ort_no_spin": 0.0, "predictor": 0.0, "predictor_spinning": 0.0, "decode_1_thread": 0.0}
    raw(), quiet.predict(paths[:batch], batch_size=batch), spinning.predict(paths[:batch], batch_size=batch)  # warm up
    for _ in range(repeats):
        best["raw_ort"] = max(best["raw_ort"], _rate(len(paths), raw))
        best["raw_ort_no_spin"] = max(best["raw_ort_no_spin"], _rate(len(paths), raw_quiet))
        best["predictor"] = max(best["predictor"], _rate(len(paths), lambda: quiet.predict(paths, batch_size=batch)))
        best["predictor_spinning"] = max(
            best["predictor_spinning"], _rate(len(paths), lambda: spinning.predict(paths, batch_size=batch))
        )
        best["decode_1_thread"] = max(best["decode_1_thread"], _rate(len(paths), decode_only))
    quiet.close(), spinning.close()
    # CPU seconds per image: decoding on one thread vs inference on `threads` threads.
    baseline = max(best["raw_ort"], best["raw_ort_no_spin"])  # the better raw configuration
    decode_cpu = 1 / best["decode_1_thread"]
    infer_cpu = threads / baseline
    return {
        "images_per_s": best,
        "ratio_predictor_to_raw": best["predictor"] / baseline,
        "ratio_predictor_spinning_to_raw": best["predictor_spinning"] / baseline,
        "decode_ms_per_image": 1000 * decode_cpu,
        "decode_share_of_cpu_work": decode_cpu / (decode_cpu + infer_cpu),
        "intra_op_threads": threads,
        "decode_threads": quiet.decode_threads,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--archs", nargs="+", default=["mobilenet_v2", "resnet50"])
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--size", default="1024x768", help="JPEG width x height")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    width, height = (int(v) for v in args.size.split("x"))
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="imgcls-bench-") as workdir:
        paths = write_jpegs(Path(workdir) / "jpegs", (width, height), args.images)
        for arch in args.archs:
            bundle = export_random_bundle(arch, Path(workdir))
            results[arch] = measure(bundle, paths, args.batch_size, args.repeats)
    rows = [
        [arch, max(r["images_per_s"]["raw_ort"], r["images_per_s"]["raw_ort_no_spin"]), r["images_per_s"]["predictor"], r["ratio_predictor_to_raw"],
         r["ratio_predictor_spinning_to_raw"], r["decode_ms_per_image"], r["decode_share_of_cpu_work"]]
        for arch, r in results.items()
    ]
    print(markdown_table(
        ["arch", "raw ORT img/s", "predictor img/s", "ratio", "ratio (spin on)", "decode ms/img", "decode share"], rows
    ))
    write_result(args.out, "predictor_throughput", {
        "images": args.images, "jpeg_size": [width, height], "batch_size": args.batch_size,
        "load_average": os.getloadavg(), "results": results,
    })
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
