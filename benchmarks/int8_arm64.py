"""The edge file on ARM64 kernels: ``edge/model.int8.ort`` run by ONNX Runtime's aarch64 build.

An arm64 Python (Debian's packages) with PyPI's aarch64 wheels of the project's onnxruntime and
numpy (``benchmarks/arm64_rootfs.sh``, built once under the imgcls cache folder) runs under
``qemu-aarch64``, so ORT dispatches to its ARM integer kernels: ``-cpu neoverse-n1`` has the
dot-product instructions (``sdot``/``udot``, the kernels of recent phones and boards),
``-cpu cortex-a72`` has not (a Raspberry Pi 4). The same file runs natively on x86 on the same
pixels. Reported per model: top-1 on the bundle's validation split (the images its INT8 gate
used, checked by their SHA-256) against the gate's x86 figure (goal: within 0.5 points), and logit
agreement between ARM64 and x86. Emulated timing means nothing and is not reported: only the
answers count.

    python -m benchmarks.int8_arm64 [RUN BUNDLE ...] [--rendering mobilenet_v2] [--images N]
        [--cpu neoverse-n1 --cpu cortex-a72] [--out FILE]

Each ``RUN BUNDLE`` pair (e.g. ``runs/demo bundles/demo`` after ``make demo``) is one model;
``--rendering KEY`` adds a case of ``benchmarks.int8_renderings`` (its run and bundle under
``.bench-out/int8-renderings/KEY``, trained and exported first when absent). With ``--out``, models
of an earlier result that this run does not measure are kept.

Needs ``qemu-aarch64`` (Debian's ``qemu-user``: ``.ci/system-tools qemu-user``) and Debian's and
PyPI's package indexes the first time. Under emulation efficientnet_lite0 INT8 runs a few images
per second; ``--images`` takes an evenly spread subset (then compared with x86 on that subset, and
not with the gate).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from benchmarks.report import REPO_ROOT, markdown_table, setup_logging, summary_row, write_result

log = logging.getLogger("bench.int8_arm64")
ROOTFS_SCRIPT = REPO_ROOT / "benchmarks" / "arm64_rootfs.sh"
CHILD = REPO_ROOT / "benchmarks" / "arm64_child.py"
ARM_CPUS = ("neoverse-n1", "cortex-a72")  # with and without the dot-product instructions
EDGE_FILE = Path("edge") / "model.int8.ort"
GOAL_POINTS = 0.5  # ARM64 top-1 within this many points of the gate's x86 figure


class Unavailable(RuntimeError):
    """The ARM64 environment cannot be had on this machine; the message says why."""


def emulator() -> str:
    found = shutil.which("qemu-aarch64")
    if found is None:
        raise Unavailable("qemu-aarch64 not found (Debian package qemu-user: .ci/system-tools qemu-user)")
    return found


def rootfs(ort_version: str | None = None) -> Path:
    """The arm64 root folder for this environment's onnxruntime (or ``ort_version``) and numpy (built once)."""
    import onnxruntime

    command = ["bash", str(ROOTFS_SCRIPT), ort_version or onnxruntime.__version__, np.__version__, sys.executable]
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
    from imgcls.models.training.session import METRICS_FILENAME, read_metrics
    from imgcls.service.precision import kernel_format

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
    epochs_run = len(read_metrics(run)) if (run / METRICS_FILENAME).is_file() else None
    return val, {"arch": card.arch, "epochs_run": epochs_run, "epochs": card.train.get("epochs"),
                 "gate_images": gate.get("images"), "same_images_as_gate": same,
                 "gate_fp32_top1": gate.get("fp32_top1"), "gate_int8_top1_x86": gate.get("int8_top1"),
                 "int8_method": card.export["int8"].get("method"),
                 "int8_format": kernel_format(card), "int8_target": card.export["int8"].get("target"),
                 "gated_on": card.export["int8"].get("gated_on")}


