"""Item 11, on a machine with an NVIDIA GPU: items 2, 3 and 5 on the CUDA provider, fp32 and fp16.

Run it through ``benchmarks/gpu_check.sh`` (it makes an environment with onnxruntime-gpu beside
CUDA torch; never install onnxruntime-gpu into the CPU .venv). It records the device, refuses to
report anything unless ``session.get_providers()`` really starts with CUDAExecutionProvider, then:
- raw ORT with IOBinding (input and output stay on the GPU) and with numpy in/out, batch 1..64,
  vs PyTorch eager on CUDA (fp32, and ``.half()`` for fp16), same checkpoint (item 2);
- the Predictor on real-size JPEGs on CUDA vs raw ORT with numpy in/out (item 3);
- ``imgcls serve --device cuda`` at concurrency 1/4/16/64 vs the in-process Predictor (item 5).
Every section is bounded; a failing section is recorded and the others still run.

    python -m benchmarks.gpu_check --out benchmarks/results/gpu_check.json
"""
from __future__ import annotations

import argparse
import logging
import statistics
import subprocess

import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Callable

import numpy as np

from benchmarks import fixtures, loadgen
from benchmarks.report import markdown_table, setup_logging, summary_row, write_result

log = logging.getLogger("bench.gpu")
CUDA = "CUDAExecutionProvider"
PRECISION_FILES = {"fp32": "model.onnx", "fp16": "model.fp16.onnx"}


