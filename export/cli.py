"""``imgcls export RUN --out BUNDLE [--int8] ...``: checkpoint -> validated ONNX bundle."""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from imgcls.export.config import CALIBRATION_METHODS, DEFAULT_OPSET, EXPORTERS, INT8_TARGETS, ExportConfig

log = logging.getLogger("imgcls.export")

EXIT_FAILED = 1
EXIT_REFUSED = 3  # the bundle was written, but a requested INT8/fp16 variant failed its gate


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="imgcls export", description=__doc__.splitlines()[0].strip("`"))
    parser.add_argument("run", type=Path, help="run directory (runs/<run>) or its checkpoint directory")
    parser.add_argument("--out", type=Path, help="bundle directory (default: bundles/<run name>)")
    parser.add_argument("--int8", action="store_true", help="also write model.int8.onnx (static QDQ), gated")
    parser.add_argument("--fp16", action="store_true", help="also write model.fp16.onnx (for GPU serving), gated")
    parser.add_argument("--data", type=Path, help="image folder root, if the images of split.json moved")
    parser.add_argument("--opset", type=int, default=DEFAULT_OPSET, help="ONNX opset (checked after export)")
    parser.add_argument("--exporter", choices=EXPORTERS, default="dynamo")
    parser.add_argument("--parity-images", type=int, default=16, help="real images checked against PyTorch")
    parser.add_argument("--calibration-method", choices=CALIBRATION_METHODS, default="minmax")
    parser.add_argument("--calibration-size", type=int, default=300, help="training images used to calibrate")
    parser.add_argument("--int8-target", choices=INT8_TARGETS, default="auto",
                        help="auto (default): from this CPU's features; x86: U8U8 (AVX2 without VNNI); "
                             "vnni: U8U8; arm64: S8S8")
    parser.add_argument("--no-mixed-precision", dest="mixed_precision", action="store_false",
                        help="do not keep sensitive nodes in fp32 when plain INT8 misses the gate")
    parser.add_argument("--max-fp32-nodes", type=int, default=16, help="mixed precision: at most this many fp32 nodes")
    parser.add_argument("--mixed-size-budget", type=float, default=0.06,
                        help="mixed precision: fp32 nodes may add at most this fraction of the fp32 file size "
                             "to plain INT8 (default 0.06)")
    parser.add_argument("--qat", action="store_true",
                        help="if PTQ and mixed precision miss the gate: quantization-aware training on the run's "
                             "training split, then gate")
    parser.add_argument("--qat-epochs", type=int, default=2)
    parser.add_argument("--qat-lr", type=float, default=1e-5, help="QAT learning rate (Adam) [1e-5]")
    parser.add_argument("--qat-images", type=int, help="QAT on at most this many training images (default all)")
    parser.add_argument("--no-edge", dest="edge", action="store_false",
                        help="skip edge/model.int8.ort (ORT Mobile) and its operator config")
    parser.add_argument("--exclude-nodes", nargs="+", default=[], metavar="NODE",
                        help="ONNX node names to keep in float")
    parser.add_argument("--max-accuracy-drop", type=float, default=1.0,
                        help="refuse INT8/fp16 if val top-1 drops more than this many points (default 1.0)")
    parser.add_argument("--gate-images", type=int, help="at most this many validation images for the gate")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument("-v", "--verbose", action="store_true")
    return parser.parse_args(argv)


def config_from(args: argparse.Namespace) -> ExportConfig:
    return ExportConfig(
        opset=args.opset, exporter=args.exporter, parity_images=args.parity_images, data_dir=args.data,
        int8=args.int8, fp16=args.fp16, calibration_method=args.calibration_method,
        calibration_size=args.calibration_size, int8_target=args.int8_target,
        exclude_nodes=tuple(args.exclude_nodes), max_accuracy_drop=args.max_accuracy_drop,
        mixed_precision=args.mixed_precision, max_fp32_nodes=args.max_fp32_nodes,
        mixed_size_budget=args.mixed_size_budget, qat=args.qat, qat_epochs=args.qat_epochs, qat_images=args.qat_images, qat_lr=args.qat_lr,
        edge=args.edge,
        gate_images=args.gate_images, progress=not args.no_progress,
    )


