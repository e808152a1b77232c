"""One fine-tuning run from data to checkpoint: split, model, epochs, checkpoint, plots, resume.

Rank 0 writes every file; all ranks compute the same metrics, so early stopping agrees.
"""
from __future__ import annotations

import json
import logging
import random
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from imgcls.models.core.card import ModelCard
from imgcls.models.training.calibrate import RELIABILITY_FILENAME, calibrate_validation, plot_reliability
from imgcls.models.training.checkpoint import save_checkpoint
from imgcls.models.core.dataset import DatasetError, SplitListing, make_split, without_files
from imgcls.models.core.ownership import write_marker
from imgcls.models.training.plots import plot_confusion, plot_curves
from imgcls.models.core.preprocess import Preprocess
from imgcls.models.training.resume import Progress, restore_rng_state, rng_state, save_train_state
from imgcls.models.training.config import TrainConfig
from imgcls.models.training.data import Augmentation, ImageListDataset, find_unreadable
from imgcls.models.training.loop import EpochContext, class_weight_tensor, make_optimizer, make_scheduler, train_epoch
from imgcls.models.training.metrics import evaluate_logits
from imgcls.models.training.modes import CachedFeatureMode, DistContext, ImageMode, _bar
from imgcls.models.zoo.registry import build, create, default_preprocess, describe_weights

log = logging.getLogger(__name__)

METRICS_FILENAME = "metrics.jsonl"
VAL_REPORT_FILENAME = "val_report.json"
PLOT_FILES = ("curves.png", "confusion.png", RELIABILITY_FILENAME)
RUN_FILES = ("split.json", METRICS_FILENAME, VAL_REPORT_FILENAME, *PLOT_FILES)


def prepare_split(config: TrainConfig, dist: DistContext, preprocess: Preprocess) -> tuple[SplitListing, int]:
    """The split with unreadable files reported and skipped (or refused with ``strict``)."""
    listing = make_split(config.data, config.val_fraction, config.seed)
    samples = listing.train + listing.val
    mine = samples[dist.rank::dist.world_size]  # each rank checks its share; the lists are gathered
    bad = find_unreadable(listing, preprocess.load, mine, threads=max(2, config.workers),
                          progress=lambda it: _bar(it, dist, "checking images", total=len(mine), per_item=True))
    if dist.world_size > 1:
        import torch.distributed as torch_dist

        parts: list[Any] = [None] * dist.world_size
        torch_dist.all_gather_object(parts, bad)
        bad = sorted(item for part in parts for item in part)
    if not bad:
        return listing, 0
    shown = "\n".join(f"  {path}: {reason}" for path, reason in bad[:20])
    more = f"\n  ... and {len(bad) - 20} more" if len(bad) > 20 else ""
    if config.strict:
        raise DatasetError(f"{len(bad)} of {len(samples)} images are unreadable (--strict):\n{shown}{more}")
    log.warning("skipping %d of %d unreadable images (pass --strict to refuse):\n%s%s", len(bad), len(samples),
                shown, more)
    return without_files(listing, frozenset(p for p, _ in bad)), len(bad)


