"""``imgcls score --engine ray``: the scoring pipeline as a Ray Data job (Ray is an optional extra).

    paths (or s3:// / gs:// URIs) -> Ray Dataset -> map_batches(ScoreActor, actor pool) -> rows

Each ``ScoreActor`` holds one ``Predictor``: the bundle is verified once per actor, ONNX Runtime's
intra-op threads are set to the actor's CPU share (ORT ignores OMP_NUM_THREADS and would otherwise
start one thread per core in every actor), and images go through ``Predictor.predict_batches``, the
decode (EXIF, modes, limits) and top-k of the single-process scorer and of ``/classify``. A file
that cannot be read becomes a row with its ``error`` reason, never a failed task.

Fault tolerance is Ray Data's own for actor pools: an actor that dies (killed, OOM, node lost) is
restarted and the batches it held are retried, so every input still gets exactly one row
(tests/test_score_ray.py kills one mid-job). When actors cannot start at all (a bad device, a
bundle missing on a node), Ray gives up after a few consecutive failures and the job fails with
``EngineError`` (exit 2).

Ray is imported lazily (``import_ray``), so this module imports without it; usage statistics are
off and a local Ray starts without the dashboard (nothing here needs the network). Ray's own log
lines stay in its session log files, out of the command's stderr (``ray_logs``).
"""
from __future__ import annotations

import contextlib
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

from imgcls.service.scoring.outputs import arrow_schema, columns
from imgcls.service.scoring.ray_logs import RAY_LOG_LEVEL, native_lines_dropped, quiet_ray_data
from imgcls.service.scoring.results import to_row

log = logging.getLogger("imgcls.score")

ENGINES = ("local", "ray")
EXTRA_HINT = "pip install 'imgcls[ray]'"
# Ray's read and write tasks are I/O; they ask for a fraction of a CPU, and the default pool leaves
# them that fraction: when actors hold every CPU, reads never run (the job stalls) and writes wait
# for the actors to be released at the end (every row piles up in the object store).
READ_CPUS = 0.25
WRITE_CPUS = 0.1


class EngineError(RuntimeError):
    """The Ray engine cannot run (not installed, cluster unreachable) or its job failed."""


def import_ray() -> Any:
    """The ``ray`` module with Ray Data, or ``EngineError`` naming the extra to install."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    try:
        import ray
        import ray.data  # noqa: F401 - Ray Data is what the extra adds
    except ImportError as exc:
        raise EngineError(f"--engine ray needs Ray Data, which is not installed ({exc}): {EXTRA_HINT}") from exc
    quiet_ray_data()
    return ray


@dataclass(frozen=True)
class RayOptions:
    address: str | None = None  # None: start a local Ray (unless one is already running in-process)
    actors: int | None = None  # None: as many as the cluster's CPUs (and GPUs) allow
    actor_cpus: float = 1.0
    actor_gpus: float = 0.0


@dataclass(frozen=True)
class ActorSpec:
    """What each actor needs to build its Predictor (pickled to the actors)."""
    bundle: str  # absolute
    precision: str
    device: str
    top_k: int
    batch_size: int
    threads: int  # ONNX Runtime intra-op threads
    decode_threads: int
    min_score: float | None = None  # abstain below this top-1 score (already resolved against the card)


class ScoreActor:
    """One Predictor per actor; ``__call__`` turns a batch of paths (or bytes) into rows (Arrow)."""

    def __init__(self, spec: ActorSpec) -> None:
        from imgcls.service.predictor import Predictor

        self.spec = spec
        self.predictor = Predictor.load(spec.bundle, precision=spec.precision, device=spec.device,
                                        threads=spec.threads, decode_threads=spec.decode_threads)
        self.k = min(spec.top_k, self.predictor.num_classes)
        self.schema = arrow_schema(columns(self.k))
        # rows written by the actors themselves (dataset directories) name their model like a file's rows
        self.provenance = {"model_version": self.predictor.model_version, "precision": self.predictor.precision}

    def __call__(self, batch: dict[str, Any]) -> Any:
        import pyarrow as pa

        paths = [str(path) for path in batch["path"]]
        sources = [bytes(b) for b in batch["bytes"]] if "bytes" in batch else [str(f) for f in batch["file"]]
        rows, position = [], 0
        for scored in self.predictor.predict_batches(sources, top_k=self.k, batch_size=self.spec.batch_size):
            for _, result in scored:
                rows.append({**to_row(paths[position], result, self.spec.min_score), **self.provenance})
                position += 1
        names = self.schema.names
        return pa.Table.from_pylist([{n: row.get(n) for n in names} for row in rows], schema=self.schema)


def is_uri(text: str) -> bool:
    """s3://, gs://, file:// ...: inputs Ray reads itself (through pyarrow's filesystems)."""
    return "://" in text


