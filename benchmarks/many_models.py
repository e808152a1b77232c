"""One server, many models: memory of ten models, a swap under load, one model against the code before.

    .venv/bin/python -m benchmarks.many_models --out benchmarks/results/many_models.json

The code before the serving side held many models is commit ``--baseline-commit`` (92fba03), unpacked
once into ``--workdir`` with ``git archive`` (or ``--baseline-tree DIR``, e.g. a ``git worktree``); its
server runs from that folder (working directory and ``PYTHONPATH``) with this interpreter, and each
server's arbiter command line and ``GET /models`` (absent before) are kept to show which code
answered. Four phases, each server ready before it is measured, stopped after:

1. Memory: ``--models`` distinct efficientnet_lite0 models (ImageNet backbone, a digits head trained
   one epoch per seed; ``--copies``: one stock bundle copied under as many names, each still loaded as
   its own session) in one ``--workers`` server, against one server for the first of them, each after
   ``--clients`` clients (spread over every model) for ``--memory-seconds``; the sum of the process
   tree's peak RSS (``peer_servers.peak_rss``). Ten one-model servers are one measured server times
   ten. Goal: <= 1.5 GiB.
2. Swap under load (``benchmarks.model_swap``): version 2 (the same model exported by the other ONNX
   exporter, so another file) replaces version 1 under ``--clients`` clients. Goal: 0 failed requests,
   old version before, new after.
3. One model (MobileNet-v2 speed bundle, default workers): ``/classify`` (raw JPEG) and ``/v2``
   (Triton's binary request) at ``--clients`` clients against the code before, same JPEGs
   (``peers.jpeg_set``), interleaved rounds (``peers.interleaved``). Goal: >= 0.97x. Then peak RSS per
   worker against a no-op BentoML worker (``bentoml_floor``). Goal: <= floor + 110 MiB.
4. Start to the first answered classification, ``--start-repeats`` times each, rotating order
   (``peers_start``): imgcls, the code before, the no-op BentoML service. Goal: <= floor + 0.5 s.
"""
from __future__ import annotations

import argparse
import logging
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks import bentoml_floor, fixtures, model_swap, peers, peers_start
from benchmarks.http_load import drive
from benchmarks.peer_servers import HOST, OIP_MODEL, first_answer, oip_request, peak_rss, post, raw_request, tree_pids
from benchmarks.loadgen import Request
from benchmarks.many_models_report import summary
from benchmarks.report import REPO_ROOT, setup_logging, stop_group, write_result
from benchmarks.summaries import bundle_arch

log = logging.getLogger("bench.many_models")
WORKER = "_bentoml_impl.worker.service"  # a BentoML worker process in peak_rss_by_process


def lite0_bundle(workdir: Path, exporter: str) -> Path:
    """The stock ImageNet efficientnet_lite0 bundle (fp32), exported once with ``exporter`` and cached."""
    bundle = workdir / f"lite0-imagenet-{exporter}"
    if not (bundle / "card.json").is_file():
        shutil.rmtree(bundle, ignore_errors=True)
        fixtures.run_cli("export", "--pretrained", "efficientnet_lite0", "--out", str(bundle), "--exporter", exporter,
                         "--no-progress")
    return bundle


def lite0_heads(workdir: Path, count: int) -> Path:
    """A model repository of ``count`` distinct efficientnet_lite0 models (ImageNet backbone, a digits head
    trained one epoch with seed 1..count: own split, init and weights), each exported fp32; cached."""
    folder = workdir / "lite0-digits-heads"
    repository = folder / "repository"
    if not (folder / "digits").is_dir():
        fixtures.run_cli("digits", "--limit-per-class", "20", str(folder / "digits.partial"))
        (folder / "digits.partial").rename(folder / "digits")
    for seed in range(1, count + 1):
        bundle = repository / f"lite0-digits-{seed:02d}"
        if (bundle / "card.json").is_file():
            continue
        run = folder / "runs" / f"seed{seed:02d}"
        shutil.rmtree(run, ignore_errors=True)
        fixtures.run_cli("train", "--data", str(folder / "digits"), "--arch", "efficientnet_lite0", "--strategy", "head",
                         "--epochs", "1", "--seed", str(seed), "--out", str(run))
        shutil.rmtree(bundle, ignore_errors=True)
        fixtures.run_cli("export", str(run), "--out", str(bundle), "--no-progress")
    return repository


def workers_rss(memory: dict[str, Any]) -> list[float]:
    return [mib for name, mib in memory["peak_rss_by_process"] if name == WORKER]


