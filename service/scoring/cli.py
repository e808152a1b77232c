"""``imgcls score``: batch-score images with a bundle, through the same Predictor as the server.

    imgcls score BUNDLE INPUTS... | --split val|train|all [--split-file PATH]
                 --out FILE.csv|.jsonl|.parquet [--top-k 5] [--batch-size 32]
                 [--decode-threads N] [--threads N] [--resume | --overwrite] [--labels imagefolder|FILE.csv]
                 [--shard i/n] [--precision fp32|int8|fp16|auto] [--device auto|cpu|cuda] [--all-files]
                 [--engine local|ray [--ray-address auto|ray://HOST:10001] [--actors N]
                  [--actor-cpus C] [--actor-gpus G]]
                 [--min-score S]

INPUTS are directories (walked recursively; files with image extensions unless --all-files),
glob patterns (quote them; ``**`` recurses), image files, or list files named .txt (one path per
line) or .csv (a ``path`` column or the first column); relative entries are relative to the list
file. A list file with another name is read as one only through ``--list FILE``.
``--split val`` (or train, all) scores the images of the split the model was trained with instead,
labelled by it: ``split.json`` of the run named in the bundle's ``export_report.json`` (checked
against the card's dataset hash), or ``--split-file RUN/split.json``. Whatever the inputs, a warning
counts the scored images the model was trained on (known through that lineage).
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
merges into ``<out>``; ``--resume`` reads both. One writer per output: a run holds ``<out>.lock``
(its pid inside) from start to end; a second run on the same --out exits 2 naming that pid, and the
lock of a killed run is taken over. ``--labels`` adds ``<out stem>.eval.json`` and
``<out stem>.confusion.png`` (accuracy, top-5, per-class precision/recall, ECE after and before
calibration, coverage and accuracy at --min-score and a coverage/accuracy curve), plus
``<out stem>.reliability.png`` and ``<out stem>.coverage.png``, and prints them.

--engine ray runs the same scoring as a Ray Data job (``pip install 'imgcls[ray]'``): a pool of
actors, each with one Predictor whose ORT threads are its CPU share, on a local Ray or the cluster
at --ray-address. Same rows, --resume, --labels and exit codes; --out may also be a directory (no
suffix): a Parquet dataset written by the workers. Inputs may be s3:// or gs:// URIs there
(``ray_score`` has the details).

Exit status: 0 every image scored; 3 some images could not be read (each has a row with its
``error`` reason); 2 nothing was scored because of a usage, input, bundle, device or output
problem (with --engine ray also: Ray not installed, the cluster unreachable, the job failed);
130 interrupted (what was written is kept: rerun with --resume).
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Sequence

from imgcls.models.core.bundle import PRECISIONS, BundleError, load_card
from imgcls.service.precision import AUTO
from imgcls.models.core.calibration import check_min_score, effective_min_score
from imgcls.models.core.output_lock import OutputLockedError, output_lock
from imgcls.models.core.progress import track
from imgcls.service.predictor import DEFAULT_BATCH_SIZE, Predictor
from imgcls.service.runtime import DEVICES, DeviceError
from imgcls.service.scoring.inputs import InputError
from imgcls.service.scoring.outputs import OutputError, check_out_apart, open_output
from imgcls.service.scoring.ray_engine import ENGINES, EngineError
from imgcls.service.scoring.report import check_report_files, evaluate_output
from imgcls.service.scoring.splits import SPLITS, select_inputs
from imgcls.service.scoring.results import (
    EXIT_ERROR, EXIT_INTERRUPTED, EXIT_OK, EXIT_PARTIAL, Tally, exit_status, summary, to_row,
)
from imgcls.stage_parser import StageParser

log = logging.getLogger("imgcls.score")

__all__ = ["EXIT_ERROR", "EXIT_INTERRUPTED", "EXIT_OK", "EXIT_PARTIAL", "build_parser", "main"]


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
    parser.add_argument("--split", choices=SPLITS, default=None,
                        help="score the images of the model's training run split (instead of INPUTS), labelled by "
                             "it: the run's split.json found through the bundle's lineage, or --split-file")
    parser.add_argument("--split-file", type=Path, default=None, metavar="PATH",
                        help="the split listing (RUN/split.json or RUN) for --split (default --split val)")
    parser.add_argument("--shard", default=None, help="i/n: score only shard i (1-based) of n")
    parser.add_argument("--precision", choices=(*PRECISIONS, AUTO), default="fp32",
                        help="auto: the variant imgcls serve --precision auto picks on this machine")
    parser.add_argument("--device", choices=DEVICES, default="auto")
    parser.add_argument("--all-files", action="store_true", help="under directories, score every file, not only image extensions")
    parser.add_argument("--min-score", type=float, default=None,
                        help="abstain when the top-1 score is below this (default: the card's min_score; 0: never)")
    parser.add_argument("--no-progress", action="store_true",
                        help="no progress (default: a bar on a terminal, a log line every 15 s otherwise)")
    engine = parser.add_argument_group("engine", "where the images are scored (--engine ray needs imgcls[ray])")
    engine.add_argument("--engine", choices=ENGINES, default="local",
                        help="local: this process; ray: a Ray Data job (local Ray or a cluster)")
    engine.add_argument("--ray-address", default=None,
                        help="Ray cluster to join: auto, HOST:PORT or ray://HOST:10001 (default: start a local Ray)")
    engine.add_argument("--actors", type=int, default=None, help="scoring actors (default: cluster CPUs / --actor-cpus)")
    engine.add_argument("--actor-cpus", type=float, default=None, help="CPUs per actor; its ORT threads (default 1)")
    engine.add_argument("--actor-gpus", type=float, default=None, help="GPUs per actor (> 0: score on CUDA; default 0)")
    return parser


def _validate(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    if args.split_file is not None and args.split is None:
        args.split = "val"
    if args.split and (args.inputs or args.lists):
        parser.error("--split scores the split's images: give no INPUTS or --list with it")
    if not args.inputs and not args.lists and not args.split:
        parser.error("give at least one input (a directory, glob, image file or list file) or --list FILE")
    for name in ("top_k", "batch_size", "decode_threads", "threads", "actors"):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    if args.min_score is not None:
        try:
            check_min_score(args.min_score, "--min-score")
        except ValueError as exc:
            parser.error(str(exc))
    if (args.actor_cpus is not None and args.actor_cpus <= 0) or (args.actor_gpus is not None and args.actor_gpus < 0):
        parser.error("--actor-cpus must be > 0 and --actor-gpus >= 0")
    ray_only = [flag for flag in ("--ray-address", "--actors", "--actor-cpus", "--actor-gpus")
                if getattr(args, flag[2:].replace("-", "_")) is not None]
    if args.engine != "ray" and ray_only:
        parser.error(f"{', '.join(ray_only)} need(s) --engine ray")


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


def _score(args: argparse.Namespace) -> int:
    load_card(args.bundle)  # a bundle problem (a training run, no card.json) is named before any listing
    check_out_apart(args.out, args.bundle, args.inputs, args.lists)  # nothing of the inputs is overwritten
    if args.labels or args.split:
        check_report_files(args.out)  # nor a file beside it that the evaluation would replace
    with output_lock(args.out):  # one writer per output, before anything of it is read or written
        return _score_locked(args)


def _score_locked(args: argparse.Namespace) -> int:
    if args.engine == "ray":
        from imgcls.service.scoring.ray_score import score_with_ray  # Ray is an optional extra

        return score_with_ray(args)
    paths, labels, trained = select_inputs(args, load_card(args.bundle))
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
        sys.stdout.write(summary(tally, len(paths) - len(todo), elapsed, args.out, earlier_failed) + "\n")
        if labels is not None:
            sys.stdout.write(evaluate_output(args.out, k, labels, predictor.class_names, predictor.temperature,
                                             min_score_of(args, predictor), trained) + "\n")
    return exit_status(tally, earlier_failed)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _validate(args, parser)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        return _score(args)
    except (InputError, OutputError, OutputLockedError, BundleError, DeviceError, EngineError) as exc:
        log.error("%s", exc)
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
