"""``imgcls``: a thin dispatcher; each stage keeps its own ``main(argv)``."""
from __future__ import annotations

import importlib
import sys

STAGES: dict[str, tuple[str, str]] = {
    "models": ("imgcls.models.zoo.cli", "choose a backbone: params, GFLOPs, ImageNet accuracy, speed measured here"),
    "digits": ("imgcls.digits", "write the bundled scikit-learn digits as an ImageFolder"),
    "train": ("imgcls.models.training.cli", "fine-tune a zoo backbone on an ImageFolder -> runs/<run>/checkpoint"),
    "export": ("imgcls.export.cli", "checkpoint -> validated ONNX bundle (optionally INT8)"),
    "score": ("imgcls.service.scoring.cli", "batch-score images with a bundle -> CSV/JSONL/Parquet"),
    "serve": ("imgcls.service.http.serve", "serve a bundle over HTTP (POST /classify)"),
    "demo": ("imgcls.demo", "the whole pipeline on the bundled example data"),
}


def usage() -> str:
    lines = ["usage: imgcls <stage> [options]   (imgcls <stage> --help for a stage's options)", ""]
    lines += [f"  {name:<7} {help_text}" for name, (_, help_text) in STAGES.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        sys.stdout.write(usage() + "\n")
        return 0
    stage, rest = argv[0], argv[1:]
    if stage not in STAGES:
        sys.stderr.write(f"imgcls: unknown stage {stage!r}\n{usage()}\n")
        return 2
    module = importlib.import_module(STAGES[stage][0])
    return int(module.main(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