def measure(label: str, run: Path, bundle: Path, limit: int | None, cpus: Sequence[str], root: Path) -> dict[str, Any]:
    """One model: its edge file on x86 and on each ARM CPU model, over the gate's validation images."""
    val, about = gate_images(run, bundle, limit)
    log.info("%s: %d validation image(s), gate's x86 INT8 top-1 %s", label, len(val.labels), about["gate_int8_top1_x86"])
    edge = bundle / EDGE_FILE
    x86_ort, x86_onnx = run_logits([edge, bundle / "model.int8.onnx"], val.pixels)
    rows = [{"kernels": "x86 (this machine), model.int8.onnx", "cpu": None, **agreement(x86_onnx, x86_ort, val.labels)}]
    with ThreadPoolExecutor(len(cpus)) as pool:  # each emulated CPU is one single-threaded qemu process
        arms = list(pool.map(lambda cpu: run_logits([edge], val.pixels, cpu, root)[0], cpus))
    for cpu, arm in zip(cpus, arms):
        rows.append({"kernels": f"ARM64 qemu -cpu {cpu}, {EDGE_FILE}", "cpu": cpu, **agreement(arm, x86_ort, val.labels)})
    gate_top1 = about["gate_int8_top1_x86"]
    for row in rows:
        row["points_vs_gate_x86"] = (100 * (row["top1"] - gate_top1)
                                     if about["same_images_as_gate"] and gate_top1 is not None else None)
    return {"model": label, "bundle": str(bundle.resolve()), **about, "rows": rows}


def summary(models: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """RESULTS.md rows: each model's ARM64 top-1 against its gate's x86 figure, per emulated CPU."""
    rows = []
    for model in models:
        gate = model["gate_int8_top1_x86"]
        for row in (r for r in model["rows"] if r.get("cpu")):
            points = row["points_vs_gate_x86"]
            rows.append(summary_row(
                "28 ARM64 kernels", model["arch"],
                f"INT8 top-1 % on ARM64 kernels (qemu -cpu {row['cpu']}), {model['model']}{trained(model)}", 100 * row["top1"],
                f"x86 gate {100 * gate:.2f} % ({model['int8_format']}, {row['images']} images); answers agree with "
                f"x86 on {100 * row['top1_agreement']:.1f} %, largest logit difference {row['max_abs_logit_diff']:.3g} "
                f"of {row['logit_scale']:.3g}", None, f"within {GOAL_POINTS} points of the gate's figure",
                None if points is None else abs(points) <= GOAL_POINTS))
    return rows


def trained(model: dict[str, Any]) -> str:
    """", stopped after epoch 4 of 6" where the run ended before its planned epochs."""
    run, planned = model.get("epochs_run"), model.get("epochs")
    return f", stopped after epoch {run} of {planned}" if run and planned and run < planned else ""


def kept_models(out: Path | None, measured: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The models of an earlier result in ``out`` that this run did not measure (matched by label)."""
    if out is None or not out.is_file():
        return []
    labels = {m["model"] for m in measured}
    return [m for m in json.loads(out.read_text()).get("models", []) if m["model"] not in labels]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pairs", nargs="*", type=Path, metavar="RUN BUNDLE", help="a run folder and its INT8 bundle")
    parser.add_argument("--rendering", action="append", default=[], help="a benchmarks.int8_renderings case, e.g. mobilenet_v2")
    parser.add_argument("--images", type=int, default=0, help="an even subset of the gate's images (0: all)")
    parser.add_argument("--cpu", action="append", choices=ARM_CPUS, help="QEMU ARM CPU models (default: both)")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    from benchmarks.int8_renderings import CASES, prepared

    if len(args.pairs) % 2 or not (args.pairs or args.rendering):
        parser.error("give RUN BUNDLE pairs and/or --rendering KEY")
    unknown = [key for key in args.rendering if key not in CASES]
    if unknown:
        parser.error(f"unknown rendering {', '.join(unknown)} (choose among {', '.join(CASES)})")
    setup_logging()
    try:
        root = rootfs()
    except Unavailable as exc:
        sys.stderr.write(f"int8_arm64: cannot run ARM64 kernels here: {exc}\n")
        return 2
    models = [(args.pairs[i].name, args.pairs[i], args.pairs[i + 1]) for i in range(0, len(args.pairs), 2)]
    models += [(CASES[key].name, *prepared(key)) for key in args.rendering]
    measured = [measure(label, run, bundle, args.images or None, args.cpu or ARM_CPUS, root) for label, run, bundle in models]
    results = kept_models(args.out, measured) + measured
    write_result(args.out, "int8_arm64", {
        "compared_with": f"x86 {EDGE_FILE}", "goal": f"ARM64 top-1 within {GOAL_POINTS} points of the gate's x86 figure",
        "note": "top1: the row's kernels on these images; agreement and logit differences vs x86 running the same .ort "
                "file; emulated timing is not reported", "models": results, "summary": summary(results)})
    for model in measured:
        print(f"{model['model']} ({model['arch']}):")
        print(markdown_table(list(model["rows"][0]), [list(r.values()) for r in model["rows"]]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