def serve_and_load(target: Path, names: list[str], jpegs: list[bytes], args: argparse.Namespace,
                   log_path: Path) -> dict[str, Any]:
    """Serve ``target`` (bundle or repository), drive ``args.clients`` clients spread over ``names``; peak RSS."""
    from imgcls.service.host.launcher import start_server

    server = start_server(target, log_path, args=["--workers", str(args.workers)], ready_timeout=600)
    try:
        port = int(server.url.rsplit(":", 1)[1])
        payloads = [raw_request(f"/classify?model={names[i % len(names)]}", jpegs[i % len(jpegs)]).encode(HOST, port)
                    for i in range(args.clients)]
        load = drive(port, payloads, args.clients, args.memory_seconds, 100_000).summary()
        memory = peak_rss(server.process.pid)
    finally:
        exit_code = server.stop()
    workers = workers_rss(memory)
    log.info("%d model(s): %.0f MiB in all, workers %s MiB, %.1f req/s, statuses %s", len(names),
             memory["peak_rss_mb"], workers, load["throughput_rps"], load["statuses"])
    return {"models": len(names), **memory, "workers_mb": workers, "load": load, "exit_code": exit_code}


def memory_models(lite0: Path | None, args: argparse.Namespace, scratch: Path) -> tuple[Path, list[str], str]:
    """The repository of the memory phase, its model names, and what the models are."""
    if lite0 is not None:
        repository = scratch / "repository"
        names = [f"{lite0.name}-{i:02d}" for i in range(1, args.models + 1)]
        for name in names:
            shutil.copytree(lite0, repository / name)
        return repository, names, f"one bundle copied under {len(names)} names, each loaded as its own session"
    repository = lite0_heads(args.workdir, args.models)
    names = sorted(p.name for p in repository.iterdir())[: args.models]
    return repository, names, (f"{len(names)} distinct models: ImageNet backbone, a digits head trained one epoch "
                               "with its own seed, fp32")


def memory_phase(lite0: Path | None, jpegs: list[bytes], args: argparse.Namespace, scratch: Path) -> dict[str, Any]:
    repository, names, kind = memory_models(lite0, args, scratch)
    one = serve_and_load(repository / names[0], names[:1], jpegs, args, scratch / "one-model.log")
    many = serve_and_load(repository, names, jpegs, args, scratch / "many-models.log")
    per_worker_added = (statistics.fmean(many["workers_mb"]) - statistics.fmean(one["workers_mb"])) / (len(names) - 1)
    return {"kind": kind, "one_model_server": one, "many_model_server": many,
            "ten_one_model_servers_mb": round(one["peak_rss_mb"] * len(names), 1),
            "ten_one_model_servers_how": f"one one-model server measured, times {len(names)}",
            "added_model_per_worker_mb": round(per_worker_added, 1)}


def swap_phase(lite0: Path, lite0_v2: Path, jpegs: list[bytes], args: argparse.Namespace,
               scratch: Path) -> dict[str, Any]:
    from imgcls.service.host.launcher import start_server

    repository = scratch / "swap" / "repository"
    shutil.copytree(lite0, repository / "lite0" / "1")
    server = start_server(repository, scratch / "swap.log", args=["--workers", str(args.workers)], ready_timeout=600)
    try:
        port = int(server.url.rsplit(":", 1)[1])
        peers.warm(port, [raw_request("/classify?model=lite0", j).encode(HOST, port) for j in jpegs])
        result = model_swap.swap_under_load(port, repository, "lite0", lite0_v2, jpegs, args.clients,
                                            args.swap_seconds, args.swap_seconds)
    finally:
        result_exit = server.stop()
    return {**result, "workers": args.workers, "exit_code": result_exit}


def unpacked_commit(workdir: Path, commit: str) -> Path:
    """``commit``'s files under ``workdir`` (``git archive``, once): no work tree or branch is touched."""
    tree = workdir / f"code-{commit}"
    if not (tree / "imgcls" / "__init__.py").is_file():
        shutil.rmtree(tree, ignore_errors=True)
        tree.mkdir(parents=True)
        archive = subprocess.run(["git", "-C", str(REPO_ROOT), "archive", commit], capture_output=True, check=True)
        subprocess.run(["tar", "-x", "-C", str(tree)], input=archive.stdout, check=True)
    return tree


