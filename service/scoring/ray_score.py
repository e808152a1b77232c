"""``imgcls score --engine ray``: the command's flow around the Ray Data job of ``ray_engine``.

The same listing, ``--shard``, ``--resume``, row schema, summary line, ``--labels`` evaluation and
exit status as the single-process scorer (``cli``). Outputs:

* ``--out FILE.csv|.jsonl|.parquet``: rows stream back to this process and are written by the
  single-process scorer's crash-safe writers (``outputs.open_output``), in input order;
* ``--out DIR`` (a directory or a name without a suffix): a Parquet dataset written by the Ray
  workers themselves (``Dataset.write_parquet``), the choice for millions of images on a cluster.

Inputs: what the local scorer takes (directories, globs, files, list files; on a cluster they must
be visible at the same path on every node, e.g. a shared filesystem), or URIs Ray reads itself
(``s3://bucket/prefix``, ``gs://...``, with the filesystem package installed), not mixed.
"""
from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path
from typing import Any, Sequence

from imgcls.models.core import bundle as bundle_checks
from imgcls.service.scoring.dataset_dir import is_dataset_dir, prepare_dataset_dir, read_dataset_rows
from imgcls.models.core.calibration import effective_min_score
from imgcls.models.core.progress import track
from imgcls.service.precision import AUTO, choose
from imgcls.service.runtime import RuntimeConfig, wants_cuda
from imgcls.service.scoring.inputs import InputError
from imgcls.service.scoring.outputs import Row, open_output
from imgcls.service.scoring.ray_engine import (
    WRITE_CPUS, EngineError, RayOptions, actor_spec, connected, import_ray, is_uri, scored_dataset,
)
from imgcls.service.scoring.report import evaluate_output
from imgcls.service.scoring.splits import select_inputs
from imgcls.service.scoring.results import EXIT_INTERRUPTED, Tally, exit_status, summary

log = logging.getLogger("imgcls.score")



def _inputs(args: argparse.Namespace, card: Any) -> tuple[tuple[tuple[str, ...], dict[str, str] | None, int], bool]:
    """((paths or URIs, labels, how many trained the model), whether they are URIs)."""
    uris = [item for item in args.inputs if is_uri(item)]  # --list files hold local paths
    if not uris:
        return select_inputs(args, card), False
    if len(uris) != len(args.inputs):
        raise InputError("--engine ray: give either URIs (s3://, gs://, ...) or local inputs, not both")
    unsupported = [flag for flag, given in (("--shard", args.shard), ("--resume", args.resume),
                                            ("--labels", args.labels)) if given]
    if unsupported:
        raise InputError(f"--engine ray with URI inputs does not support {', '.join(unsupported)}")
    return (tuple(uris), None, 0), True


def _stream_to_file(dataset: Any, output: Any, total: int | None, no_progress: bool) -> Tally:
    """Rows back to this process, written batch by batch by the local scorer's writer; progress as the
    local scorer's (a bar on a terminal, log lines otherwise)."""
    tally = Tally()
    tables = dataset.iter_batches(batch_size=None, batch_format="pyarrow")
    for table in track(tables, "scoring (ray)", total, enabled=not no_progress, count=len, logger=log):
        rows = table.to_pylist()
        output.write(rows)
        for row in rows:
            tally.add(row)
    return tally


def _write_dataset(dataset: Any, out: Path, k: int, done: set[str]) -> Tally:
    """Workers write Parquet parts into ``out``; the tally is read back from the new rows."""
    dataset.write_parquet(str(out), ray_remote_args={"num_cpus": WRITE_CPUS})
    tally = Tally()
    for row in read_dataset_rows(out, k, fields=["path", "error"]):
        if row["path"] not in done:
            tally.add(row)
    return tally


