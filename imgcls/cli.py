"""``imgcls``: a thin dispatcher; each stage keeps its own ``main(argv)``."""
from __future__ import annotations

import importlib
import sys

from imgcls.extras import missing_for

STAGES: dict[str, tuple[str, str]] = {
    "models": ("imgcls.models_cli", "choose a backbone: params, GFLOPs, ImageNet accuracy, speed measured here"),
    "digits": ("imgcls.digits", "write the bundled scikit-learn digits as an ImageFolder"),
    "train": ("imgcls.models.training.cli", "fine-tune a zoo backbone on an ImageFolder -> runs/<run>/checkpoint"),
    "export": ("imgcls.export.cli", "checkpoint -> validated ONNX bundle (optionally INT8)"),
    "score": ("imgcls.service.scoring.cli", "batch-score images with a bundle -> CSV/JSONL/Parquet"),
    "serve": ("imgcls.service.host.serve", "serve a bundle over HTTP (POST /classify)"),
    "demo": ("imgcls.demo", "the whole pipeline on the bundled example data"),
}


def usage() -> str:
    """The stage list, each marked when this installation lacks the extra it needs."""
    lines = ["usage: imgcls <stage> [options]   (imgcls <stage> --help for a stage's options)", ""]
    unavailable = []
    for name, (_, help_text) in STAGES.items():
        problem = missing_for(name)
        lines.append(f"  {name:<7} {help_text}" + ("   [not installed]" if problem else ""))
        if problem:
            unavailable.append(problem)
    if unavailable:
        lines += ["", "Not available in this installation:", *(f"  {text}" for text in unavailable)]
    lines += ["", "Exit codes: 0 success; 2 bad input or usage; 1 export validation failed; "
              "3 partial (score: some images failed; export: a variant refused); 130 interrupted."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv:  # a usage error: no stage named
        sys.stderr.write(usage() + "\n")
        return 2
    if argv[0] in ("-h", "--help", "help"):
        sys.stdout.write(usage() + "\n")
        return 0
    stage, rest = argv[0], argv[1:]
    if stage not in STAGES:
        sys.stderr.write(f"imgcls: unknown stage {stage!r} (stages: {', '.join(STAGES)}; see imgcls --help)\n")
        return 2
    problem = missing_for(stage)
    if problem:
        sys.stderr.write(problem + "\n")
        return 2
    module = importlib.import_module(STAGES[stage][0])
    try:
        return int(module.main(rest) or 0)
    except KeyboardInterrupt:
        sys.stderr.write(f"imgcls {stage}: interrupted\n")
        return 130


if __name__ == "__main__":
    sys.exit(main())
