"""``imgcls demo``: the whole pipeline on the bundled example data, each stage in its own process.

digits -> train (efficientnet_lite0, ImageNet weights, head strategy) -> export (+ INT8) ->
score the validation split and serve over HTTP (both ``--precision auto``: the INT8 variant only when it passed its gate and runs faster than fp32 on this CPU, the choice imgcls serve makes) -> classify held-out images -> stop the server.
Every stage is the same command a user would type; this module only strings them together.
"""
from __future__ import annotations

import json
import logging
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from imgcls.models.core.dataset import SplitListing
from imgcls.service.host.launcher import child_environment, encode_multipart, start_server
from imgcls.stage_parser import StageParser

log = logging.getLogger("imgcls.demo")


@dataclass(frozen=True)
class DemoConfig:
    workdir: Path
    arch: str
    epochs: int
    int8: bool
    held_out: int
    ready_timeout_s: float


# `imgcls export` exits 3 when the INT8 variant is refused by its accuracy gate (fp32 bundle kept).
EXPORT_VARIANT_REFUSED = 3


def run_stage(*args: str, accepted: tuple[int, ...] = (0,), timings: dict[str, float] | None = None) -> int:
    """``imgcls ARGS`` in its own process; its wall time goes in the log and in ``timings[ARGS[0]]``."""
    command = [sys.executable, "-m", "imgcls", *args]
    log.info("$ imgcls %s", " ".join(args))
    started = time.perf_counter()
    result = subprocess.run(command, check=False, env=child_environment())
    if result.returncode not in accepted:
        raise SystemExit(f"demo: `imgcls {args[0]}` failed with exit status {result.returncode}")
    seconds = time.perf_counter() - started
    if timings is not None:
        timings[args[0]] = round(seconds, 1)
    log.info("imgcls %s took %.1f s", args[0], seconds)
    return result.returncode


def classify_over_http(url: str, paths: list[Path]) -> dict:
    body, content_type = encode_multipart([(path.name, path.read_bytes(), "image/png") for path in paths])
    request = urllib.request.Request(
        f"{url}/classify?top_k=3", data=body, method="POST", headers={"Content-Type": content_type}
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.loads(response.read())


def serve_and_classify(config: DemoConfig, bundle: Path, held_out: list[tuple[Path, str]],
                       precision: str = "fp32", timings: dict[str, float] | None = None) -> None:
    log.info("$ imgcls serve %s --precision %s --host 127.0.0.1 --port <free>", bundle, precision)
    started = time.perf_counter()
    try:
        server = start_server(bundle, args=("--precision", precision), ready_timeout=config.ready_timeout_s)
    except RuntimeError as exc:
        raise SystemExit(f"demo: {exc}") from None
    with server:
        log.info("server ready in %.1f s at %s", time.monotonic() - server.started_at, server.url)
        answer = classify_over_http(server.url, [path for path, _ in held_out])
        print_answers(answer, held_out)
    log.info("server stopped (exit status %s)", server.process.returncode)
    if timings is not None:
        timings["serve"] = round(time.perf_counter() - started, 1)


def print_answers(answer: dict, held_out: list[tuple[Path, str]]) -> None:
    results = answer.get("results", [])
    right = 0
    model = answer.get("model", {})
    sys.stdout.write(
        f"\nPOST /classify answered (model {model.get('name')} {model.get('version')}, "
        f"{model.get('precision')} on {model.get('provider')}):\n"
    )
    for (path, truth), result in zip(held_out, results):
        predictions = result.get("predictions") or []
        best = predictions[0] if predictions else {"label": (result.get("error") or {}).get("reason"), "score": 0.0}
        right += best["label"] == truth
        top = ", ".join(f"{p['label']} {p['score']:.2f}" for p in predictions)
        sys.stdout.write(f"  {path.name:<18} truth {truth:<3} -> {top}\n")
    sys.stdout.write(f"{right}/{len(held_out)} held-out images classified correctly over HTTP\n")


def held_out_images(run_dir: Path, count: int) -> list[tuple[Path, str]]:
    split = SplitListing.load(run_dir)
    step = max(1, len(split.val) // count)
    chosen = split.val[::step][:count]
    return [(split.absolute(s), split.class_names[s.label]) for s in chosen]


def write_val_list(run_dir: Path) -> Path:
    split = SplitListing.load(run_dir)
    listing = run_dir / "val_images.txt"
    listing.write_text("".join(f"{split.absolute(s)}\n" for s in split.val))
    return listing


def run_demo(config: DemoConfig) -> dict[str, float]:
    """Every stage in turn; returns each stage's wall time in seconds (``serve``: start, classify, stop)."""
    timings: dict[str, float] = {}
    data = config.workdir / "demo-data" / "digits"
    run_dir = config.workdir / "runs" / "demo"
    bundle = config.workdir / "bundles" / "demo"
    if not data.is_dir():
        run_stage("digits", str(data), timings=timings)
    run_stage(
        "train", "--data", str(data), "--arch", config.arch, "--weights", "imagenet",
        "--strategy", "head", "--epochs", str(config.epochs), "--out", str(run_dir), "--overwrite", timings=timings,
    )
    status = run_stage(
        "export", str(run_dir), "--out", str(bundle), "--overwrite", *(["--int8"] if config.int8 else []),
        accepted=(0, EXPORT_VARIANT_REFUSED), timings=timings,
    )
    if config.int8 and status == EXPORT_VARIANT_REFUSED:
        log.warning("the demo goes on with the fp32 model (the INT8 variant was refused, see above)")
    scores = run_dir / "val_scores.csv"
    run_stage(
        "score", str(bundle), str(write_val_list(run_dir)), "--out", str(scores), "--labels", "imagefolder",
        "--precision", "auto", "--overwrite", timings=timings,
    )
    serve_and_classify(config, bundle, held_out_images(run_dir, config.held_out), "auto", timings)
    return timings


def main(argv: list[str] | None = None) -> int:
    parser = StageParser(prog="imgcls demo", description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=Path("."), help="where demo-data/, runs/, bundles/ go")
    parser.add_argument("--arch", default="efficientnet_lite0")
    parser.add_argument("--epochs", type=int, default=15, help="head epochs (early stopping may end sooner)")
    parser.add_argument("--no-int8", dest="int8", action="store_false", help="skip the INT8 variant")
    parser.add_argument("--held-out", type=int, default=6, help="validation images sent over HTTP")
    parser.add_argument("--ready-timeout", type=float, default=60.0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    config = DemoConfig(args.workdir, args.arch, args.epochs, args.int8, args.held_out, args.ready_timeout)
    started = time.perf_counter()
    timings = run_demo(config)
    log.info("demo finished in %.0f s (%s)", time.perf_counter() - started,
             ", ".join(f"{stage} {seconds:.1f} s" for stage, seconds in timings.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
