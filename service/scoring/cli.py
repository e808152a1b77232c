"""``imgcls score``: batch-score images with a bundle, through the same Predictor as the server.

    imgcls score BUNDLE INPUTS... --out FILE.csv|.jsonl|.parquet [--top-k 5] [--batch-size 32]
                 [--decode-threads N] [--threads N] [--resume | --overwrite] [--labels imagefolder|FILE.csv]
                 [--shard i/n] [--precision fp32|int8|fp16] [--device auto|cpu|cuda] [--all-files]
                 [--min-score S]

INPUTS are directories (walked recursively; files with image extensions unless --all-files),
glob patterns (quote them; ``**`` recurses), image files, or list files named .txt (one path per
line) or .csv (a ``path`` column or the first column); relative entries are relative to the list
file. A list file with another name is read as one only through ``--list FILE``.
The sorted, deduplicated list is what ``--shard i/n`` (1-based, round robin over the sorted list)
partitions: run ``--shard 1/4`` .. ``--shard 4/4`` on four machines, each with its own --out.

Output: one row per image, ``path, label_1, score_1, .., label_k, score_k, error, message,
abstained, uncalibrated_score_1, model_version, precision`` (``error`` is the decode failure's reason:
not_found, empty, too_large, not_an_image, unsupported_format, truncated, too_many_pixels, corrupt).
Scores are calibrated by the card's temperature (``uncalibrated_score_1`` is the plain softmax);
``abstained`` is true when score_1 is below ``--min-score`` (default: the card's
``calibration.min_score``; 0 turns it off): the labels are still written, the row is counted as
abstained. The last two columns name the model file that scored the row: ``--resume`` refuses a
file written by another bundle, precision or --top-k, naming both. CSV/JSONL are appended and
fsync'ed batch by batch, so a
killed run loses at most the batch in flight; ``--resume`` cuts a torn last line and skips every
path already in the file. Parquet is written as part files in ``<out>.parts/`` that a finished run
merges into ``<out>``; ``--resume`` reads both. ``--labels`` adds ``<out stem>.eval.json`` and
``<out stem>.confusion.png`` (accuracy, top-5, per-class precision/recall, ECE after and before
calibration, coverage and accuracy at --min-score and a coverage/accuracy curve), plus
``<out stem>.reliability.png`` and ``<out stem>.coverage.png``, and prints them.

Exit status: 0 every image scored; 3 some images could not be read (each has a row with its
``error`` reason); 2 nothing was scored because of a usage, input, bundle, device or output
problem; 130 interrupted (what was written is kept: rerun with --resume).
"""
from __future__ import annotations

import argparse
import collections
import json
import logging
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from imgcls.models.core.calibration import abstains, check_min_score, effective_min_score
from imgcls.models.core.preprocess import ImageDecodeError
from imgcls.models.core.progress import track
from imgcls.models.core.bundle import PRECISIONS, BundleError, load_card
from imgcls.service.predictor import DEFAULT_BATCH_SIZE, Prediction, Predictor
from imgcls.service.runtime import DEVICES, DeviceError
from imgcls.service.scoring.inputs import InputError, list_inputs, parse_shard, shard
from imgcls.service.scoring.outputs import ABSTAINED, UNCALIBRATED, OutputError, Row, open_output
from imgcls.service.scoring.report import evaluate_output, load_labels
from imgcls.stage_parser import StageParser

log = logging.getLogger("imgcls.score")

EXIT_OK, EXIT_ERROR, EXIT_PARTIAL, EXIT_INTERRUPTED = 0, 2, 3, 130


def build_parser() -> argparse.ArgumentParser:
    parser = StageParser(
        prog="imgcls score", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("bundle", type=Path, help="bundle directory (model.onnx + card.json)")
    parser.add_argument("inputs", nargs="*", help="directories, glob patterns, image files or .txt/.csv list files")
    parser.add_argument("--list", dest="lists", action="append", default=[], metavar="FILE",
                        help="a file listing paths (one per line, or a CSV 'path' column), whatever its name; repeatable")
    parser.add_argument("--out", required=True, type=Path, help="results file: .csv, .jsonl or .parquet")
    parser.add_argument("--top-k", type=int, default=5, help="labels per image (clamped to the class count)")
    parser.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE)
    parser.add_argument("--decode-threads", type=int, default=None, help="decoding threads (default: usable CPUs)")
    parser.add_argument("--threads", type=int, default=None, help="ONNX Runtime intra-op threads (default: usable CPUs)")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--resume", action="store_true", help="skip paths already in --out and append")
    mode.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    parser.add_argument("--labels", default=None, help="'imagefolder' (label = parent folder) or a CSV with path,label")
    parser.add_argument("--shard", default=None, help="i/n: score only shard i (1-based) of n")
    parser.add_argument("--precision", choices=PRECISIONS, default="fp32")
    parser.add_argument("--device", choices=DEVICES, default="auto")
    parser.add_argument("--all-files", action="store_true", help="under directories, score every file, not only image extensions")
    parser.add_argument("--min-score", type=float, default=None,
                        help="abstain when the top-1 score is below this (default: the card's min_score; 0: never)")
    parser.add_argument("--no-progress", action="store_true",
                        help="no progress (default: a bar on a terminal, a log line every 15 s otherwise)")
    return parser


