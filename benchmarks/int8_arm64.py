"""The edge file on ARM64 kernels: ``edge/model.int8.ort`` run by ONNX Runtime's aarch64 build.

An arm64 Python (Debian's packages) with PyPI's aarch64 wheels of the project's onnxruntime and
numpy (``benchmarks/arm64_rootfs.sh``, built once under the imgcls cache folder) runs under
``qemu-aarch64``, so ORT dispatches to its ARM integer kernels: ``-cpu neoverse-n1`` has the
dot-product instructions (``sdot``/``udot``, the kernels of recent phones and boards),
``-cpu cortex-a72`` has not (a Raspberry Pi 4). The same file runs natively on x86 on the same
pixels. Reported: top-1 on the bundle's validation split (the images its INT8 gate used, checked
by their SHA-256) against the gate's x86 figure, and logit agreement between ARM64 and x86.
Emulated timing means nothing and is not reported: only the answers count.

    python -m benchmarks.int8_arm64 RUN BUNDLE [--images N] [--cpu neoverse-n1 --cpu cortex-a72] [--out FILE]

Needs ``qemu-aarch64`` (Debian's ``qemu-user``: ``.ci/system-tools qemu-user``) and Debian's and
PyPI's package indexes the first time. Under emulation efficientnet_lite0 INT8 runs a few images
per second; ``--images`` takes an evenly spread subset (then compared with x86 on that subset).
"""
from __future__ import annotations

import argparse
import logging
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from benchmarks.report import REPO_ROOT, markdown_table, setup_logging, write_result

log = logging.getLogger("bench.int8_arm64")
ROOTFS_SCRIPT = REPO_ROOT / "benchmarks" / "arm64_rootfs.sh"
CHILD = REPO_ROOT / "benchmarks" / "arm64_child.py"
ARM_CPUS = ("neoverse-n1", "cortex-a72")  # with and without the dot-product instructions
EDGE_FILE = Path("edge") / "model.int8.ort"


class Unavailable(RuntimeError):
    """The ARM64 environment cannot be had on this machine; the message says why."""


def emulator() -> str:
    found = shutil.which("qemu-aarch64")
    if found is None:
        raise Unavailable("qemu-aarch64 not found (Debian package qemu-user: .ci/system-tools qemu-user)")
    return found


def rootfs() -> Path:
    """The arm64 root folder for this environment's onnxruntime and numpy versions (built once)."""
    import onnxruntime

    command = ["bash", str(ROOTFS_SCRIPT), onnxruntime.__version__, np.__version__, sys.executable]
    done = subprocess.run(command, capture_output=True, text=True, timeout=1800, stdin=subprocess.DEVNULL)
    said = " ".join(done.stderr.strip().splitlines()[-2:])
    if done.returncode == 3:
        raise Unavailable(f"no arm64 root filesystem: {said}")
    if done.returncode != 0:
        raise RuntimeError(f"{ROOTFS_SCRIPT.name} failed (exit {done.returncode}): {said}")
    return Path(done.stdout.strip().splitlines()[-1])


def run_logits(models: Sequence[Path], pixels: np.ndarray, arm_cpu: str | None = None,
               root: Path | None = None) -> list[np.ndarray]:
    """Each model's logits on ``pixels``: natively, or under ``qemu-aarch64 -cpu arm_cpu``."""
    with tempfile.TemporaryDirectory(prefix="imgcls-arm64-") as scratch:
        source = Path(scratch) / "pixels.npy"
        np.save(source, pixels)
        arguments = [str(CHILD), str(source), scratch, *map(str, models)]
        if arm_cpu is None:
            command, env = [sys.executable, *arguments], dict(os.environ)
        else:
            root = root or rootfs()
            view = root / "views" / arm_cpu  # its proc/cpuinfo describes arm_cpu (arm64_rootfs.sh)
            command = [emulator(), "-cpu", arm_cpu, "-L", str(view), str(view / "usr/bin/python3.11"), *arguments]
            env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": str(root / "site"),
                   "PYTHONNOUSERSITE": "1", "LANG": "C.UTF-8"}
        done = subprocess.run(command, capture_output=True, text=True, timeout=7200, env=env,
                              stdin=subprocess.DEVNULL)
        if done.returncode != 0:
            raise RuntimeError(f"{'qemu-aarch64 -cpu ' + arm_cpu if arm_cpu else 'native'} run failed "
                               f"(exit {done.returncode}):\n{done.stderr[-3000:]}")
        about = (Path(scratch) / "about.txt").read_text().strip()
        log.info("%s: %d image(s) through %d model(s) on %s", arm_cpu or "native", len(pixels), len(models), about)
        return [np.load(Path(scratch) / f"logits{i}.npy") for i in range(len(models))]


