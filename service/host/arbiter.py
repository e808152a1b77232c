"""The process that becomes BentoML's arbiter: it verifies the bundles while BentoML's CLI loads.

``imgcls serve`` checks its flags, ports and sources (``check_sources``: no model loaded), then its
supervisor (``imgcls.service.host.supervise``) runs

    python -m imgcls.service.host.arbiter -- python -m bentoml serve imgcls.service.host.service:... --port ...

This process forks a verifier (``verify_in_child``) which loads every bundle once as a worker would
(hashes, embedded card, graph, device: NumPy and ONNX Runtime are imported there, never here), and
meanwhile imports BentoML's CLI, which is most of an arbiter's start; then it reads the verdict. A bad
bundle ends the process with exit status 2 and the verifier's one error line, before BentoML printed
or started anything (a worker that fails in ``__init__`` is restarted by BentoML forever). With a good
verdict the worker count is resolved (``auto``: one per usable CPU, one on a GPU, known only once a model
was loaded on the device asked for) and the command after ``--`` runs in this process as ``python -m``
runs it (``runpy``), so this process is the arbiter, with no further start of a Python.
"""
from __future__ import annotations

import json
import logging
import os
import runpy
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

from imgcls.models.core.bundle import training_run_message
from imgcls.service.engine.sources import ModelSource, resolve_sources
from imgcls.service.engine.types import EngineError
from imgcls.service.host import tracing
from imgcls.service.host.config import ServiceConfig, env_name

log = logging.getLogger("imgcls.serve")


@dataclass(frozen=True)
class Verdict:
    """What the verifier found: a problem (the process ends with it), else the models and where they run."""

    problem: str | None = None
    names: list[str] = field(default_factory=list)
    provider: str = ""
    workers: int = 0


def check_sources(config: ServiceConfig) -> tuple[str | None, list[ModelSource]]:
    """A quick look at the sources (no model is loaded, nothing heavy imported): every one names bundles.
    Returns the problem, else the models they name."""
    for source in config.bundles:
        path = Path(source)
        if not source.startswith("bentoml:") and path.is_dir() and training_run_message(path):
            return training_run_message(path), []
    try:
        found, _ = resolve_sources(config.bundles, config.model_name)
    except EngineError as exc:
        return exc.message, []
    for model in found:
        if not model.in_repository and not any(model.path.glob("*.onnx")):
            return f"bundle {model.path}: no ONNX file (run `imgcls export` first)", []
    return None, found


def verify_bundles(config: ServiceConfig, found: list[ModelSource]) -> tuple[str | None, str]:
    """Load each bundle once as a worker would. A model of a repository that fails is left out with a
    warning (the workers list it UNAVAILABLE), unless no model is left; any other failure is the problem.
    Returns (problem or None, the execution provider obtained)."""
    from imgcls.models.core.card import CardError
    from imgcls.service.predictor import BundleError, DeviceError, Predictor

    provider, served = "", 0
    for model in found:
        try:
            with Predictor.load(model.path, precision=config.precision, device=config.device, threads=1) as loaded:
                provider, served = loaded.provider, served + 1
        except DeviceError as exc:
            return str(exc), ""
        except (BundleError, CardError) as exc:
            if not model.in_repository:
                return str(exc), ""
            log.warning("model repository: leaving out %s: %s", model.name, exc)
    if not served:
        return "no model of the repository could be loaded (see the warnings above)", ""
    return None, provider


def verify(config: ServiceConfig) -> Verdict:
    from imgcls.service.runtime import CUDA

    problem, found = check_sources(config)
    provider = ""
    if not problem:
        problem, provider = verify_bundles(config, found)
    if problem:
        return Verdict(problem)
    workers = config.with_workers_resolved(on_gpu=provider == CUDA).workers
    return Verdict(None, [model.name for model in found], provider, workers)


def verify_in_child(config: ServiceConfig) -> tuple[int, int]:
    """Fork the verifier; returns (its pid, the read end of the pipe its verdict comes through)."""
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid:
        os.close(write_end)
        return pid, read_end
    os.close(read_end)
    code = 0
    try:
        verdict = verify(config)
        if verdict.problem:
            log.error("%s", verdict.problem)
            code = 2
    except BaseException as exc:  # noqa: BLE001 - whatever happens, the parent gets a verdict
        log.exception("checking the bundles failed")
        verdict, code = Verdict(f"checking the bundles failed: {type(exc).__name__}: {exc}"), 1
    try:
        with os.fdopen(write_end, "w") as pipe:
            pipe.write(json.dumps(asdict(verdict)))
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
    finally:
        os._exit(code)


def read_verdict(pid: int, read_end: int) -> Verdict:
    with os.fdopen(read_end) as pipe:
        text = pipe.read()
    _, status = os.waitpid(pid, 0)
    if not text:
        return Verdict(f"checking the bundles ended without a verdict (wait status {status})")
    return Verdict(**json.loads(text))


def preload_bentoml() -> None:
    """Import what ``python -m bentoml serve`` imports first (most of an arbiter's start), with no output."""
    import bentoml_cli.cli  # noqa: F401


def announce(command: list[str], config: ServiceConfig, verdict: Verdict) -> None:
    port = command[command.index("--port") + 1] if "--port" in command else "3000"
    grpc = f" and gRPC {config.grpc_host}:{config.grpc_port}" if config.grpc_port else ""
    spans = "on" if tracing.spans_wanted(config.access_log, os.environ) else "off (no tracing configured, no access log)"
    log.info("serving %s on http://%s:%s%s (%d worker(s), %s, %s; OpenTelemetry spans %s)", ", ".join(verdict.names),
             config.grpc_host, port, grpc, verdict.workers, config.device, config.precision, spans)


def run_arbiter(command: list[str], config: ServiceConfig) -> int:
    """Verify (in a child) while BentoML loads; on a good verdict run ``command`` (``python -m MODULE ...``) here."""
    pid, read_end = verify_in_child(config)
    preload_bentoml()
    verdict = read_verdict(pid, read_end)
    if verdict.problem:
        return 2  # the verifier logged the one line
    os.environ[env_name("workers")] = str(verdict.workers)
    announce(command, config, verdict)
    module, args = command[2], command[3:]
    sys.argv = [module, *args]
    runpy.run_module(module, run_name="__main__", alter_sys=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    argv = sys.argv[1:] if argv is None else argv
    command = argv[1:] if argv[:1] == ["--"] else argv
    if len(command) < 3 or command[1] != "-m":
        log.error("usage: python -m imgcls.service.host.arbiter -- PYTHON -m MODULE [ARGS...]")
        return 2
    return run_arbiter(command, ServiceConfig.from_env(os.environ))


if __name__ == "__main__":
    sys.exit(main())