def summary(card, out: Path) -> str:
    """The final result table (stdout)."""
    export = card.export
    rows = [f"bundle {out}  ({card.arch}, {card.num_classes} classes, opset {export['opset']}, {export['exporter']})"]
    parity = export["parity"]
    worst = max(v["max_abs_logit_diff"] for v in parity.values() if isinstance(v, dict))
    rows.append(f"  parity vs PyTorch on {parity['images']} images: max |Δlogit| {worst:.2e}, top-1 agreement 100%")
    rows.append(f"  {'file':<18}{'precision':>10}{'MB':>9}{'top-1':>9}{'Δ points':>10}{'agree':>8}{'speed×':>8}")
    for name, info in export["files"].items():
        gate = export.get(info["precision"], {}).get("gate", {}) if info["precision"] != "fp32" else {}
        top1 = gate.get(f"{info['precision']}_top1")
        cells = (f"{100 * top1:.2f}" if top1 is not None else "-",
                 f"{gate['accuracy_drop_points']:.2f}" if gate else "-",
                 f"{100 * gate['top1_agreement']:.1f}%" if gate else "-",
                 f"{gate['speed_ratio']:.2f}" if gate else "1.00")
        rows.append(f"  {name:<18}{info['precision']:>10}{info['bytes'] / 1e6:>9.2f}{cells[0]:>9}{cells[1]:>10}"
                    f"{cells[2]:>8}{cells[3]:>8}")
    rows += int8_rows(export)
    for precision in ("int8", "fp16"):
        section = export.get(precision)
        if section and section["status"] == "refused":
            rows.append(f"  {precision} REFUSED: {section['reason']}")
    return "\n".join(rows)


def int8_rows(export: dict) -> list[str]:
    """What each INT8 rung measured, the one kept, what stayed fp32, the edge file."""
    section = export.get("int8")
    if not section or "attempts" not in section:
        return []
    gated = section["gated_on"]
    rows = [f"  int8 target {section['target']} ({section['target_choice']}); gated on {gated['machine']} "
            f"[{' '.join(gated['flags']) or 'no INT8 flags'}]"]
    for attempt in section["attempts"]:
        gate = attempt.get("gate") or {}
        figures = (f"top-1 {100 * gate['int8_top1']:.2f}% (Δ {gate['accuracy_drop_points']:.2f} points), "
                   f"{100 * gate['size_ratio']:.1f}% size, speed×{gate['speed_ratio']:.2f}") if gate else attempt.get("reason", "")
        rows.append(f"    {attempt['method']:<26} {'PASSED' if attempt['passed'] else 'refused':<8} {figures}")
    if section["status"] == "passed":
        rows.append(f"  int8 kept: {section['method']}")
        for kept in section.get("kept_fp32", []):
            rows.append(f"    fp32: {kept['node']} ({kept['op_type']}): {kept['why']}")
    if "edge" in export:
        edge = export["edge"]
        rows.append(f"  edge: {edge['ort']} ({edge['ort_bytes'] / 1e6:.2f} MB) + {edge['operators_config']}, "
                    f"top-1 agreement with model.int8.onnx {100 * edge['parity_vs_int8_onnx']['top1_agreement']:.0f}%")
    return rows


def main(argv: list[str] | None = None) -> int:
    args = parse_args(list(sys.argv[1:] if argv is None else argv))
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    out = args.out or Path("bundles") / args.run.resolve().name
    try:
        config = config_from(args)
    except ValueError as exc:
        sys.stderr.write(f"imgcls export: {exc}\n")
        return 2
    from imgcls.export.bundle import export_bundle  # torch is imported only past argument parsing
    from imgcls.export.errors import ExportError
    from imgcls.models.core.card import CardError
    from imgcls.models.training.checkpoint import CheckpointError

    try:
        card = export_bundle(args.run, out, config)
    except (ExportError, CheckpointError, CardError) as exc:
        sys.stderr.write(f"imgcls export: {type(exc).__name__}: {exc}\n(no bundle was written to {out})\n")
        return EXIT_FAILED
    sys.stdout.write(summary(card, out) + "\n")
    refused = [p for p in ("int8", "fp16") if card.export.get(p, {}).get("status") == "refused"]
    if refused:
        sys.stderr.write(f"imgcls export: {', '.join(refused)} refused by the accuracy gate; "
                         f"{out} holds the fp32 model only for that precision\n")
        return EXIT_REFUSED
    return 0


if __name__ == "__main__":
    sys.exit(main())
