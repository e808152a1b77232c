"""``imgcls train``: fine-tune a zoo backbone on an ImageFolder -> ``runs/<run>/checkpoint``.

Runs as one process, or under ``torchrun --nproc_per_node N -m imgcls.models.training.cli ...`` with
DistributedDataParallel (gloo on CPU, NCCL on CUDA); rank 0 writes every file.
Exit codes: 0 done, 2 bad data or options (a message, no traceback), 130 interrupted (the message
names the command that continues).
"""
from __future__ import annotations

import argparse
import logging
import os
import shlex
import sys
from pathlib import Path
from typing import Any

from imgcls.models.core.errors import ConfigError
from imgcls.models.core.ownership import OwnershipError, check_disjoint, check_replaceable
from imgcls.models.training.config import OPTIMIZERS, STRATEGIES, TrainConfig, build_config
from imgcls.stage_parser import StageParser

log = logging.getLogger("imgcls.train")

# Options a resumed run takes from its saved config (``--epochs`` may extend it).
RESUME_FIXED = ("data", "arch", "weights", "strategy", "lr", "batch_size", "val_fraction", "seed", "optimizer")


def build_parser() -> argparse.ArgumentParser:
    p = StageParser(
        prog="imgcls train",
        description="Fine-tune a backbone from the zoo on DIR/<class>/<image> (or DIR/train + DIR/val). "
        "Image size, normalisation and class count come from the backbone and the data, not from flags. "
        "Defaults in [brackets]; --data, --arch and --out are required unless --resume is given.",
    )
    add = p.add_argument
    add("--data", help="ImageFolder root: DIR/<class>/<image>, or DIR/train and DIR/val")
    add("--arch", help="zoo architecture, e.g. resnet50, efficientnet_lite0, vit_b_16, tiny")
    add("--weights", help="imagenet | none | FILE (a state dict) [imagenet]")
    add("--strategy", choices=STRATEGIES, help="head: frozen backbone; finetune: all layers, backbone at "
        "lr x --backbone-lr-mult; gradual: head for --unfreeze-epoch epochs, then all [head]")
    add("--epochs", type=int, help="maximum epochs [head 15, finetune 10, gradual 12]")
    add("--out", help="run directory, e.g. runs/NAME")
    add("--resume", metavar="RUN", help="continue runs/RUN where it stopped: after its last completed epoch, "
        "reusing the backbone features it had cached")
    add("--lr", type=float, help="head learning rate [head 1e-2, finetune 1e-3, gradual 3e-3]")
    add("--backbone-lr-mult", type=float, help="backbone lr = lr x this [0.1]")
    add("--weight-decay", type=float, help="[head 1e-4, otherwise 0.05]")
    add("--optimizer", choices=OPTIMIZERS, help="[adamw]")
    add("--momentum", type=float, help="SGD momentum (Nesterov) [0.9]")
    add("--batch-size", type=int, help="per process [32]")
    add("--val-fraction", type=float, help="stratified split when DIR has no train/val folders [0.2]")
    add("--seed", type=int, help="split, head init, shuffling and augmentation [0]")
    add("--loader-workers", dest="workers", type=int, help="data-loading processes (torch DataLoader workers) "
        "[half the CPU cores, at most 8]")
    add("--threads", type=int, help="torch CPU threads per process; a resumed run keeps its own for "
        "bit-identical results [cores / processes]")
    add("--warmup-epochs", type=float, help="linear warm-up before the cosine decay [finetune 1, otherwise 0]")
    add("--label-smoothing", type=float, help="[0.1]")
    add("--class-weights", action=argparse.BooleanOptionalAction, help="inverse-frequency loss weights [off]")
    add("--grad-clip", type=float, help="max gradient norm, 0 disables [1.0]")
    add("--patience", type=int, help="early stopping: epochs without val-accuracy gain, 0 disables "
        "[head 5, otherwise 4]")
    add("--unfreeze-epoch", type=int, help="gradual: epochs of head-only training before unfreezing [3]")
    add("--cached-features", action=argparse.BooleanOptionalAction,
        help="head: compute backbone features once and train the head on them [on]")
    add("--augmented-passes", type=int, help="head with cached features: 0 caches un-augmented features; "
        "N caches N augmented passes, epoch e uses pass e mod N [0]")
    add("--augment", action=argparse.BooleanOptionalAction, help="random-resized-crop augmentation [on]")
    add("--min-crop-scale", type=float, help="smallest random-resized-crop area fraction [0.08]")
    add("--hflip", action=argparse.BooleanOptionalAction, help="random horizontal flips [on]")
    add("--strict", action=argparse.BooleanOptionalAction, help="refuse any unreadable image instead of "
        "skipping it [off]")
    add("--amp", action=argparse.BooleanOptionalAction, help="mixed precision on CUDA (never on CPU) [on]")
    add("--device", choices=("auto", "cpu", "cuda"), help="[auto]")
    add("--overwrite", action="store_true", help="replace the run already in --out (its checkpoint, split, "
        "metrics, plots and resume state) instead of refusing")
    add("-v", "--verbose", action="store_true", help="debug logging")
    return p