@dataclass
class Tally:
    scored: int = 0
    failed: int = 0
    abstained: int = 0
    reasons: collections.Counter = field(default_factory=collections.Counter)

    def add(self, row: Row) -> None:
        if row["error"]:
            self.failed += 1
            self.reasons[row["error"]] += 1
        else:
            self.scored += 1
            self.abstained += bool(row[ABSTAINED])


def to_row(path: str, result: list[Prediction] | ImageDecodeError, min_score: float | None = None) -> Row:
    if isinstance(result, ImageDecodeError):
        return {"path": path, "error": result.reason, "message": result.message}
    row: Row = {"path": path, "error": None, "message": None, ABSTAINED: abstains(result[0].score, min_score),
                UNCALIBRATED: result[0].uncalibrated_score}
    for rank, prediction in enumerate(result, start=1):
        row[f"label_{rank}"] = prediction.label
        row[f"score_{rank}"] = prediction.score
    return row


def _validate(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    if not args.inputs and not args.lists:
        parser.error("give at least one input (a directory, glob, image file or list file) or --list FILE")
    for name in ("top_k", "batch_size", "decode_threads", "threads"):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    if args.min_score is not None:
        try:
            check_min_score(args.min_score, "--min-score")
        except ValueError as exc:
            parser.error(str(exc))


def _paths(args: argparse.Namespace) -> tuple[str, ...]:
    paths = list_inputs(args.inputs, all_files=args.all_files, lists=args.lists).paths
    if args.shard:
        index, count = parse_shard(args.shard)
        paths = shard(paths, index, count)
        log.info("shard %d/%d: %d image(s)", index, count, len(paths))
    if not paths:
        raise InputError("no images to score")
    return paths


def min_score_of(args: argparse.Namespace, predictor: Predictor) -> float | None:
    """--min-score, else the card's default; 0 means never abstain."""
    return effective_min_score(args.min_score, predictor.min_score)


def _run(predictor: Predictor, output, todo: Sequence[str], args: argparse.Namespace, k: int) -> Tally:
    tally = Tally()
    min_score = min_score_of(args, predictor)
    batches = predictor.predict_batches(todo, top_k=k, batch_size=args.batch_size)
    for batch in track(batches, "scoring", len(todo), enabled=not args.no_progress, count=len, logger=log):
        rows = [to_row(path, result, min_score) for path, result in batch]
        output.write(rows)
        for row in rows:
            tally.add(row)
    return tally


def _summary(tally: Tally, skipped: int, seconds: float, out: Path, earlier_failed: int) -> str:
    rate = tally.scored / seconds if seconds > 0 else 0.0
    reasons = ", ".join(f"{reason} {n}" for reason, n in sorted(tally.reasons.items()))
    text = f"scored {tally.scored}, failed {tally.failed}"
    text += f" ({reasons})" if reasons else ""
    text += f", abstained {tally.abstained}" if tally.abstained else ""
    text += f", skipped {skipped} already in the output" if skipped else ""
    text += f" ({earlier_failed} of them failed earlier)" if earlier_failed else ""
    return text + f"; {seconds:.1f} s, {rate:.1f} img/s -> {out}"


def _score(args: argparse.Namespace) -> int:
    load_card(args.bundle)  # a bundle problem (a training run, no card.json) is named before any listing
    paths = _paths(args)
    labels = load_labels(args.labels, paths) if args.labels else None
    predictor = Predictor.load(
        args.bundle, precision=args.precision, device=args.device, threads=args.threads,
        decode_threads=args.decode_threads,
    )
    with predictor:
        log.info("model %s", json.dumps(predictor.describe()))
        k = min(args.top_k, predictor.num_classes)
        provenance = {"model_version": predictor.model_version, "precision": predictor.precision}
        output = open_output(args.out, k, resume=args.resume, overwrite=args.overwrite, provenance=provenance)
        done = {row["path"] for row in output.existing}
        wanted = set(paths)
        earlier_failed = sum(1 for row in output.existing if row.get("error") and row["path"] in wanted)
        todo = [p for p in paths if p not in done]
        started = time.perf_counter()
        try:
            tally = _run(predictor, output, todo, args, k)
        except KeyboardInterrupt:
            output.close()
            log.error("interrupted; the rows written so far are kept: rerun with --resume")
            return EXIT_INTERRUPTED
        output.finish()
        elapsed = time.perf_counter() - started
        sys.stdout.write(_summary(tally, len(paths) - len(todo), elapsed, args.out, earlier_failed) + "\n")
        if labels is not None:
            sys.stdout.write(evaluate_output(args.out, k, labels, predictor.class_names, predictor.temperature,
                                             min_score_of(args, predictor)) + "\n")
    return EXIT_PARTIAL if tally.failed or earlier_failed else EXIT_OK


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _validate(args, parser)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        return _score(args)
    except (InputError, OutputError, BundleError, DeviceError) as exc:
        log.error("%s", exc)
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