def agreement(arm: np.ndarray, x86: np.ndarray, labels: np.ndarray | None = None) -> dict[str, Any]:
    """How logits (e.g. ARM64's) compare with x86's on the same images (and with the labels, when given)."""
    figures = {"images": int(len(arm)), "top1_agreement": float(np.mean(arm.argmax(1) == x86.argmax(1))),
               "max_abs_logit_diff": float(np.abs(arm - x86).max()),
               "mean_abs_logit_diff": float(np.abs(arm - x86).mean()),
               "logit_scale": float(np.abs(x86).max())}
    if labels is not None:
        figures.update(top1=float(np.mean(arm.argmax(1) == labels)),
                       top1_x86_ort=float(np.mean(x86.argmax(1) == labels)))
    return figures


def gate_images(run: Path, bundle: Path, limit: int | None) -> tuple[Any, dict[str, Any]]:
    """The validation images the INT8 gate used (checked by SHA-256), or an even subset of ``limit``."""
    from imgcls.export.images import images_sha256, load_pixels, load_split
    from imgcls.models.core.card import ModelCard

    card = ModelCard.load(bundle)
    gate = (card.export.get("int8") or {}).get("gate") or {}
    if (card.export.get("int8") or {}).get("status") != "passed" or not (bundle / EDGE_FILE).is_file():
        raise SystemExit(f"{bundle}: no {EDGE_FILE} (the INT8 gate did not pass, or the bundle predates edge files)")
    split = load_split(run, None)
    val = load_pixels(split, split.val, card.preprocess, gate.get("images"))
    same = images_sha256(val.paths) == gate.get("images_sha256")
    if not same:
        log.warning("these %d validation images are not the gate's (SHA-256 differs): top-1 is not comparable "
                    "with the gate's figure", len(val.labels))
    if limit and limit < len(val.labels):
        keep = np.linspace(0, len(val.labels) - 1, limit).round().astype(int)
        val = type(val)(pixels=val.pixels[keep], labels=val.labels[keep], paths=tuple(val.paths[i] for i in keep))
        same = False
    return val, {"gate_images": gate.get("images"), "same_images_as_gate": same,
                 "gate_fp32_top1": gate.get("fp32_top1"), "gate_int8_top1_x86": gate.get("int8_top1"),
                 "int8_format": card.export["int8"].get("int8_format"), "int8_target": card.export["int8"].get("target"),
                 "gated_on": card.export["int8"].get("gated_on")}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("bundle", type=Path)
    parser.add_argument("--images", type=int, default=0, help="an even subset of the gate's images (0: all)")
    parser.add_argument("--cpu", action="append", choices=ARM_CPUS, help="QEMU ARM CPU models (default: both)")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    setup_logging()
    val, about = gate_images(args.run, args.bundle, args.images or None)
    edge = args.bundle / EDGE_FILE
    root = rootfs()
    x86_ort, x86_onnx = run_logits([edge, args.bundle / "model.int8.onnx"], val.pixels)
    rows = [{"kernels": "x86 (this machine), model.int8.onnx", **agreement(x86_onnx, x86_ort, val.labels)}]
    for cpu in args.cpu or ARM_CPUS:
        arm, = run_logits([edge], val.pixels, cpu, root)
        rows.append({"kernels": f"ARM64 qemu -cpu {cpu}, {EDGE_FILE}", **agreement(arm, x86_ort, val.labels)})
    gate_top1 = about["gate_int8_top1_x86"]
    for row in rows:
        row["points_vs_gate_x86"] = (100 * (row["top1"] - gate_top1)
                                     if about["same_images_as_gate"] and gate_top1 is not None else None)
    write_result(args.out, "int8_arm64", {"bundle": args.bundle.resolve().name, **about, "compared_with": f"x86 {EDGE_FILE}",
                                          "note": "top1: the row's kernels on these images; agreement and logit differences vs x86 running the "
                                                  "same .ort file; emulated timing is not reported",
                                          "rows": rows})
    print(markdown_table(list(rows[0]), [list(r.values()) for r in rows]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