@contextlib.contextmanager
def connected(ray: Any, options: RayOptions) -> Iterator[None]:
    """Join ``options.address`` or start a local Ray; shut down only what was started here."""
    if ray.is_initialized():
        yield
        return
    with native_lines_dropped():
        try:
            if options.address:
                ray.init(address=options.address, logging_level=RAY_LOG_LEVEL, log_to_driver=False)
            else:
                from imgcls.service.runtime import available_cpus

                ray.init(num_cpus=max(1, math.floor(available_cpus())), include_dashboard=False,
                         logging_level=RAY_LOG_LEVEL, log_to_driver=False)
        except Exception as exc:  # noqa: BLE001 - Ray raises many types for an unreachable cluster
            raise EngineError(f"cannot start or join Ray (address {options.address or 'local'}): {exc}") from exc
        try:
            yield
        finally:
            ray.shutdown()


def pool_size(ray: Any, options: RayOptions, reserve_cpus: float = 0.0) -> int:
    """--actors, or as many actors as fit beside ``reserve_cpus`` (for Ray's read / write tasks)."""
    cpus = ray.cluster_resources().get("CPU", 1)
    if options.actors:
        if options.actors * options.actor_cpus + reserve_cpus > cpus:
            log.warning("%d actor(s) x %g CPU leave no %g CPU for reads/writes on a %g-CPU cluster: "
                        "the job may stall or buffer every row until the end",
                        options.actors, options.actor_cpus, reserve_cpus, cpus)
        return options.actors
    size = int((cpus - reserve_cpus) // options.actor_cpus)
    if options.actor_gpus > 0:
        gpus = ray.cluster_resources().get("GPU", 0)
        size = min(size, int(gpus // options.actor_gpus))
        if size < 1:
            raise EngineError(f"--actor-gpus {options.actor_gpus}: the Ray cluster has {gpus} GPU(s)")
    return max(1, size)


def scored_dataset(
    ray: Any, inputs: Sequence[str], spec: ActorSpec, options: RayOptions, progress: bool, uris: bool = False,
    written_by_ray: bool = False,
) -> Any:
    """The lazy Dataset of rows: nothing runs until it is iterated or written (``written_by_ray``:
    by ``write_parquet`` tasks, which then get WRITE_CPUS beside the actors)."""
    context = ray.data.DataContext.get_current()
    context.execution_options.preserve_order = True  # rows in input order, like the local scorer
    context.enable_progress_bars = progress
    actors = pool_size(ray, options, (READ_CPUS if uris else 0.0) + (WRITE_CPUS if written_by_ray else 0.0))
    if uris:
        dataset = ray.data.read_binary_files(list(inputs), include_paths=True, num_cpus=READ_CPUS)
    else:
        blocks = max(1, min(len(inputs), max(4 * actors, math.ceil(len(inputs) / (4 * spec.batch_size)))))
        items = [{"path": path, "file": os.path.abspath(path)} for path in inputs]
        dataset = ray.data.from_items(items, override_num_blocks=blocks)
    log.info("ray: %d actor(s) x %g CPU, %g GPU; ORT threads %d per actor", actors, options.actor_cpus,
             options.actor_gpus, spec.threads)
    return dataset.map_batches(
        ScoreActor, fn_constructor_args=(spec,), batch_size=spec.batch_size, batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=actors), num_cpus=options.actor_cpus,
        num_gpus=options.actor_gpus or None,
    )


def actor_spec(bundle: Path, precision: str, device: str, top_k: int, batch_size: int,
               options: RayOptions, threads: int | None, workers: int | None,
               min_score: float | None = None) -> ActorSpec:
    """ORT threads = the actor's CPU share unless --threads says otherwise; CUDA when GPUs are asked for."""
    share = max(1, math.floor(options.actor_cpus))
    if options.actor_gpus > 0 and device == "auto":
        device = "cuda"
    return ActorSpec(bundle=str(Path(bundle).resolve()), precision=precision, device=device, top_k=top_k,
                     batch_size=batch_size, threads=threads or share, decode_threads=workers or share,
                     min_score=min_score)
