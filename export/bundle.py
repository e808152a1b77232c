"""``export_bundle``: checkpoint -> convert -> validate -> (quantize, gate) -> bundle, atomically."""
from __future__ import annotations

import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any

import onnx

from imgcls.export.config import FP32_FILENAME, INPUT_NAME, OUTPUT_NAME, REPORT_FILENAME, ExportConfig
from imgcls.export.convert import embed_card, save_onnx
from imgcls.export.errors import GraphContractError, ParityError
from imgcls.export.images import check_classes, check_gate_split, load_split, parity_pixels
from imgcls.export.splice import REUSED, convert
from imgcls.export.validate import check_graph, check_parity
from imgcls.models.core.atomic import sha256_file, staged_directory, write_atomically
from imgcls.models.core.card import ModelCard
from imgcls.models.core.ownership import write_marker
from imgcls.models.training.checkpoint import load_checkpoint

log = logging.getLogger(__name__)
progress_log = logging.getLogger("imgcls.progress")  # the CLI shows it at INFO unless --no-progress

OWNER_FILENAME = ".owner-pid"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_staging(out_dir: Path) -> None:
    """Delete staging directories of earlier exports to ``out_dir`` whose process is gone (killed)."""
    if not out_dir.parent.is_dir():
        return
    for staging in out_dir.parent.glob(f".{out_dir.name}.staging-*"):
        try:
            pid = int((staging / OWNER_FILENAME).read_text())
        except (OSError, ValueError):
            continue  # not ours, or too young to have an owner yet: leave it
        if not _alive(pid):
            log.warning("removing %s, left by an interrupted export (pid %d)", staging, pid)
            shutil.rmtree(staging, ignore_errors=True)


def _io_section(card: ModelCard, config: ExportConfig) -> dict[str, Any]:
    size = card.preprocess.crop_size
    return {
        "input": {"name": INPUT_NAME, "dtype": "uint8", "layout": "NCHW", "height": size, "width": size,
                  "normalized_in_graph": True},
        "output": {"name": OUTPUT_NAME},
        "opset": config.opset,
        "exporter": config.exporter,
    }