class TrainingSession:
    def __init__(self, config: TrainConfig, dist: DistContext, state: dict[str, Any] | None = None) -> None:
        self.config, self.dist, self.state = config, dist, state
        self.run_dir = Path(config.out)
        self.preprocess = default_preprocess(config.arch)
        if state is None:
            self.listing, self.skipped = prepare_split(config, dist, self.preprocess)
        else:
            self.listing = SplitListing.load(self.run_dir)
            self.skipped = int(state["progress"].get("skipped_unreadable", 0))
        self.class_names = self.listing.class_names
        self.progress = Progress(**{k: v for k, v in (state or {}).get("progress", {}).items()
                                    if k in Progress.__dataclass_fields__})
        torch.manual_seed(config.seed)
        random.seed(config.seed)
        self.model = self._model().to(dist.device, memory_format=torch.channels_last)
        self.mode = self._mode()

    def _model(self) -> nn.Module:
        if self.state is not None:
            model = build(self.config.arch, len(self.class_names))
            model.load_state_dict(self.state["model"])
            return model
        return create(self.config.arch, len(self.class_names), self.config.weights)

    def _mode(self) -> ImageMode | CachedFeatureMode:
        c = self.config
        augmentation = Augmentation(self.preprocess.crop_size, self.preprocess.interpolation,
                                    scale=(c.min_crop_scale, 1.0), hflip=c.hflip)
        train_set = ImageListDataset(self.listing, self.listing.train, self.preprocess,
                                     augmentation if c.augment else None, c.seed)
        val_set = ImageListDataset(self.listing, self.listing.val, self.preprocess)
        cls = CachedFeatureMode if c.uses_feature_cache else ImageMode
        return cls(c, self.model, c.arch, train_set, val_set, self.dist)

    def _context(self) -> EpochContext:
        c, device = self.config, self.dist.device
        optimizer = make_optimizer(c, self.model, c.arch, head_only=c.strategy == "head")
        scheduler = make_scheduler(optimizer, c, self.mode.steps_per_epoch)
        amp = c.amp and device.type == "cuda"
        scaler = torch.amp.GradScaler(device.type, enabled=amp)
        weight = class_weight_tensor(self.mode.train_set.labels(), len(self.class_names)).to(device) \
            if c.class_weights else None
        criterion = nn.CrossEntropyLoss(weight=weight, label_smoothing=c.label_smoothing)
        if self.state is not None:
            optimizer.load_state_dict(self.state["optimizer"])
            scheduler.load_state_dict(self.state["scheduler"])
            scaler.load_state_dict(self.state["scaler"])
        return EpochContext(self.mode.module, optimizer, scheduler, criterion, scaler, device, c.grad_clip, amp,
                            self.dist.world_size)

    def _card(self, metrics: dict[str, Any], calibration: dict[str, Any] | None = None) -> ModelCard:
        train = {**self.config.to_dict(), "world_size": self.dist.world_size, "torch": torch.__version__}
        return ModelCard(
            arch=self.config.arch, base_weights=describe_weights(self.config.arch, self.config.weights),
            class_names=self.class_names, preprocess=self.preprocess, train=train, metrics=metrics,
            lineage={"dataset_sha256": self.listing.sha256()}, calibration=calibration or {},
        )

    def run(self) -> dict[str, Any]:
        if self.dist.is_main and self.state is None:
            write_marker(self.run_dir, "run")
            self.listing.save(self.run_dir)
            (self.run_dir / METRICS_FILENAME).write_text("")
        elif self.dist.is_main:  # drop lines of an epoch that was interrupted before its state was saved
            kept = read_metrics(self.run_dir, self.progress.completed_epochs)
            (self.run_dir / METRICS_FILENAME).write_text("".join(json.dumps(r) + "\n" for r in kept))
        log.info("%s: %d train / %d val images, %d classes, strategy %s, %s on %s x%d",
                 self.config.arch, len(self.listing.train), len(self.listing.val), len(self.class_names),
                 self.config.strategy, "cached features" if self.config.uses_feature_cache else "full network",
                 self.dist.device, self.dist.world_size)
        ctx = self._context()
        if self.state is None:
            rng = rng_state()
            if self.dist.is_main:  # from here on an interruption resumes (--resume), even before epoch 1
                self._save_state(ctx)
            self.dist.barrier()
        else:
            rng = self.state["rng"]
            if self.progress.completed_epochs:
                log.info("resuming after epoch %d of %d", self.progress.completed_epochs, self.config.epochs)
            else:
                log.info("resuming %s before its first epoch", self.run_dir)
        self.mode.prepare()  # may take long (feature caching): it keeps its work on disk as it goes
        restore_rng_state(rng)  # the same random state after preparing, however much of it was resumed
        for epoch in range(self.progress.completed_epochs, self.config.epochs):
            if self.progress.stopped_early:
                break
            self._epoch(ctx, epoch)
        return self._finish()

    def _epoch(self, ctx: EpochContext, epoch: int) -> None:
        c, started = self.config, time.perf_counter()
        loader = self.mode.start_epoch(epoch)
        ctx.module = self.mode.module
        train = train_epoch(ctx, _bar(loader, self.dist, f"epoch {epoch + 1}/{c.epochs}"), epoch)
        train_seconds = time.perf_counter() - started
        logits, labels = self.mode.val_logits(ctx.amp), self.mode.val_set.labels()
        metrics = evaluate_logits(logits, labels, self.class_names)
        p = self.progress
        if c.strategy == "gradual" and epoch == c.unfreeze_epoch:
            p.epochs_without_improvement = 0  # early stopping counts from the unfreezing on
        improved = metrics["val_accuracy"] > p.best_accuracy
        if improved:
            p.best_accuracy, p.best_epoch, p.epochs_without_improvement = metrics["val_accuracy"], epoch + 1, 0
        else:
            p.epochs_without_improvement += 1
        p.completed_epochs = epoch + 1
        p.stopped_early = (bool(c.patience) and p.epochs_without_improvement >= c.patience
                           and (c.strategy != "gradual" or epoch >= c.unfreeze_epoch))
        record = {"epoch": epoch + 1, **train, **{k: metrics[k] for k in ("val_loss", "val_accuracy")},
                  "lr": ctx.optimizer.param_groups[0]["lr"], "train_seconds": round(train_seconds, 3),
                  "train_images_per_s": round(train["train_images"] / max(train_seconds, 1e-9), 2),
                  "best": improved}
        if self.dist.is_main:
            # the checkpoint is the best epoch's model, so its temperature is fitted on its logits
            fitted = calibrate_validation(logits, labels, epoch + 1) if improved else None
            self._write_epoch(ctx, record, metrics, improved, fitted)
        self.dist.barrier()
        log.info("epoch %d/%d  train loss %.4f acc %.4f  val loss %.4f acc %.4f  lr %.2e  %.1f s (%.0f img/s)%s",
                 epoch + 1, c.epochs, train["train_loss"], train["train_accuracy"], metrics["val_loss"],
                 metrics["val_accuracy"], record["lr"], train_seconds, record["train_images_per_s"],
                 "  * best" if improved else "")
        if p.stopped_early:
            log.info("early stopping: no val accuracy gain for %d epochs", c.patience)

    def _write_epoch(self, ctx: EpochContext, record: dict[str, Any], metrics: dict[str, Any], improved: bool,
                     fitted: dict[str, Any] | None = None) -> None:
        with open(self.run_dir / METRICS_FILENAME, "a", encoding="utf-8") as stream:
            stream.write(json.dumps(record) + "\n")
        if improved:
            card_metrics = {k: v for k, v in metrics.items() if k != "confusion"}
            card_metrics.update(best_epoch=record["epoch"], train_images=len(self.listing.train),
                                skipped_unreadable=self.skipped)
            calibration = fitted["calibration"] if fitted else None
            save_checkpoint(self.run_dir / "checkpoint", self.model, self._card(card_metrics, calibration))
            report = {"epoch": record["epoch"], "class_names": list(self.class_names), **metrics, **(fitted or {})}
            (self.run_dir / VAL_REPORT_FILENAME).write_text(json.dumps(report, indent=1))
        self._save_state(ctx)

    def _save_state(self, ctx: EpochContext) -> None:
        self.progress.skipped_unreadable = self.skipped
        save_train_state(self.run_dir, config=self.config.to_dict(), progress=self.progress, model=self.model,
                         optimizer=ctx.optimizer, scheduler=ctx.scheduler, scaler=ctx.scaler)

    def _finish(self) -> dict[str, Any]:
        report = write_plots(self.run_dir, self.progress.best_epoch) if self.dist.is_main else {}
        self.dist.barrier()
        return report


def write_plots(run_dir: Path, best_epoch: int) -> dict[str, Any]:
    """``PLOT_FILES`` from the run's metrics and best epoch's validation report (which it returns)."""
    report = json.loads((run_dir / VAL_REPORT_FILENAME).read_text())
    plot_curves(read_metrics(run_dir), run_dir / "curves.png", best_epoch)
    plot_confusion(report["confusion"], report["class_names"], run_dir / "confusion.png",
                   f"validation, epoch {report['epoch']} (accuracy {report['val_accuracy']:.3f})")
    plot_reliability(report, run_dir / RELIABILITY_FILENAME)
    return report


def read_metrics(run_dir: Path, up_to_epoch: int | None = None) -> list[dict[str, Any]]:
    lines = (run_dir / METRICS_FILENAME).read_text(encoding="utf-8").splitlines()
    records = [json.loads(line) for line in lines if line.strip()]
    by_epoch = {r["epoch"]: r for r in records if up_to_epoch is None or r["epoch"] <= up_to_epoch}
    return [by_epoch[e] for e in sorted(by_epoch)]