def base_command(tree: Path, bundle: Path, port: int) -> tuple[list[str], dict[str, str]]:
    """``imgcls serve`` of the code in ``tree`` with this interpreter: run there, that tree first on the path."""
    return ([sys.executable, "-m", "imgcls", "serve", str(bundle), "--host", HOST, "--port", str(port)],
            {**os.environ, "PYTHONPATH": str(tree)})


def code_check(root: int, port: int) -> dict[str, Any]:
    """Which code a server runs: its arbiter's command line (the service module) and whether /models exists."""
    commands = []
    for pid in tree_pids(root):
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
            cwd = os.readlink(f"/proc/{pid}/cwd")
        except OSError:
            continue
        if "bentoml" in argv and "serve" in argv:
            commands.append({"service": argv[argv.index("serve") + 1], "cwd": cwd})
    commands = [dict(c) for c in {tuple(c.items()) for c in commands}]  # the supervisor holds the same line
    status = post(port, Request("GET", "/models", b"", "text/plain"))[0]
    return {"arbiter": commands, "GET /models": status}


def start_base(tree: Path, bundle: Path, jpegs: list[bytes], scratch: Path,
               running: list[Any]) -> tuple[dict[str, Any], list[peers.Contender]]:
    """The code before (from ``tree``): its record and contenders, as ``peers.start_imgcls`` for today's."""
    from imgcls.service.host.launcher import Server, free_port

    port = free_port()
    command, env = base_command(tree, bundle, port)
    with open(scratch / "before.log", "wb") as sink:
        process = subprocess.Popen(command, cwd=tree, env=env, stdout=sink, stderr=subprocess.STDOUT,
                                   start_new_session=True)
    server = Server(process, f"http://{HOST}:{port}", scratch / "before.log", time.monotonic())
    running.append(server)
    ready_s = first_answer(process, port, raw_request("/classify", jpegs[0]), server.started_at)
    infer = f"/v2/models/{OIP_MODEL}/infer"
    record = {"config": "imgcls serve (code before)", "ready_s": ready_s, "pid": process.pid,
              "top1": [peers.top1(post(port, raw_request("/classify", j))[1]) for j in jpegs],
              "code": code_check(process.pid, port)}
    name = "before"
    contenders = [peers.Contender(f"{name} /classify", port,
                                  [raw_request("/classify", j).encode(HOST, port) for j in jpegs], record, "classify")]
    if post(port, oip_request(infer, jpegs[0], (1,)))[0] == 200:
        contenders.append(peers.Contender(f"{name} /v2", port, [oip_request(infer, j, (1,)).encode(HOST, port)
                                                                for j in jpegs], record, "v2"))
    return record, contenders


def base_start(tree: Path, bundle: Path, jpeg: bytes) -> peers_start.Start:
    from imgcls.service.host.launcher import free_port

    def start(scratch: Path) -> float:
        port = free_port()
        command, env = base_command(tree, bundle, port)
        with open(scratch / "before-start.log", "ab") as sink:
            process = subprocess.Popen(command, cwd=tree, env=env, stdout=sink, stderr=subprocess.STDOUT,
                                       start_new_session=True)
        try:
            return first_answer(process, port, raw_request("/classify", jpeg), time.monotonic())
        finally:
            stop_group(process)
    return start


def one_model_phase(bundle: Path, jpegs: list[bytes], args: argparse.Namespace, scratch: Path) -> dict[str, Any]:
    """Today's server against the code before: interleaved load, then peak RSS per server."""
    running: list[Any] = []
    out: dict[str, Any] = {}
    try:
        out["imgcls"], contenders = peers.start_imgcls(bundle, jpegs, scratch, (), running)
        port = int(running[0].url.rsplit(":", 1)[1])
        out["imgcls"]["code"] = code_check(out["imgcls"]["pid"], port)
        if args.baseline_tree:
            out["before"], more = start_base(args.baseline_tree, bundle, jpegs, scratch, running)
            contenders += more
        peers.interleaved(contenders, [args.clients], args.seconds, args.rounds, args.max_requests)
        for record in {id(c.record): c.record for c in contenders}.values():
            record.update(peak_rss(record.pop("pid")))
            record["workers_mb"] = workers_rss(record)
    finally:
        codes = [server.stop() for server in running]
    out["exit_codes"] = codes
    return out


