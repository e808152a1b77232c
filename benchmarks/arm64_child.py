"""Logits of ONNX/ORT-format files on saved pixels, with NumPy and ONNX Runtime only.

Run by ``benchmarks.int8_arm64`` twice on the same files: by this machine's Python (x86 kernels) and
by an arm64 Python under ``qemu-aarch64`` (ONNX Runtime's aarch64 build and its ARM integer
kernels). Nothing else is imported: under emulation every module costs seconds.

    python arm64_child.py PIXELS.npy OUT_DIR MODEL...   -> OUT_DIR/logits<i>.npy, OUT_DIR/about.txt
"""
from __future__ import annotations

import platform
import sys
from pathlib import Path

BATCH = 8


def main(pixels_file: str, out_dir: str, *models: str) -> int:
    import numpy as np
    import onnxruntime as ort

    pixels = np.load(pixels_file)
    out = Path(out_dir)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    for index, model in enumerate(models):
        session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
        feed, output = session.get_inputs()[0].name, session.get_outputs()[0].name
        logits = np.concatenate([session.run([output], {feed: pixels[i:i + BATCH]})[0]
                                 for i in range(0, len(pixels), BATCH)])
        np.save(out / f"logits{index}.npy", logits)
    (out / "about.txt").write_text(f"{platform.machine()} onnxruntime {ort.__version__} numpy {np.__version__}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