def _execute(
    ray: Any, args: argparse.Namespace, todo: Sequence[str], uris: bool, k: int, output: Any, done: set[str],
) -> Tally:
    options = RayOptions(address=args.ray_address, actors=args.actors, actor_cpus=args.actor_cpus or 1.0,
                         actor_gpus=args.actor_gpus or 0.0)
    card = bundle_checks.load_card(args.bundle)
    min_score = effective_min_score(args.min_score, card.min_score)
    spec = actor_spec(args.bundle, args.precision, args.device, k, args.batch_size, options, args.threads,
                      args.decode_threads, min_score)
    with connected(ray, options):
        to_file = output is not None
        bars = not (args.no_progress or to_file) and sys.stderr.isatty() and sys.stdout.isatty()  # Ray Data's own
        dataset = scored_dataset(ray, todo, spec, options, progress=bars, uris=uris, written_by_ray=not to_file)
        try:
            if to_file:
                return _stream_to_file(dataset, output, None if uris else len(todo), args.no_progress)
            return _write_dataset(dataset, args.out, k, done)
        except (KeyboardInterrupt, EngineError):
            raise
        except Exception as exc:  # noqa: BLE001 - Ray wraps worker failures in many exception types
            raise EngineError(f"the Ray job failed ({type(exc).__name__}): {_root_cause(exc)}") from exc


def _root_cause(exc: Exception) -> str:
    """The worker's own error line (e.g. ``DeviceError: ...``) from Ray's wrapped traceback, else line 1."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    for line in reversed(lines):
        if "Error: " in line and not line.startswith(("File ", "ray.")):
            return line
    return lines[0] if lines else ""


def provenance_of(args: argparse.Namespace) -> dict[str, str]:
    """What the actors' Predictors will report as model_version/precision, from the card's lineage
    (each actor verifies the file against that same digest before it scores anything)."""
    card = bundle_checks.load_card(args.bundle)
    path = bundle_checks.model_file(args.bundle, card, args.precision)
    digest = str(card.lineage.get(f"sha256:{path.name}", ""))
    return {"model_version": bundle_checks.model_version(args.bundle, digest), "precision": args.precision}


def _open(args: argparse.Namespace, k: int) -> tuple[Any, list[Row]]:
    """(file writer or None for a dataset directory, rows already in the output)."""
    if is_dataset_dir(args.out):
        return None, prepare_dataset_dir(args.out, k, resume=args.resume, overwrite=args.overwrite)
    output = open_output(args.out, k, resume=args.resume, overwrite=args.overwrite, provenance=provenance_of(args))
    return output, list(output.existing)


def score_with_ray(args: argparse.Namespace) -> int:
    """Run ``imgcls score`` on Ray; returns the exit status (errors raise, the CLI maps them to 2)."""
    ray = import_ray()
    card = bundle_checks.load_card(args.bundle)  # fail here, not in every actor
    if args.precision == AUTO:  # chosen once, here, so that every actor loads the same file
        runtime = RuntimeConfig(device=args.device)
        choice = choose(Path(args.bundle), card, AUTO, runtime, on_gpu=wants_cuda(runtime))
        log.info("%s", choice.reason)
        args = argparse.Namespace(**{**vars(args), "precision": choice.precision})
    bundle_checks.model_file(args.bundle, card, args.precision)
    (paths, labels, trained), uris = _inputs(args, card)
    k = min(args.top_k, card.num_classes)
    output, existing = _open(args, k)
    done, wanted = {row["path"] for row in existing}, set(paths)
    earlier_failed = sum(1 for row in existing if row.get("error") and row["path"] in wanted)
    todo = [path for path in paths if path not in done]
    started = time.perf_counter()
    try:
        tally = _execute(ray, args, todo, uris, k, output, done) if todo else Tally()
    except KeyboardInterrupt:
        log.error("interrupted; the rows written so far are kept: rerun with --resume")
        return EXIT_INTERRUPTED
    finally:
        if output is not None:
            output.close()
    if output is not None:
        output.finish()
    elapsed = time.perf_counter() - started
    sys.stdout.write(summary(tally, len(paths) - len(todo), elapsed, args.out, earlier_failed) + "\n")
    if labels is not None:
        sys.stdout.write(evaluate_output(args.out, k, labels, card.class_names, card.temperature,
                                         effective_min_score(args.min_score, card.min_score), trained) + "\n")
    return exit_status(tally, earlier_failed)