def device_info() -> dict[str, Any]:
    import onnxruntime as ort
    import torch

    try:
        smi = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                             capture_output=True, text=True, check=False)
        gpu = smi.stdout.strip() or smi.stderr.strip()
    except OSError as exc:
        gpu = f"nvidia-smi: {exc}"
    return {"nvidia_smi": gpu, "torch": torch.__version__,
            "torch_cuda": torch.version.cuda, "torch_device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "onnxruntime": ort.__version__, "ort_device": ort.get_device(), "ort_providers_in_build": ort.get_available_providers()}


def cuda_session(path: Path) -> Any:
    from imgcls.service.runtime import RuntimeConfig, create_session

    session, provider = create_session(path, RuntimeConfig(device="cuda"))  # raises unless CUDA really runs
    if session.get_providers()[0] != CUDA or provider != CUDA:
        raise RuntimeError(f"{path}: running {session.get_providers()}, not CUDA")
    return session


def per_second(work: Callable[[], object], items: int, sync: Callable[[], None], min_s: float = 0.5,
               rounds: int = 3) -> dict[str, float]:
    """Items/s: ``rounds`` rounds of as many calls as fit ``min_s`` (at least 5), after a warm-up."""
    for _ in range(3):
        work()
    sync()
    rates = []
    for _ in range(rounds):
        calls, started = 0, time.perf_counter()
        while calls < 5 or time.perf_counter() - started < min_s:
            work()
            calls += 1
        sync()
        rates.append(items * calls / (time.perf_counter() - started))
    return {"median": statistics.median(rates), "min": min(rates), "max": max(rates)}


def raw_vs_eager(prepared: fixtures.Prepared, precision: str, batches: list[int]) -> dict[str, Any]:
    import onnxruntime as ort
    import torch

    from imgcls.models.training.checkpoint import load_checkpoint

    session = cuda_session(prepared.bundle_dir / PRECISION_FILES[precision])
    name, out_name = session.get_inputs()[0].name, session.get_outputs()[0].name
    model, card = load_checkpoint(prepared.run_dir)
    model = model.cuda().eval()
    if precision == "fp16":
        model = model.half()
    rows = {}
    for batch in batches:
        pixels = fixtures.pixel_batch(prepared.bundle_dir, batch)
        binding = session.io_binding()
        binding.bind_ortvalue_input(name, ort.OrtValue.ortvalue_from_numpy(pixels, "cuda", 0))
        binding.bind_output(out_name, "cuda")
        tensor = torch.from_numpy(card.preprocess.normalize(pixels)).cuda()
        tensor = tensor.half() if precision == "fp16" else tensor

        def eager() -> None:
            with torch.inference_mode():
                model(tensor)

        rows[batch] = {
            "ort_iobinding": per_second(lambda: session.run_with_iobinding(binding), batch, binding.synchronize_outputs),
            "ort_numpy_io": per_second(lambda: session.run(None, {name: pixels}), batch, lambda: None),
            "torch_eager": per_second(eager, batch, torch.cuda.synchronize),
        }
        rows[batch]["ratio_iobinding_to_torch"] = rows[batch]["ort_iobinding"]["median"] / rows[batch]["torch_eager"]["median"]
        log.info("%s %s batch %d: %s", prepared.arch, precision, batch,
                 {k: round(v["median"], 1) for k, v in rows[batch].items() if isinstance(v, dict)})
    return {"providers": session.get_providers(), "batches": rows}


def predictor_vs_raw(prepared: fixtures.Prepared, precision: str, jpegs: list[Path], batch: int) -> dict[str, Any]:
    from imgcls.service.predictor import Predictor

    with Predictor.load(prepared.bundle_dir, precision=precision, device="cuda") as predictor:
        if predictor.provider != CUDA:
            raise RuntimeError(f"Predictor runs on {predictor.provider}")
        pixels = np.stack([predictor.decode(p) for p in jpegs])
        session = predictor.session
        name = session.get_inputs()[0].name

        def raw() -> None:
            for start in range(0, len(pixels), batch):
                chunk = pixels[start:start + batch]
                if len(chunk) == batch:
                    session.run(None, {name: chunk})

        full = (len(pixels) // batch) * batch
        raw_rate = per_second(raw, full, lambda: None, rounds=3)
        predicted = per_second(lambda: predictor.predict(jpegs, batch_size=batch), len(jpegs), lambda: None,
                               min_s=0.0, rounds=3)
        return {"provider": predictor.provider, "decode_threads": predictor.decode_threads, "predictor": predicted,
                "raw_ort": raw_rate, "ratio": predicted["median"] / raw_rate["median"]}


def http(prepared: fixtures.Prepared, precision: str, levels: list[int], seconds: float) -> dict[str, Any]:
    from imgcls.service.host.launcher import start_server

    from imgcls.service.predictor import Predictor

    jpeg = fixtures.peer_jpeg()
    with Predictor.load(prepared.bundle_dir, precision=precision, device="cuda") as predictor:
        in_process = per_second(lambda: predictor.predict([jpeg] * 16, batch_size=16), 16, lambda: None, min_s=1.0)
    with tempfile.TemporaryDirectory(prefix="imgcls-gpu-http-") as scratch:
        server = start_server(prepared.bundle_dir, Path(scratch) / "serve.log",
                              args=["--device", "cuda", "--precision", precision], ready_timeout=180)
        try:
            port = int(server.url.rsplit(":", 1)[1])
            request = loadgen.Request("POST", "/classify", jpeg, "image/jpeg")
            loadgen.run_load("127.0.0.1", port, request, 4, 2.0, 200)
            out = [loadgen.run_load("127.0.0.1", port, request, c, seconds, 20000).summary() for c in levels]
        finally:
            server.stop()
    for level in out:
        level["vs_in_process"] = level["throughput_rps"] / in_process["median"]
    return {"in_process_images_per_s": in_process, "levels": out}


def guarded(results: dict[str, Any], key: str, work: Callable[[], Any]) -> None:
    started = time.perf_counter()
    try:
        results[key] = work()
    except Exception as exc:  # noqa: BLE001 - one failing section must not lose the others
        log.error("%s failed: %s", key, exc)
        results[key] = {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()[-2000:]}
    log.info("%s: %.0f s", key, time.perf_counter() - started)


def summary(result: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    device = result["device"].get("torch_device") or "GPU"
    for key, r in result["sections"].items():
        if "error" in r:
            rows.append(summary_row("11 GPU", key, f"failed on {device}", r["error"][:120]))
        elif key.startswith("raw/"):
            for batch, b in r["batches"].items():
                rows.append(summary_row("11 GPU (2)", key[4:], f"ORT CUDA IOBinding img/s, batch {batch}",
                                        b["ort_iobinding"]["median"],
                                        f"PyTorch eager CUDA {b['torch_eager']['median']:.4g}; ORT numpy I/O {b['ort_numpy_io']['median']:.4g}",
                                        b["ratio_iobinding_to_torch"]))
        elif key.startswith("predictor/"):
            rows.append(summary_row("11 GPU (3)", key[10:], "Predictor img/s on JPEGs", r["predictor"]["median"],
                                    f"raw ORT CUDA {r['raw_ort']['median']:.4g} img/s", r["ratio"]))
        elif key.startswith("http/"):
            for level in r["levels"]:
                rows.append(summary_row("11 GPU (5)", key[5:], f"/classify req/s c={level['concurrency']} "
                                        f"(p50 {level['p50_ms']:.0f}, p99 {level['p99_ms']:.0f} ms)",
                                        level["throughput_rps"], f"in-process {r['in_process_images_per_s']['median']:.4g} img/s",
                                        level["vs_in_process"]))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archs", nargs="+", default=["mobilenet_v2", "resnet50"])
    parser.add_argument("--precisions", nargs="+", default=["fp32", "fp16"], choices=list(PRECISION_FILES))
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32, 64])
    parser.add_argument("--http-arch", default="mobilenet_v2")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16, 64])
    parser.add_argument("--seconds", type=float, default=6.0, help="per HTTP concurrency level")
    parser.add_argument("--images", type=int, default=64, help="JPEGs for the Predictor section")
    parser.add_argument("--workdir", type=Path, default=fixtures.DEFAULT_WORKDIR.parent / "work-gpu")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    setup_logging()
    import onnxruntime as ort

    if CUDA not in ort.get_available_providers():
        log.error("this onnxruntime (%s) has no CUDAExecutionProvider: run benchmarks/gpu_check.sh", ort.get_available_providers())
        return 2
    result: dict[str, Any] = {"device": device_info(), "sections": {}}
    log.info("device: %s", result["device"])
    prepared = {arch: fixtures.speed_bundle(arch, args.workdir, fp16=True) for arch in args.archs}
    jpegs = fixtures.real_jpegs(args.workdir / "jpegs", args.images, 1024)
    sections = result["sections"]
    for arch, p in prepared.items():
        for precision in args.precisions:
            guarded(sections, f"raw/{arch} {precision}", lambda: raw_vs_eager(p, precision, args.batches))
            guarded(sections, f"predictor/{arch} {precision}", lambda: predictor_vs_raw(p, precision, jpegs, 32))
    http_bundle = prepared.get(args.http_arch) or fixtures.speed_bundle(args.http_arch, args.workdir, fp16=True)
    for precision in args.precisions:
        guarded(sections, f"http/{args.http_arch} {precision}",
                lambda: http(http_bundle, precision, args.concurrency, args.seconds))
    result["summary"] = summary(result)
    write_result(args.out, "gpu_check", result)
    print(markdown_table(["item", "model", "figure", "value", "baseline", "ratio"],
                         [[r["item"], r["model"], r["figure"], r["value"], r["baseline"], r["ratio"] or ""]
                          for r in result["summary"]]))
    return 0 if not any("error" in s for s in sections.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
