"""Issue 12: does an INT8 file gated on this CPU give the same answers on x86 *without* VNNI?

ONNX Runtime picks its integer kernels from the CPU's features (``cpuid``): AVX-512 VNNI, AVX-VNNI,
plain AVX2 (``vpmaddubsw``, whose int16 pair sums saturate for U8S8) or SSE. A gate run on a VNNI
machine says nothing about the AVX2 kernels unless the answers are shown to be the same. This runs
the same files on the same pixels twice: natively, and under ``qemu-x86_64 -cpu EPYC-Rome`` (an AMD
EPYC with AVX2 and no AVX-512/VNNI; QEMU >= 7.2 emulates AVX2), so ORT dispatches to the AVX2
kernels, and compares the logits. U8S8 is the control: it must differ (the saturation), or the
emulation did not reach another kernel.

    python -m benchmarks.int8_isa RUN BUNDLE [--images 128] --out benchmarks/results/int8_isa.json

Debian's ``qemu-user`` is installed by ``.ci/system-tools qemu-user`` when missing. Emulation is
slow (about 1 image/s for efficientnet_lite0 INT8): a subset of the validation split is used.
"""
from __future__ import annotations

import argparse
import logging
import shutil
import subprocess
import sys
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from benchmarks.report import REPO_ROOT, markdown_table, setup_logging, write_result

log = logging.getLogger("bench.int8_isa")
NO_VNNI_CPU = "EPYC-Rome"  # AVX2, FMA, no AVX-512, no VNNI


def emulator() -> str:
    """The path of ``qemu-x86_64`` (installed with ``.ci/system-tools qemu-user`` when missing)."""
    found = shutil.which("qemu-x86_64")
    if found is None:
        subprocess.run(["bash", str(REPO_ROOT / ".ci" / "system-tools"), "qemu-user"], check=False)
        found = shutil.which("qemu-x86_64")
    if found is None:
        raise RuntimeError("qemu-x86_64 not found and `.ci/system-tools qemu-user` did not install it")
    return found


def run_models(models: Sequence[Path], pixels: np.ndarray, cpu: str | None) -> list[np.ndarray]:
    """Each model's logits on ``pixels`` (one ORT thread), in a child process; under QEMU's ``cpu``
    model when given, natively otherwise."""
    with tempfile.TemporaryDirectory(prefix="imgcls-isa-") as scratch:
        source = Path(scratch) / "pixels.npy"
        np.save(source, pixels)
        command = ([emulator(), "-cpu", cpu] if cpu else []) + [
            sys.executable, "-m", "benchmarks.int8_isa", "child", str(source), scratch, *map(str, models)]
        done = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=3600)
        if done.returncode != 0:
            raise RuntimeError(f"{'emulated' if cpu else 'native'} run failed:\n{done.stderr[-3000:]}")
        return [np.load(Path(scratch) / f"logits{i}.npy") for i in range(len(models))]


def child(pixels_file: Path, out: Path, models: Sequence[Path]) -> None:
    # Only NumPy and ONNX Runtime here (not imgcls.export's session helpers, which import torch):
    # under QEMU every imported module costs emulated seconds.
    import onnxruntime as ort

    pixels = np.load(pixels_file)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    for index, model in enumerate(models):
        session = ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
        logits = np.concatenate([session.run(["logits"], {"pixels": pixels[i:i + 16]})[0]
                                 for i in range(0, len(pixels), 16)])
        np.save(out / f"logits{index}.npy", logits)


def compare(models: dict[str, Path], pixels: np.ndarray, labels: np.ndarray, cpu: str = NO_VNNI_CPU) -> list[dict[str, Any]]:
    native = run_models(list(models.values()), pixels, None)
    emulated = run_models(list(models.values()), pixels, cpu)
    rows = []
    for (name, _), here, there in zip(models.items(), native, emulated):
        rows.append({"model": name, "images": int(len(labels)),
                     "top1_native": float((here.argmax(1) == labels).mean()),
                     f"top1_{cpu}": float((there.argmax(1) == labels).mean()),
                     "max_abs_logit_difference": float(np.abs(here - there).max()),
                     "top1_agreement": float((here.argmax(1) == there.argmax(1)).mean())})
    return rows


def _u8s8_control(prepared_source: Path, scratch: Path, card: Any, split: Any) -> Path:
    from imgcls.models.core.cpu import local_target
    from imgcls.export.quantize import calibration_pixels, quantize_file, recipe_for

    recipe = replace(recipe_for(local_target(), card.arch), weight_type="QInt8")
    target = scratch / "u8s8.onnx"
    quantize_file(prepared_source, target, recipe, calibration_pixels(split, card, 300))
    return target


def main(argv: list[str] | None = None) -> int:
    if argv is None and len(sys.argv) > 1 and sys.argv[1] == "child":
        child(Path(sys.argv[2]), Path(sys.argv[3]), [Path(p) for p in sys.argv[4:]])
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("bundle", type=Path)
    parser.add_argument("--images", type=int, default=128, help="validation images (spread over the classes)")
    parser.add_argument("--cpu", default=NO_VNNI_CPU, help="QEMU CPU model without VNNI")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    setup_logging()
    from imgcls.export.images import load_pixels, load_split
    from imgcls.models.core.card import ModelCard

    card, split = ModelCard.load(args.bundle), load_split(args.run, None)
    step = max(1, len(split.val) // args.images)
    val = load_pixels(split, split.val[::step][:args.images], card.preprocess)
    with tempfile.TemporaryDirectory(prefix="imgcls-isa-") as scratch:
        models = {"model.int8.onnx (as exported)": args.bundle / "model.int8.onnx",
                  "U8S8 control": _u8s8_control(args.bundle / "model.onnx", Path(scratch), card, split)}
        rows = compare(models, val.pixels, val.labels, args.cpu)
    int8 = card.export.get("int8", {})
    write_result(args.out, "int8_isa", {"bundle_int8": {k: int8.get(k) for k in ("method", "target", "gated_on")},
                                        "emulated_cpu": args.cpu, "rows": rows})
    print(markdown_table(list(rows[0]), [list(r.values()) for r in rows]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