def _versions() -> dict[str, str]:
    import onnxruntime
    import torch

    return {"torch": torch.__version__, "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__}


def _finish_files(staging: Path, card: ModelCard, files: dict[str, dict[str, Any]]) -> ModelCard:
    """Embed the final card in every ONNX file, then record sizes and hashes in card.json only.

    The embedded copy lists each file's precision but not its bytes or sha256 (a file cannot
    contain its own hash); card.json beside it carries both.
    """
    embedded = card.updated(export={"files": {name: {"precision": f["precision"]} for name, f in files.items()}})
    lineage: dict[str, str] = {}
    for name in files:
        path = staging / name
        proto = onnx.load(str(path), load_external_data=False)
        files[name]["bytes"] = save_onnx(embed_card(proto, embedded), path)
        lineage[f"sha256:{name}"] = sha256_file(path)
    return card.updated(export={"files": files}, lineage=lineage)


def export_bundle(run_dir: str | Path, out_dir: str | Path, config: ExportConfig = ExportConfig(),
                  source: dict[str, Any] | None = None) -> ModelCard:
    """Write ``out_dir/{model.onnx, [model.int8.onnx], card.json, export_report.json}`` or nothing.

    Raises ``ExportError`` subclasses (``ParityError``, ``GraphContractError``, ...) without
    touching ``out_dir``. A failed INT8 gate is not an error here: the bundle is written without
    the INT8 file and the refusal is recorded in the card and the report (the CLI exits non-zero).
    ``source`` replaces the report's ``run`` entry (a pretrained export stages its run in a scratch folder).
    """
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    started = time.perf_counter()
    steps = ["load", "convert", "check", "parity"] + (["int8"] if config.int8 else []) + (["fp16"] if config.fp16 else []) + ["write"]
    timings: dict[str, float] = {}
    report: dict[str, Any] = {"run": source or str(run_dir.resolve()), "config": _config_dict(config),
                              "versions": _versions()}

    def step(name: str) -> None:  # one log line per finished step (no bar: a log file gets no \r fragments)
        timings[name] = round(timings.get(name, 0.0) + time.perf_counter() - started - sum(timings.values()), 3)
        if config.progress:
            following = steps[len(timings)] if len(timings) < len(steps) else "done"
            progress_log.info("export: %s done in %.1f s (step %d/%d; next: %s)", name, timings[name],
                              len(timings), len(steps), following)

    remove_stale_staging(out_dir)
    model, card = load_checkpoint(run_dir)
    split = load_split(run_dir, config.data_dir)
    check_classes(split, card.class_names)
    if config.int8 or config.fp16:
        check_gate_split(run_dir, split, card.lineage.get("dataset_sha256"))
    pixels = parity_pixels(split, card.preprocess, config.parity_images)
    step("load")
    card = card.updated(export=_io_section(card, config))
    if config.min_score is not None:
        card = card.updated(calibration={"min_score": config.min_score})
    with staged_directory(out_dir) as staging:
        owner = staging / OWNER_FILENAME
        owner.write_text(str(os.getpid()))
        write_marker(staging, "bundle")
        parity = _fp32(staging / FP32_FILENAME, run_dir, model, card, config, pixels.pixels, report, step)
        report["parity"] = parity
        card = card.updated(export={"parity": parity})
        step("parity")
        files: dict[str, dict[str, Any]] = {FP32_FILENAME: {"precision": "fp32"}}
        card, files = _variants(staging, model, card, split, files, config, report, step)
        card = _finish_files(staging, card, files)
        card = _edge(staging, card, config, pixels.pixels, report)
        card.save(staging)
        if "edge" in card.export:
            card.save(staging / card.export["edge"]["dir"])  # labels + preprocessing beside the .ort
        report["files"] = card.export["files"]
        report["lineage"] = dict(card.lineage)
        step("write")
        report["seconds"] = timings
        write_atomically(staging / REPORT_FILENAME, json.dumps(report, indent=2).encode("utf-8"))
        owner.unlink()
    log.info("exported %s -> %s in %.1f s", run_dir, out_dir, time.perf_counter() - started)
    return card


def _fp32(path: Path, run_dir: Path, model, card: ModelCard, config: ExportConfig, pixels, report: dict[str, Any],
          step) -> dict[str, Any]:
    """Convert (``splice.convert``), check the graph, check parity; returns the parity figures. A graph built
    from the run's backbone graph that fails a check is replaced by the whole model converted, checked again."""
    reason = None
    while True:
        proto, report["convert"] = convert(run_dir, model, card, config, reuse_failed=reason)
        save_onnx(embed_card(proto, card), path)
        del proto
        step("convert")
        try:
            report["graph"] = check_graph(path, card, config.opset)
            step("check")
            return check_parity(path, model, card.preprocess, pixels, atol=config.parity_atol,
                                batch=config.parity_batch)
        except (GraphContractError, ParityError) as exc:
            if report["convert"]["source"] != REUSED:
                raise
            reason = f"the graph built from the run's backbone graph failed its check: {exc}"
            log.warning("%s; converting the whole model", reason)


def _variants(staging, model, card, split, files, config, report, step):
    """Optional INT8 and fp16 files (the modules are imported only when asked for)."""
    if config.int8:
        from imgcls.export.int8_search import add_int8

        card, files = add_int8(staging, model, card, split, files, config, report)
        step("int8")
    if config.fp16:
        from imgcls.export.half import add_fp16

        card, files = add_fp16(staging, card, split, files, config, report)
        step("fp16")
    return card, files


def _edge(staging: Path, card: ModelCard, config: ExportConfig, pixels, report: dict[str, Any]) -> ModelCard:
    """``edge/``: the ORT-format INT8 model and its operator config, when INT8 passed its gate."""
    if not (config.int8 and config.edge and card.export.get("int8", {}).get("status") == "passed"):
        return card
    from imgcls.export.edge import add_edge

    section = add_edge(staging, card.export["int8"]["target"], pixels)
    report["edge"] = section
    return card.updated(export={"edge": section})


def _config_dict(config: ExportConfig) -> dict[str, Any]:
    from dataclasses import asdict

    data = asdict(config)
    data["data_dir"] = str(config.data_dir) if config.data_dir else None
    data["exclude_nodes"] = list(config.exclude_nodes)
    return data