def _default_workers() -> int:
    return min(8, (os.cpu_count() or 2) // 2)


def _options(args: argparse.Namespace) -> dict[str, Any]:
    return {k: v for k, v in vars(args).items() if k not in ("resume", "verbose", "overwrite")}


def _resume_config(args: argparse.Namespace) -> tuple[TrainConfig, dict[str, Any]]:
    from imgcls.models.training.resume import load_train_state

    state = load_train_state(args.resume)
    config = TrainConfig.from_dict(state["config"]).with_changes(out=str(args.resume))
    ignored = [k for k in RESUME_FIXED if getattr(args, k) is not None and getattr(args, k) != getattr(config, k)]
    if ignored:
        log.warning("--resume keeps the run's own %s; ignoring the values given", ", ".join(ignored))
    if args.epochs is not None and args.epochs != config.epochs:
        config = config.with_changes(epochs=args.epochs)
    if args.threads is not None and args.threads != config.threads:
        log.warning("--threads %d differs from the run's %d: results will differ in the last bits",
                    args.threads, config.threads)
        config = config.with_changes(threads=args.threads)
    return config, state


def _fresh_config(args: argparse.Namespace) -> TrainConfig:
    missing = [f"--{name}" for name in ("data", "arch", "out") if getattr(args, name) is None]
    if missing:
        raise ConfigError(f"missing {', '.join(missing)} (or pass --resume RUN)")
    from imgcls.models.zoo.registry import entry_for

    entry_for(args.arch)  # unknown architecture: a message listing the zoo
    out = Path(args.out)
    check_disjoint(out, [("--data", args.data)])
    if check_replaceable(out, "run", args.overwrite, how=f"pass --resume {out} to continue it, --overwrite to "
                         "replace it") and int(os.environ.get("RANK", "0")) == 0:
        _remove_run(out)
    options = _options(args)
    if options.get("workers") is None:
        options["workers"] = _default_workers()
    if options.get("threads") is None:
        local = int(os.environ.get("LOCAL_WORLD_SIZE", os.environ.get("WORLD_SIZE", "1")))
        options["threads"] = max(1, (os.cpu_count() or 1) // local)
    return build_config(options)


def _remove_run(out: Path) -> None:
    """Delete what a previous run wrote into ``out`` (and nothing else)."""
    import shutil

    from imgcls.models.training.resume import TRAIN_STATE_FILENAME
    from imgcls.models.training.session import RUN_FILES

    from imgcls.models.training.feature_cache import CACHE_DIRNAME

    log.warning("--overwrite: replacing the run in %s", out)
    for folder in ("checkpoint", CACHE_DIRNAME):
        shutil.rmtree(out / folder, ignore_errors=True)
    for name in (*RUN_FILES, TRAIN_STATE_FILENAME):
        (out / name).unlink(missing_ok=True)


def _setup_distributed(device_option: str) -> Any:
    import torch

    from imgcls.models.training.modes import DistContext

    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    if device_option == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda: no CUDA device is available")
    use_cuda = device_option != "cpu" and torch.cuda.is_available()
    device = torch.device(f"cuda:{local_rank}" if use_cuda else "cpu")
    if use_cuda:
        torch.cuda.set_device(device)
    if world_size > 1:
        import torch.distributed as dist

        dist.init_process_group("nccl" if use_cuda else "gloo")
    return DistContext(rank, world_size, local_rank, device)


def _print_result(report: dict[str, Any], run_dir: Path) -> None:
    sys.stdout.write(
        f"best epoch {report['epoch']}: val accuracy {report['val_accuracy']:.4f} "
        f"(balanced {report['val_balanced_accuracy']:.4f}) on {report['val_images']} images\n"
        f"{'class':<20} {'precision':>9} {'recall':>7} {'support':>7}\n"
    )
    for name, row in report["per_class"].items():
        sys.stdout.write(f"{name:<20} {row['precision']:>9.3f} {row['recall']:>7.3f} {row['support']:>7d}\n")
    fitted = report.get("calibration")
    if fitted:
        sys.stdout.write(
            f"calibration: temperature {fitted['temperature']:.4f} fitted on {fitted['images']} validation images; "
            f"ECE {fitted['ece_before']:.4f} -> {fitted['ece_after']:.4f}, "
            f"NLL {fitted['nll_before']:.4f} -> {fitted['nll_after']:.4f}\n")
    sys.stdout.write(f"checkpoint: {run_dir / 'checkpoint'}\n")


def _complete_plots(run_dir: Path, best_epoch: int) -> None:
    """Plots a finished run lacks (interrupted after its last epoch, while plotting)."""
    from imgcls.models.training.session import PLOT_FILES, write_plots

    missing = [name for name in PLOT_FILES if not (run_dir / name).is_file()]
    if missing and int(os.environ.get("RANK", "0")) == 0:
        write_plots(run_dir, best_epoch)
        log.info("wrote %s (the run was interrupted before plotting)", ", ".join(missing))


def run(args: argparse.Namespace) -> int:
    import torch

    from imgcls.models.training.session import TrainingSession

    config, state = _resume_config(args) if args.resume else (_fresh_config(args), None)
    if state is not None and (state["progress"]["completed_epochs"] >= config.epochs
                              or state["progress"]["stopped_early"]):
        _complete_plots(Path(args.resume), state["progress"]["best_epoch"])
        log.info("%s is already complete (%d epochs); pass a larger --epochs to continue",
                 args.resume, state["progress"]["completed_epochs"])
        return 0
    torch.set_num_threads(config.threads or 1)
    dist = _setup_distributed(config.device)
    try:
        report = TrainingSession(config, dist, state).run()
        if dist.is_main:
            _print_result(report, Path(config.out))
    finally:
        if dist.world_size > 1:
            import torch.distributed as torch_distributed

            torch_distributed.destroy_process_group()
    return 0


def next_step(args: argparse.Namespace, argv: list[str]) -> str:
    """What to run after an interruption, judged by what is on disk now: ``--resume`` once the run
    has a resume state (written before the first epoch), otherwise the same command again."""
    from imgcls.models.training.resume import TRAIN_STATE_FILENAME

    run_dir = args.resume or args.out
    if run_dir and (Path(run_dir) / TRAIN_STATE_FILENAME).is_file():
        extend = ["--epochs", str(args.epochs)] if args.resume and args.epochs is not None else []
        return "continue with: " + shlex.join(["imgcls", "train", "--resume", run_dir, *extend])
    command = ["imgcls", "train", *argv]
    out = Path(args.out) if args.out else None
    if out is not None and not args.overwrite and out.is_dir() and any(out.iterdir()):
        command.append("--overwrite")  # what this command wrote before it was interrupted
    return "nothing to resume yet; start again with: " + shlex.join(command)


def _setup_logging(verbose: bool) -> None:
    """Our lines at INFO (DEBUG with -v) on rank 0; other libraries' only from WARNING up."""
    rank = int(os.environ.get("RANK", "0"))
    logging.basicConfig(level=logging.DEBUG if verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("imgcls").setLevel(logging.DEBUG if verbose else logging.INFO if rank == 0 else logging.WARNING)


def _run_reporting_errors(args: argparse.Namespace) -> int:
    """``run``, with bad data or options as one logged line and exit status 2."""
    from imgcls.models.core.dataset import DatasetError
    from imgcls.models.training.resume import ResumeError
    from imgcls.models.zoo.registry import UnknownArchError
    from imgcls.models.zoo.weights import WeightsError

    try:
        return run(args)
    except (DatasetError, ConfigError, OwnershipError, ResumeError, WeightsError, UnknownArchError) as exc:
        log.error("imgcls train: %s", exc)
        return 2


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    _setup_logging(args.verbose)
    try:
        return _run_reporting_errors(args)
    except KeyboardInterrupt:
        log.error("imgcls train: interrupted; %s", next_step(args, argv))
        return 130
    except ImportError as exc:  # Ctrl-C while a compiled module initialised: pybind11 reraises it as ImportError
        if not caused_by_interrupt(exc):
            raise
        log.error("imgcls train: interrupted; %s", next_step(args, argv))
        return 130


def caused_by_interrupt(exc: BaseException) -> bool:
    """Whether ``exc`` was raised because of a KeyboardInterrupt (its cause or context chain holds one)."""
    seen: set[int] = set()
    link: BaseException | None = exc
    while link is not None and id(link) not in seen:
        if isinstance(link, KeyboardInterrupt):
            return True
        seen.add(id(link))
        link = link.__cause__ or link.__context__
    return False


if __name__ == "__main__":
    sys.exit(main())
