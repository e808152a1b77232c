"""``imgcls serve BUNDLE...``: start the BentoML HTTP service for bundles or model repositories.

A thin wrapper: the flags become ``IMGCLS_*`` environment variables (``imgcls.service.host.config``) and
``bentoml serve imgcls.service.host.service:ImageClassifier`` runs as a child process. SIGTERM/SIGINT are
passed on to it, so ``docker stop`` / Ctrl+C drain requests: the workers stop listening at once (new
connections are refused), answer every request they had accepted, and get ``--grace`` seconds for it
(uvicorn's ``--timeout-graceful-shutdown``) before they cancel what is left; a server still running
``supervise.KILL_MARGIN_S`` after that is killed. Once flags, variables, API key file and ports check
out, this process ``exec``s into ``imgcls.service.host.supervise`` (same pid; state directory, signals, exit
status), which runs the arbiter (``imgcls.service.host.arbiter``): it verifies every bundle while BentoML's
CLI loads and then is ``bentoml serve``. SIGTERM exits 0, Ctrl+C (SIGINT) 130 like every other stage.
Nothing here imports NumPy or ONNX Runtime (a model is loaded only in the arbiter's verifier and in the
workers), so the server starts as early as it can.
Every flag --some-flag defaults to its environment variable IMGCLS_SOME_FLAG, then to the built-in
default. Exit status 2 (one line, no traceback) for a bad bundle, flag, variable or a port already in use.
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import socket
import sys
from pathlib import Path

import imgcls
from imgcls.models.core.errors import ConfigError
from imgcls.service.host.arbiter import check_sources
from imgcls.service.host.auth import is_loopback, read_keys
from imgcls.service.host.config import ServiceConfig, env_name
from imgcls.stage_parser import StageParser

log = logging.getLogger("imgcls.serve")
SERVICE = "imgcls.service.host.service:ImageClassifier"
SWITCHES = {  # ServiceConfig field, on by default -> --FIELD / --no-FIELD and what it does
    "balance_connections": "spread keep-alive connections over the workers (least-connections accept: without it, "
                           "clients that connect together often all land on one worker) and, with --grpc-port, "
                           "gRPC inference calls (each runs on the least busy worker)",
    "pin_io_threads": "with several workers, run each worker's request threads (event loop, gRPC) on a CPU of its "
                      "own, so a request never waits behind another worker's (the computing threads still use "
                      "every CPU; skipped under a CPU quota smaller than the CPUs visible)",
}
APP_ROOT = Path(imgcls.__file__).resolve().parents[1]  # the directory from which `imgcls` imports
FLAG_FIELDS = {  # flag -> ServiceConfig field (help text comes from the field comment in config.py)
    "device": "device", "precision": "precision", "workers": "workers", "threads": "threads",
    "decode_threads": "decode_threads", "work_niceness": "work_niceness", "max_batch_size": "max_batch_size",
    "batch_wait_ms": "batch_wait_ms",
    "max_queue_images": "max_queue_images", "max_body_bytes": "max_body_bytes", "max_images": "max_images",
    "max_image_bytes": "max_image_bytes", "max_pixels": "max_pixels", "default_top_k": "default_top_k",
    "timeout": "timeout", "max_concurrency": "max_concurrency", "model_name": "model_name", "grace": "grace",
    "poll_s": "poll_s", "api_keys_file": "api_keys_file", "public_routes": "public_routes", "grpc_port": "grpc_port",
}
FLAG_HELP = {  # what each flag does; the variable and default are appended
    "device": "auto: CUDA when the CUDAExecutionProvider is usable, else CPU; cuda without it is an error",
    "precision": "which model file of the bundle to serve: auto picks the fastest variant that passed its "
                 "gate here (fp16 on a GPU; INT8 on a CPU only where it runs faster than fp32 on this "
                 "CPU kind) and logs why; fp32, int8, fp16: that file (the bundle must contain it)",
    "workers": "server processes, each with its own model copy; 0 = auto: one per usable CPU (cgroup quota, "
               "affinity), one on a GPU; 1 = lowest memory and single-request latency",
    "threads": "ONNX Runtime intra-op threads per worker; 0 = auto (usable CPUs / workers)",
    "decode_threads": "threads per worker decoding and resizing uploaded images",
    "work_niceness": "added to the nice value of each worker's inference and decode threads (0-19), so that the "
                     "threads moving requests (event loop, gRPC) run first when the CPUs are busy: a shorter "
                     "latency tail; 0 = off (other programs in the same cgroup also run before those threads)",
    "max_batch_size": "most images per inference call (concurrent requests are merged up to this); 0 = auto: "
                      "on CPU 2 with one ONNX Runtime thread per worker (bigger batches are no faster per image "
                      "there and cost memory), 8 with more; 16 on a GPU",
    "batch_wait_ms": "extra milliseconds to wait for more images before a batch runs; 0 = no wait",
    "max_queue_images": "images waiting for inference per worker before answering 503 overloaded",
    "max_body_bytes": "largest request body in bytes (413 body_too_large)",
    "max_images": "most images in one request (413 too_many_images)",
    "max_image_bytes": "largest encoded image in bytes (413 too_large)",
    "max_pixels": "largest decoded image, width x height (413 too_many_pixels; decompression bombs)",
    "default_top_k": "predictions per image when the request gives no top_k",
    "timeout": "seconds a request may take before BentoML answers 504",
    "max_concurrency": "requests handled at once before answering 429; 0 = unlimited",
    "model_name": "with one bundle: the name it is served as (/classify's model, /v2/models/{name}); default: "
                  "the bundle's folder name",
    "poll_s": "rescan the model repositories every N seconds: a new version (a higher numbered folder) or a new "
              "model is verified, warmed up in every worker and swapped in; one that fails verification is "
              "refused with a log line and the served version keeps serving; 0 = no polling",
    "api_keys_file": "a file with one API key per line: /classify, /model(s), /v2/models and /v2/repository then "
                     "need Authorization: Bearer <key> (401 otherwise); empty = no keys",
    "public_routes": "with API keys, the route groups open without a key, comma-separated: health (/livez, "
                     "/readyz, /v2/health), metrics (/metrics), ui (/ui and the API docs)",
    "grpc_port": "also serve the Open Inference Protocol over gRPC (inference.GRPCInferenceService, tritonclient.grpc) "
                 "on this TCP port, same address as --host, every worker; 0 = off",
    "grace": "after SIGTERM, seconds to answer the requests already accepted (fits docker stop's 10 s)",
}


def port_number(text: str) -> int:
    """argparse type for --port / IMGCLS_PORT: an integer 1..65535 (argparse names the flag)."""
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a port number 1-65535 (--port or IMGCLS_PORT), got {text!r}") from None
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"expected a port number 1-65535 (--port or IMGCLS_PORT), got {port}")
    return port


def build_parser() -> argparse.ArgumentParser:
    parser = StageParser(
        prog="imgcls serve", description=__doc__.split("\n\n")[0],
        epilog="Every flag --some-flag also reads $IMGCLS_SOME_FLAG (the flag wins). In a request, a top_k "
        "in the body (JSON field or multipart field) wins over ?top_k= in the query; without either, "
        "--default-top-k applies.")
    parser.add_argument("bundle", nargs="*",
                        help="what to serve: bundle folders (model.onnx + card.json), model repositories (one "
                             "subfolder per model, named after it, holding the bundle or numbered version folders "
                             "NAME/1/, NAME/2/: the highest is served) or bentoml:NAME[:VERSION] models; "
                             "default $IMGCLS_BUNDLE (several joined by ',')")
    parser.add_argument("--host", default=os.environ.get("IMGCLS_HOST", "127.0.0.1"),
                        help="address to listen on (0.0.0.0 in a container); $IMGCLS_HOST (default 127.0.0.1)")
    parser.add_argument("--port", type=port_number, default=os.environ.get("IMGCLS_PORT", "3000"),
                        help="TCP port; $IMGCLS_PORT (default 3000)")
    kinds = {f.name: f for f in dataclasses.fields(ServiceConfig)}
    for flag, field_name in FLAG_FIELDS.items():
        spec = kinds[field_name]
        kind = {"int": int, "float": float}.get(str(spec.type), str)
        choices = {"device": ("auto", "cpu", "cuda"), "precision": ("auto", "fp32", "int8", "fp16")}.get(flag)
        parser.add_argument("--" + flag.replace("_", "-"), dest=field_name, type=kind, choices=choices,
                            default=None, help=f"{FLAG_HELP[flag]}; ${env_name(field_name)} (default {spec.default})")
    parser.add_argument("--access-log", dest="access_log", action="store_true", default=None,
                        help="log every request (BentoML access log); $IMGCLS_ACCESS_LOG (default off)")
    for field_name, explanation in SWITCHES.items():
        parser.add_argument("--" + field_name.replace("_", "-"), dest=field_name, action=argparse.BooleanOptionalAction,
                            default=None, help=f"{explanation}; ${env_name(field_name)} (default on)")
    return parser


def port_problem(host: str, port: int) -> str | None:
    """Why ``host:port`` cannot be listened on (in use, unknown host), else None; checked before starting."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server binds
            probe.bind(address)
    except OSError as exc:
        return f"cannot listen on {host}:{port}: {exc.strerror or exc} (another server on that port? choose --port)"
    return None


