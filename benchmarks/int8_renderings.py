"""Issue 12: does `imgcls export RUN --int8` pass its gate on other renderings and on MobileNet-v2?

Each case renders scikit-learn's 1,797 digits its own way (size, upscaling filter, colours), trains
the demo's recipe on them (`imgcls train --strategy head`, ImageNet weights for efficientnet_lite0;
MobileNet-v2 has no ImageNet weights offline, so it is trained from scratch and its INT8 is judged
against its own fp32), exports with `--int8` (the whole ladder, default gate)
and records every rung's figures from the bundle's card. Nothing here is tuned per case: each one is
the command a user would type.

    python -m benchmarks.int8_renderings --out benchmarks/results/int8_renderings.json [--cases a,b]
"""
from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from PIL import Image, ImageOps

from benchmarks.fixtures import run_cli
from benchmarks.report import REPO_ROOT, markdown_table, setup_logging, summary_row, write_result
from imgcls.digits import digit_image

log = logging.getLogger("bench.int8_renderings")
DEFAULT_WORKDIR = REPO_ROOT / ".bench-out" / "int8-renderings"


@dataclass(frozen=True)
class Case:
    name: str
    arch: str = "efficientnet_lite0"
    weights: str = "imagenet"
    size: int = 32
    resample: str = "bicubic"
    ink: tuple[int, int, int] = (255, 255, 255)
    paper: tuple[int, int, int] = (0, 0, 0)
    epochs: int = 12
    strategy: str = "head"
    train_args: tuple[str, ...] = ()


CASES = {
    "demo": Case("demo rendering (32 px bicubic, white on black)"),
    "nearest96": Case("96 px nearest, black on white", size=96, resample="nearest", ink=(0, 0, 0), paper=(255, 255, 255)),
    "colour20": Case("20 px bilinear, orange on dark blue", size=20, resample="bilinear", ink=(250, 170, 40),
                     paper=(20, 30, 90)),
    # Random-init MobileNet-v2 features are degenerate (a head on them stays at chance): train it all.
    "mobilenet_v2": Case("mobilenet_v2 (from scratch, finetune), demo rendering", arch="mobilenet_v2", weights="none",
                         strategy="finetune", epochs=6, train_args=("--lr", "0.002", "--backbone-lr-mult", "1")),
}


def render(case: Case, out: Path) -> None:
    """The digits as ``out/<digit>/<index>.png`` in this case's rendering."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    resample = getattr(Image.Resampling, case.resample.upper())
    for index, (pixels, target) in enumerate(zip(digits.images, digits.target)):
        image = ImageOps.colorize(digit_image(pixels, case.size, resample), black=case.paper, white=case.ink)
        folder = out / str(int(target))
        folder.mkdir(parents=True, exist_ok=True)
        image.save(folder / f"{index:04d}.png")


def run_case(key: str, case: Case, workdir: Path) -> dict[str, Any]:
    folder = workdir / key
    shutil.rmtree(folder, ignore_errors=True)
    render(case, folder / "data")
    started = time.perf_counter()
    run_cli("train", "--data", str(folder / "data"), "--arch", case.arch, "--weights", case.weights,
            "--strategy", case.strategy, "--epochs", str(case.epochs), "--out", str(folder / "run"), "--loader-workers", "0",
            *case.train_args)
    trained = time.perf_counter()
    code = run_cli("export", str(folder / "run"), "--out", str(folder / "bundle"), "--int8", "--no-progress", ok=(0, 3))
    exported = time.perf_counter()
    card = json.loads((folder / "bundle" / "card.json").read_text())
    int8 = card["export"]["int8"]
    return {
        "case": asdict(case), "export_exit": code, "status": int8["status"], "method": int8.get("method"),
        "target": int8["target"], "train_s": round(trained - started, 1), "export_s": round(exported - trained, 1),
        "attempts": [{"method": a["method"], "passed": a["passed"],
                      **{k: a["gate"].get(k) for k in ("fp32_top1", "int8_top1", "accuracy_drop_points", "size_ratio",
                                                       "top1_agreement", "speed_ratio")}} for a in int8["attempts"]],
    }


def prepared(key: str, workdir: Path = DEFAULT_WORKDIR) -> tuple[Path, Path]:
    """Case ``key``'s run and bundle folders: the ones an earlier run left in ``workdir`` when their
    export finished, else trained and exported now as ``run_case`` does (minutes on 2 cores)."""
    folder = workdir / key
    if not (folder / "bundle" / "card.json").is_file():
        run_case(key, CASES[key], workdir)
    return folder / "run", folder / "bundle"


def summary(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """RESULTS.md rows: the kept INT8 variant's drop against its own fp32, per case."""
    rows = []
    for result in results:
        first = result["attempts"][0]
        kept = next((a for a in result["attempts"] if a["passed"]), result["attempts"][-1])
        rows.append(summary_row(
            "12 INT8 renderings", result["case"]["arch"],
            f"INT8 top-1 drop (points), {result['case']['name']}: {kept['method']}", kept["accuracy_drop_points"],
            f"fp32 top-1 {first['fp32_top1']:.3f}; plain PTQ drop {first['accuracy_drop_points']:.2f}; "
            f"file {100 * kept['size_ratio']:.1f} % of fp32", None, "drop <= 1 points (export gate)",
            result["status"] == "passed"))
    return rows


def table(results: list[dict[str, Any]]) -> str:
    rows = []
    for result in results:
        first, kept = result["attempts"][0], next((a for a in result["attempts"] if a["passed"]), None)
        rows.append([result["case"]["name"], f"{100 * first['fp32_top1']:.2f}",
                     f"{100 * first['int8_top1']:.2f} ({first['accuracy_drop_points']:+.2f})",
                     kept["method"] if kept else "refused",
                     f"{100 * kept['int8_top1']:.2f} ({kept['accuracy_drop_points']:+.2f})" if kept else "-",
                     f"{100 * kept['size_ratio']:.1f} %" if kept else "-",
                     f"{kept['speed_ratio']:.2f}x" if kept and kept.get("speed_ratio") else "-"])
    return markdown_table(["case", "fp32 top-1 %", "plain PTQ % (drop, points)", "rung kept", "INT8 top-1 % (drop, points)",
                           "size vs fp32", "speed vs fp32"], rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path)
    parser.add_argument("--workdir", type=Path, default=DEFAULT_WORKDIR)
    parser.add_argument("--cases", default=",".join(CASES), help=f"comma-separated among {', '.join(CASES)}")
    args = parser.parse_args(argv)
    setup_logging()
    results = []
    for key in args.cases.split(","):
        case = CASES[key]
        results.append(run_case(key, case, args.workdir))
        log.info("%s: %s (%s)", case.name, results[-1]["status"], results[-1]["method"])
    if args.out is not None and args.out.is_file():  # rerunning some cases keeps the others' results
        rerun = {r["case"]["name"] for r in results}
        kept = [r for r in json.loads(args.out.read_text()).get("results", []) if r["case"]["name"] not in rerun]
        results = kept + results
    write_result(args.out, "int8_renderings", {"results": results, "summary": summary(results)})
    print(table(results))
    return 0 if all(r["status"] == "passed" for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
