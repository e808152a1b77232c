"""``imgcls export RUN --out BUNDLE [--int8] ...``: checkpoint -> validated ONNX bundle.

``imgcls export --pretrained ARCH [--weights imagenet|FILE] [--data DIR] --out BUNDLE``: the same for
a stock 1000-class ImageNet model (``imgcls.export.pretrained``).

Exit status: 0 written; 1 validation failed (nothing written; the message names the figure);
2 bad input or usage (no such run, no completed epoch yet, an existing --out without
--overwrite); 3 written, but a requested INT8/fp16 variant was refused by its gate.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Sequence

from imgcls.export.config import CALIBRATION_METHODS, DEFAULT_OPSET, EXPORTERS, INT8_TARGETS, ExportConfig
from imgcls.stage_parser import StageParser

log = logging.getLogger("imgcls.export")

EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_REFUSED = 3  # the bundle was written, but a requested INT8/fp16 variant failed its gate


class RunError(ValueError):
    """A RUN argument that is not an exportable training run, or an --out that may not be replaced."""


def resolve_run(path: Path) -> Path:
    """The run directory for ``path`` (a run, or its checkpoint directory); ``RunError`` if not exportable."""
    if not path.exists():
        raise RunError(f"{path}: no such run directory (expected runs/NAME written by imgcls train)")
    if not path.is_dir():
        raise RunError(f"{path}: not a directory (expected runs/NAME written by imgcls train)")
    if (path / "card.json").is_file() and (path / "weights.safetensors").is_file():
        return path.parent if (path.parent / "split.json").is_file() else path  # RUN/checkpoint
    if (path / "checkpoint" / "card.json").is_file():
        return path
    if any((path / name).exists() for name in ("split.json", "train_state.pt", "metrics.jsonl")):
        raise RunError(f"{path}: no epoch has completed yet (no checkpoint/ in the run); "
                       "export after the first epoch finishes")
    if (path / "card.json").is_file() and any(path.glob("*.onnx")):
        raise RunError(f"{path}: this is already an exported bundle; serve or score it")
    raise RunError(f"{path}: not a training run (no checkpoint/card.json)")


def export_inputs(args: argparse.Namespace, run: Path | None) -> list[tuple[str, Path | None]]:
    """What the export reads: the run, its images (split.json's root), --data, a --weights file."""
    from imgcls.models.core.dataset import DatasetError, SplitListing

    inputs: list[tuple[str, Path | None]] = [("RUN", run), ("--data", args.data)]
    if run is not None:
        try:
            inputs.append(("the run's images", Path(SplitListing.load(run).root)))
        except DatasetError:
            pass  # no split.json: load_split names the problem later
    if args.pretrained and args.weights not in (None, "imagenet", "none"):
        inputs.append(("--weights", Path(args.weights)))
    return inputs


def check_out(out: Path, overwrite: bool, inputs: Sequence[tuple[str, Path | None]] = ()) -> None:
    """Refuse an --out that overlaps an input or holds anything but a bundle (a bundle: only with --overwrite)."""
    from imgcls.models.core.ownership import check_disjoint, check_replaceable

    check_disjoint(out, inputs)
    check_replaceable(out, "bundle", overwrite, how="pass --overwrite to replace it (files not written again, "
                      "e.g. an fp16 variant, are dropped)")


class _ThirdPartyAtWarning(logging.Filter):
    """Passes imgcls's own records at any level, other libraries' only from WARNING up (ORT's tools
    set their own loggers to DEBUG, e.g. ``ort_format_model.utils``)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.name == "imgcls" or record.name.startswith("imgcls.") or record.levelno >= logging.WARNING


def quiet_third_party() -> None:
    """Keep every non-imgcls logger at WARNING on the root handlers, whatever level it sets itself."""
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, _ThirdPartyAtWarning) for f in handler.filters):
            handler.addFilter(_ThirdPartyAtWarning())


def _one_line(text: object) -> str:
    return " ".join(str(text).split())


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = StageParser(prog="imgcls export", description=__doc__.splitlines()[0].strip("`"))
    parser.add_argument("run", type=Path, nargs="?", help="run directory (runs/<run>) or its checkpoint directory")
    parser.add_argument("--pretrained", metavar="ARCH", help="instead of RUN: the zoo's stock ImageNet model ARCH")
    parser.add_argument("--weights", default=None,
                        help="with --pretrained only: imagenet (the zoo's weights, default) or FILE (a local state "
                             "dict); a run's export always uses the run's own checkpoint")
    parser.add_argument("--out", type=Path, help="bundle directory (default: bundles/<run name> or bundles/<ARCH>-imagenet)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an existing --out (by default an existing bundle is refused)")
    parser.add_argument("--int8", action="store_true", help="also write model.int8.onnx (static QDQ), gated")
    parser.add_argument("--fp16", action="store_true", help="also write model.fp16.onnx (for GPU serving), gated")
    parser.add_argument("--data", type=Path, help="image folder root, if the images of split.json moved; with "
                        "--pretrained: labelled images in folders named by ImageNet class (calibration, gate)")
    parser.add_argument("--min-score", type=float, default=None,
                        help="record this default abstention threshold in the card (0..1)")
    parser.add_argument("--opset", type=int, default=DEFAULT_OPSET, help="ONNX opset (checked after export)")
    parser.add_argument("--exporter", choices=EXPORTERS, default="dynamo")
    parser.add_argument("--parity-images", type=int, default=16, help="real images checked against PyTorch")
    parser.add_argument("--calibration-method", choices=CALIBRATION_METHODS, default="minmax")
    parser.add_argument("--calibration-size", type=int, default=100,
                        help="training images used to calibrate (default 100)")
    parser.add_argument("--int8-target", choices=INT8_TARGETS, default="auto",
                        help="auto (default): from this CPU's features; x86: U8U8 (AVX2 without VNNI); "
                             "vnni: U8U8; arm64: S8S8")
    parser.add_argument("--no-head-refit", dest="head_refit", action="store_false",
                        help="do not retrain the classifier on the INT8 backbone's features when plain INT8 misses "
                             "the gate")
    parser.add_argument("--head-images", type=int, default=5000,
                        help="head refit: at most this many training images (default 5000)")
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
    parser.add_argument("--no-progress", action="store_true",
                        help="no progress (default: a bar on a terminal, a log line every 15 s otherwise)")
    parser.add_argument("--bentoml", metavar="NAME", default=None,
                        help="also store the bundle in BentoML's model store as NAME (labels: arch, classes, precision, "
                             "accuracy); `bentoml models get NAME` shows it, the model source bentoml:NAME names it")
    parser.add_argument("-v", "--verbose", action="store_true")
    return parser.parse_args(argv)


def config_from(args: argparse.Namespace) -> ExportConfig:
    return ExportConfig(
        opset=args.opset, exporter=args.exporter, parity_images=args.parity_images,
        int8=args.int8, fp16=args.fp16, calibration_method=args.calibration_method,
        calibration_size=args.calibration_size, int8_target=args.int8_target,
        exclude_nodes=tuple(args.exclude_nodes), max_accuracy_drop=args.max_accuracy_drop,
        head_refit=args.head_refit, head_images=args.head_images,
        mixed_precision=args.mixed_precision, max_fp32_nodes=args.max_fp32_nodes,
        mixed_size_budget=args.mixed_size_budget, qat=args.qat, qat_epochs=args.qat_epochs, qat_images=args.qat_images, qat_lr=args.qat_lr,
        edge=args.edge,
        gate_images=args.gate_images, progress=not args.no_progress, min_score=args.min_score,
        data_dir=None if args.pretrained else args.data,
    )


def summary(card, out: Path) -> str:
    """The final result table (stdout)."""
    export = card.export
    rows = [f"bundle {out}  ({card.arch}, {card.num_classes} classes, opset {export['opset']}, {export['exporter']})"]
    parity = export["parity"]
    worst = max(v["max_abs_logit_diff"] for v in parity.values() if isinstance(v, dict))
    rows.append(f"  parity vs PyTorch on {parity['images']} images: max |Δlogit| {worst:.2e}, top-1 agreement 100%")
    gates = [export[p]["gate"] for p in ("int8", "fp16") if export.get(p, {}).get("gate")]
    if gates:
        rows.append(f"  top-1 on the gate's {gates[0]['images']} held-out images; Δ vs fp32 in points "
                    "(+: better than fp32, -: worse)")
    rows.append(f"  {'file':<18}{'precision':>10}{'MB':>9}{'top-1':>9}{'Δ vs fp32':>10}{'agree':>8}{'speed×':>8}")
    for name, info in export["files"].items():
        gate = export.get(info["precision"], {}).get("gate", {}) if info["precision"] != "fp32" else {}
        top1 = gate.get(f"{info['precision']}_top1") if gate else (gates[0]["fp32_top1"] if gates else None)
        cells = (f"{100 * top1:.2f}" if top1 is not None else "-",
                 f"{-gate['accuracy_drop_points']:+.2f}" if gate else "-",
                 f"{100 * gate['top1_agreement']:.1f}%" if gate else "-",
                 f"{gate['speed_ratio']:.2f}" if gate else "1.00")
        rows.append(f"  {name:<18}{info['precision']:>10}{info['bytes'] / 1e6:>9.2f}{cells[0]:>9}{cells[1]:>10}"
                    f"{cells[2]:>8}{cells[3]:>8}")
    rows += int8_rows(export)
    fitted = card.calibration
    if "temperature" in fitted:
        rows.append(f"  calibration: temperature {fitted['temperature']:.4f} on {fitted['fitted_on']}: "
                    f"ECE {fitted['ece_before']:.4f} -> {fitted['ece_after']:.4f}")
    if fitted.get("min_score") is not None:
        rows.append(f"  abstains below a top-1 score of {fitted['min_score']:g} (card default)")
    return "\n".join(rows)


def int8_rows(export: dict) -> list[str]:
    """What each INT8 rung measured, the one kept, what stayed fp32, the edge file."""
    from imgcls.export.int8_search import versus_fp32

    section = export.get("int8")
    if not section or "attempts" not in section:
        return []
    gated = section["gated_on"]
    rows = [f"  int8 target {section['target']} ({section['target_choice']}); gated on {gated['machine']} "
            f"[{' '.join(gated['flags']) or 'no INT8 flags'}]"]
    for attempt in section["attempts"]:
        gate = attempt.get("gate") or {}
        figures = (f"top-1 {100 * gate['int8_top1']:.2f}% vs fp32 {100 * gate['fp32_top1']:.2f}% "
                   f"({versus_fp32(gate, 'int8')}), {100 * gate['size_ratio']:.1f}% size, "
                   f"speed×{gate['speed_ratio']:.2f}") if gate else attempt.get("reason", "")
        rows.append(f"    {attempt['method']:<26} {'PASSED' if attempt['passed'] else 'refused':<8} {figures}")
    for skipped in section.get("skipped", []):
        rows.append(f"    {skipped['method']:<26} {'skipped':<8} {skipped['reason']}")
    if section["status"] == "passed":
        rows.append(f"  int8 kept: {section['method']}")
        for kept in section.get("kept_fp32", []):
            rows.append(f"    fp32: {kept['node']} ({kept['op_type']}): {kept['why']}")
    if section.get("speed"):
        rows.append(f"  {section['speed']['line']}")
    if "edge" in export:
        edge = export["edge"]
        rows.append(f"  edge: {edge['ort']} ({edge['ort_bytes'] / 1e6:.2f} MB) + {edge['operators_config']}, "
                    f"top-1 agreement with model.int8.onnx {100 * edge['parity_vs_int8_onnx']['top1_agreement']:.0f}%")
    return rows


def export_pretrained(args: argparse.Namespace, out: Path, config: ExportConfig):
    """Stage the stock model as a run in a scratch folder, then the one ``export_bundle``."""
    import tempfile

    from imgcls.export.bundle import export_bundle
    from imgcls.export.pretrained import describe_source, stage_pretrained

    with tempfile.TemporaryDirectory(prefix="imgcls-pretrained-") as scratch:
        staged = stage_pretrained(args.pretrained, args.weights, Path(scratch), args.data)
        return export_bundle(staged.run_dir, out, config, describe_source(staged, args.pretrained, args.weights))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(list(sys.argv[1:] if argv is None else argv))
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    quiet_third_party()
    if not args.no_progress:
        logging.getLogger("imgcls.progress").setLevel(logging.INFO)
    if (args.run is None) == (args.pretrained is None):
        sys.stderr.write("imgcls export: give either RUN or --pretrained ARCH (exactly one)\n")
        return EXIT_USAGE
    if args.weights is not None and args.pretrained is None:
        sys.stderr.write(f"imgcls export: --weights applies only with --pretrained; exporting {args.run} always "
                         "uses the run's own checkpoint (drop --weights)\n")
        return EXIT_USAGE
    if args.pretrained and args.weights is None:
        args.weights = "imagenet"
    try:
        config = config_from(args)  # flag values first: they are wrong whatever the run
        run = None if args.pretrained else resolve_run(args.run)
        out = args.out or Path("bundles") / (f"{args.pretrained}-imagenet" if run is None else run.resolve().name)
        check_out(out, args.overwrite, export_inputs(args, run))
        if args.bentoml is not None:
            from imgcls.export.model_store import check_name

            check_name(args.bentoml)  # before minutes of export
    except ValueError as exc:
        sys.stderr.write(f"imgcls export: {_one_line(exc)}\n")
        return EXIT_USAGE
    from imgcls.export.bundle import export_bundle  # torch is imported only past argument parsing
    from imgcls.export.errors import ExportError, UsageError
    from imgcls.models.core.card import CardError
    from imgcls.models.training.checkpoint import CheckpointError

    try:
        card = export_pretrained(args, out, config) if args.pretrained else export_bundle(run, out, config)
    except (CheckpointError, CardError, UsageError) as exc:
        sys.stderr.write(f"imgcls export: {_one_line(exc)} (no bundle was written to {out})\n")
        return EXIT_USAGE
    except ExportError as exc:
        sys.stderr.write(f"imgcls export: {_one_line(exc)} (no bundle was written to {out})\n")
        return EXIT_FAILED
    except KeyboardInterrupt:
        sys.stderr.write(f"imgcls export: interrupted; no bundle was written to {out}\n")
        return 130
    sys.stdout.write(summary(card, out) + "\n")
    if args.bentoml is not None:
        from imgcls.export.model_store import StoreError, store_bundle

        try:
            tag = store_bundle(out, args.bentoml)
        except StoreError as exc:
            sys.stderr.write(f"imgcls export: {_one_line(exc)} (the bundle {out} was written)\n")
            return EXIT_USAGE
        sys.stdout.write(f"stored in BentoML's model store as {tag} (model source bentoml:{tag}); "
                         f"see it with: bentoml models get {tag}\n")
    refused = [p for p in ("int8", "fp16") if card.export.get(p, {}).get("status") == "refused"]
    for precision in refused:  # said once, here, in plain words (exit 3: written, a variant left out)
        reason = _one_line(card.export[precision]["reason"])
        sys.stderr.write(f"imgcls export: the {precision.upper()} variant was not written, its accuracy gate "
                         f"refused it: {reason}\n")
    if refused:
        return EXIT_REFUSED
    return 0


if __name__ == "__main__":
    sys.exit(main())