def start_phase(bundle: Path, jpeg: bytes, args: argparse.Namespace, scratch: Path) -> dict[str, Any]:
    starts = {"imgcls": peers_start.imgcls_start(bundle, jpeg), "bentoml_floor": peers_start.floor_start(args.workers)}
    if args.baseline_tree:
        starts["before"] = base_start(args.baseline_tree, bundle, jpeg)
    samples = peers_start.measure(starts, scratch, args.start_repeats)
    return {name: {"median_s": statistics.median(values), "samples_s": values} for name, values in samples.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline-commit", default="92fba03", help="the code before (unpacked into --workdir)")
    parser.add_argument("--baseline-tree", type=Path, help="instead: a checkout of the code before")
    parser.add_argument("--no-baseline", action="store_true", help="skip the code before")
    parser.add_argument("--bundle", type=Path, help="a bundle served under many names (memory) and swapped (default: "
                        "efficientnet_lite0 with its ImageNet head, exported once into --workdir)")
    parser.add_argument("--copies", action="store_true", help="memory phase: copies of that bundle instead of "
                        "distinct lite0 models (each trained and exported once into --workdir, ~1 min per model)")
    parser.add_argument("--bundle-v2", type=Path, help="the version swapped in (default: the same model exported by the "
                        "legacy ONNX exporter)")
    parser.add_argument("--models", type=int, default=10)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--memory-seconds", type=float, default=15.0, help="load before reading peak RSS")
    parser.add_argument("--swap-seconds", type=float, default=5.0, help="load before the swap, and after it")
    parser.add_argument("--seconds", type=float, default=16.0, help="per server and route, split over the rounds")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--max-requests", type=int, default=4000)
    parser.add_argument("--start-repeats", type=int, default=3)
    parser.add_argument("--phases", nargs="+", default=["memory", "swap", "one_model", "start"],
                        choices=["memory", "swap", "one_model", "start"])
    parser.add_argument("--workdir", type=Path, default=fixtures.DEFAULT_WORKDIR, help="cached bundles")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    setup_logging()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # unwind through the finally blocks that stop servers
    if args.baseline_tree and not (args.baseline_tree / "imgcls" / "__init__.py").is_file():
        sys.stderr.write(f"many_models: {args.baseline_tree} is not a checkout of imgcls\n")
        return 2
    started, load_at_start = time.perf_counter(), os.getloadavg()[0]
    results: dict[str, Any] = {"clients": args.clients, "workers": args.workers, "models": args.models}
    if args.no_baseline or not {"one_model", "start"} & set(args.phases):
        args.baseline_tree = None
    elif args.baseline_tree is None:
        args.baseline_tree = unpacked_commit(args.workdir, args.baseline_commit)
        results["baseline_commit"] = args.baseline_commit
    else:
        results["baseline_commit"] = subprocess.run(["git", "-C", str(args.baseline_tree), "rev-parse", "--short",
                                                     "HEAD"], capture_output=True, text=True).stdout.strip()
    with tempfile.TemporaryDirectory(prefix="imgcls-many-models-") as folder:
        scratch = Path(folder)
        described = peers.jpeg_set(scratch)
        jpegs = [data for _, data in described]
        results["jpegs"] = [{"image": d, "bytes": len(b)} for d, b in described]
        if "memory" in args.phases:
            copied = args.bundle or (lite0_bundle(args.workdir, "dynamo") if args.copies else None)
            results["memory"] = memory_phase(copied, jpegs, args, scratch)
        if "swap" in args.phases:
            lite0 = args.bundle or lite0_bundle(args.workdir, "dynamo")
            results["swap"] = swap_phase(lite0, args.bundle_v2 or lite0_bundle(args.workdir, "legacy"), jpegs, args,
                                         scratch)
        if {"memory", "swap"} & set(args.phases):
            results["many_models_arch"] = bundle_arch(str(args.bundle)) if args.bundle else "efficientnet_lite0"
        if {"one_model", "start"} & set(args.phases):
            speed = fixtures.speed_bundle("mobilenet_v2", args.workdir).bundle_dir
        if "one_model" in args.phases:
            results["one_model"] = one_model_phase(speed, jpegs, args, scratch)
            results["bentoml_floor"] = bentoml_floor.measure(args.workers)
        if "start" in args.phases:
            results["start"] = start_phase(speed, jpegs[0], args, scratch)
    results["settings"] = {"seconds": args.seconds, "rounds": args.rounds, "memory_seconds": args.memory_seconds,
                           "swap_seconds": args.swap_seconds, "start_repeats": args.start_repeats,
                           "machine_shared": True}
    results["seconds"] = round(time.perf_counter() - started, 1)
    results["load_average"] = {"start": load_at_start, "end": os.getloadavg()[0]}
    results["summary"] = summary(results)
    write_result(args.out, "many_models", results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