def config_from(args: argparse.Namespace, environ: dict[str, str]) -> ServiceConfig:
    base = ServiceConfig.from_env(environ)
    flags = {name: getattr(args, name) for name in [*FLAG_FIELDS.values(), "access_log", *SWITCHES]
             if getattr(args, name) is not None}
    sources = args.bundle or ServiceConfig(bundle=environ.get(env_name("bundle"), "")).bundles
    resolved = [source if source.startswith("bentoml:") else str(Path(source).resolve()) for source in sources]
    if flags.get("api_keys_file") or base.api_keys_file:  # the workers run in another directory
        flags["api_keys_file"] = str(Path(flags.get("api_keys_file") or base.api_keys_file).resolve())
    return dataclasses.replace(base, bundle=",".join(resolved), **flags)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    try:
        config = config_from(args, dict(os.environ))
    except ConfigError as exc:
        log.error("%s", exc)
        return 2
    if not config.bundles:
        log.error("no bundle given (argument or $IMGCLS_BUNDLE)")
        return 2
    try:
        keys = read_keys(config.api_keys_file) if config.api_keys_file else ()
    except ConfigError as exc:
        log.error("%s", exc)
        return 2
    if not keys and not is_loopback(args.host):
        log.warning("serving on %s without API keys: anyone who can reach this address can classify and load "
                    "models (--api-keys-file FILE)", args.host)
    problem = port_problem(args.host, args.port)
    if not problem and config.grpc_port:
        problem = ("--grpc-port must differ from --port" if config.grpc_port == args.port
                   else port_problem(args.host, config.grpc_port))
    problem = problem or check_sources(config)[0]  # the models are loaded by the arbiter, as BentoML starts
    if problem:
        log.error("%s", problem)
        return 2
    config = dataclasses.replace(config, grpc_host=args.host)  # workers: resolved by the arbiter (on GPU: one)
    env = {**os.environ, **config.to_env()}  # supervise adds the state directory
    env.setdefault("BENTOML_DO_NOT_TRACK", "true")  # else BentoML posts usage data before it starts the workers
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(APP_ROOT), env.get("PYTHONPATH")]))
    bentoml = [sys.executable, "-m", "bentoml", "serve", SERVICE, "--host", args.host, "--port", str(args.port),
               "--working-dir", str(APP_ROOT), "--timeout-graceful-shutdown", str(max(1, round(config.grace)))]
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    # a lean process supervises the server; the arbiter verifies the bundles while BentoML loads
    supervisor = [sys.executable, "-m", "imgcls.service.host.supervise", "--grace", str(config.grace),
                  "--cwd", str(APP_ROOT), "--", sys.executable, "-m", "imgcls.service.host.arbiter", "--", *bentoml]
    os.execve(sys.executable, supervisor, env)
    return 1  # not reached: execve replaces this process or raises


if __name__ == "__main__":
    sys.exit(main())
