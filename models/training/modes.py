"""The two ways an epoch runs: through the whole network on images, or through the head on cached
backbone features. Both expose the same small interface to the training session."""
from __future__ import annotations

import functools
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, Subset, TensorDataset

from imgcls.models.training.feature_cache import (CACHE_DIRNAME, FeatureStore, cache_key, feature_extractor,
                                                 features_in_pieces, gather_rows, main_head, state_digest)
from imgcls.models.training.strategies import Freezer, backbone_trainable
from imgcls.models.training.config import TrainConfig
from imgcls.models.training.data import ImageListDataset
from imgcls.models.training.loop import predict_logits
from imgcls.models.training import backbone_graph
from imgcls.models.training.onnx_graph import BUNDLE_OPSET
from imgcls.models.training.ort_features import EAGER_ENGINE, INPUT_NAME as ORT_INPUT, OUTPUT_NAME as ORT_OUTPUT
from imgcls.models.training.ort_features import OrtBackbone, engine_name
from imgcls.models.core.progress import track

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world_size > 1:
            import torch.distributed as dist

            dist.barrier()

    def wrap(self, module: nn.Module) -> nn.Module:
        """DistributedDataParallel around ``module`` when running under torchrun."""
        if self.world_size == 1:
            return module
        from torch.nn.parallel import DistributedDataParallel

        device_ids = [self.local_rank] if self.device.type == "cuda" else None
        return DistributedDataParallel(module, device_ids=device_ids)


def _generator(seed: int, epoch: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 100_003 + epoch)


def images_in(loader: Any) -> int | None:
    """Images a DataLoader yields in one pass (None for other iterables)."""
    if not isinstance(loader, DataLoader):
        return None
    n = len(loader.sampler)
    if loader.drop_last and loader.batch_size:
        n -= n % loader.batch_size
    return n


def _bar(iterable: Any, dist: DistContext, desc: str, total: int | None = None, per_item: bool = False) -> Any:
    """Progress in images on rank 0: a bar on a terminal, periodic log lines otherwise.

    Items are ``(inputs, labels)`` batches unless ``per_item`` (then each item is one image)."""
    total = total if total is not None else images_in(iterable)
    if per_item:
        return track(iterable, desc, total, enabled=dist.is_main, count=lambda _item: 1, logger=log)
    return track(iterable, desc, total, enabled=dist.is_main, logger=log)


class ImageMode:
    """Every batch goes through the full network (finetune, gradual, head without a cache)."""

    def __init__(self, config: TrainConfig, model: nn.Module, arch: str, train_set: ImageListDataset,
                 val_set: ImageListDataset, dist: DistContext) -> None:
        self.config, self.model, self.dist = config, model, dist
        self.train_set, self.val_set = train_set, val_set
        self.freezer = Freezer(model, arch)
        self.sampler = DistributedSampler(train_set, num_replicas=dist.world_size, rank=dist.rank,
                                          shuffle=True, seed=config.seed)
        # Every image trains each epoch, the last partial batch included; only a lone last image is
        # left out (a batch of one cannot train BatchNorm), a different one each epoch (shuffled).
        self.drop_last = len(self.sampler) > config.batch_size and len(self.sampler) % config.batch_size == 1
        if self.drop_last and dist.is_main:
            log.info("%d training images per process in batches of %d: 1 image sits out each epoch "
                     "(a batch of one cannot train BatchNorm; which one changes every epoch)",
                     len(self.sampler), config.batch_size)
        self.module: nn.Module = model
        self._frozen: bool | None = None

    @property
    def steps_per_epoch(self) -> int:
        n, b = len(self.sampler), self.config.batch_size
        return n // b if self.drop_last else -(-n // b)

    def prepare(self) -> None:
        """Nothing to precompute."""

    def start_epoch(self, epoch: int) -> DataLoader:
        frozen = not backbone_trainable(self.config.strategy, epoch, self.config.unfreeze_epoch)
        if frozen != self._frozen:
            self.freezer.set_backbone_frozen(frozen)
            self.module = self.dist.wrap(self.model)  # DDP must see the new requires_grad set
            self._frozen = frozen
            if epoch and not frozen:
                log.info("epoch %d: backbone unfrozen (lr x %g)", epoch + 1, self.config.backbone_lr_mult)
        self.freezer.train_mode()
        self.train_set.set_epoch(epoch)
        self.sampler.set_epoch(epoch)
        return DataLoader(self.train_set, batch_size=self.config.batch_size, sampler=self.sampler,
                          num_workers=self.config.workers, drop_last=self.drop_last,
                          generator=_generator(self.config.seed, epoch), persistent_workers=False)

    def val_logits(self, amp: bool) -> torch.Tensor:
        self.model.eval()
        indices = list(range(self.dist.rank, len(self.val_set), self.dist.world_size))
        loader = DataLoader(Subset(self.val_set, indices), batch_size=self.config.batch_size,
                            num_workers=self.config.workers)
        logits = predict_logits(self.model, loader, self.dist.device, amp,
                                lambda x: _bar(x, self.dist, "validating"))
        return gather_rows(logits, indices, len(self.val_set), self.dist.world_size)


class CachedFeatureMode:
    """``head`` strategy: backbone features computed once, then only the head trains on them."""

    def __init__(self, config: TrainConfig, model: nn.Module, arch: str, train_set: ImageListDataset,
                 val_set: ImageListDataset, dist: DistContext) -> None:
        self.config, self.model, self.arch, self.dist = config, model, arch, dist
        self.train_set, self.val_set = train_set, val_set
        self.head = main_head(model, arch)
        self.module: nn.Module = dist.wrap(self.head)
        self.labels = train_set.labels()
        self.train_features: list[torch.Tensor] = []
        self.val_features = torch.empty(0)
        self.store = FeatureStore(Path(config.out) / CACHE_DIRNAME)
        self.sampler = DistributedSampler(TensorDataset(self.labels), num_replicas=dist.world_size,
                                          rank=dist.rank, shuffle=True, seed=config.seed)
        Freezer(model, arch).set_backbone_frozen(True)

    @property
    def steps_per_epoch(self) -> int:
        return -(-len(self.sampler) // self.config.batch_size)

    def _engine(self, extractor: nn.Module, digest: str) -> tuple[Callable[[torch.Tensor], torch.Tensor], str]:
        """(what computes features from a batch, its name): ONNX Runtime on the exported backbone on
        CPU in one process (uint8 pixels in, as the bundle), else the eager module. The converted
        backbone is kept in the feature cache for ``imgcls export`` (``backbone_graph``)."""
        if self.dist.world_size == 1 and self.dist.device.type == "cpu":
            self.train_set.pixels_only = self.val_set.pixels_only = True
            # ORT's threads take the cores; torch's own pool (a few tiny ops per batch here) would spin
            # beside them (measured: ~10 % more images/s with one torch thread on 2 cores)
            torch.set_num_threads(1)
            preprocess = self.train_set.preprocess
            # the layout the checkpoint loads in: channels-last weights add a strided copy of the features
            # to the graph, which the export's conversion of the loaded model does not have
            extractor = extractor.to(memory_format=torch.contiguous_format)
            ident = backbone_graph.identity(digest, self.arch, preprocess, opset=BUNDLE_OPSET, exporter="dynamo",
                                            names=(ORT_INPUT, ORT_OUTPUT))
            keep = functools.partial(backbone_graph.save, self.store.directory / backbone_graph.FILENAME, ident=ident)
            return OrtBackbone(extractor, preprocess, on_converted=keep), engine_name()
        return extractor, EAGER_ENGINE

    def _features(self, dataset: ImageListDataset, extractor: Callable[[torch.Tensor], torch.Tensor], part: str, key: str,
                  desc: str) -> tuple[torch.Tensor, int]:
        """(features of every image of ``dataset``, how many were read from the run's feature cache)."""
        local, indices, reused = features_in_pieces(
            extractor, dataset, self.store, part, key, batch_size=self.config.batch_size,
            workers=self.config.workers, device=self.dist.device, rank=self.dist.rank,
            world_size=self.dist.world_size, progress=lambda loader, total: _bar(loader, self.dist, desc, total),
            batches=extractor.batches if isinstance(extractor, OrtBackbone) else None)
        if reused and self.dist.is_main:
            log.info("%s: %d of %d images' features reused from %s", desc, reused, len(indices),
                     self.store.directory)
        return gather_rows(local, indices, len(dataset), self.dist.world_size), reused

    def _keys(self, digest: str, engine: str) -> dict[str, str]:
        """The cache key of each part: what its features depend on (the engine that computes them included)."""
        c, train = self.config, self.train_set
        common = {"backbone": digest, "listing": train.listing.sha256(),
                  "preprocess": train.preprocess.to_dict(), "batch_size": c.batch_size, "engine": engine}
        keys = {"train": cache_key(part="train", **common), "val": cache_key(part="val", **common)}
        for index in range(c.augmented_passes):
            keys[f"pass{index + 1}"] = cache_key(part=index, seed=c.seed, augmentation=repr(train.augmentation),
                                                 **common)
        return keys

    def prepare(self) -> None:
        started = time.perf_counter()
        module = feature_extractor(self.model, self.arch)
        digest = state_digest(module)
        extractor, engine = self._engine(module, digest)
        keys = self._keys(digest, engine)
        if self.dist.is_main and self.store.forget_other_keys(keys.values()):
            log.info("feature cache: dropped pieces computed under other settings")
        passes, reused = self.config.augmented_passes, 0
        if passes == 0:
            self.train_set.augmentation = None  # clean features: exactly the evaluation transform
            features, reused = self._features(self.train_set, extractor, "train", keys["train"],
                                              "caching train features")
            self.train_features = [features]
        for index in range(passes):
            self.train_set.set_epoch(index, pass_index=index)
            part = f"pass{index + 1}"
            features, count = self._features(self.train_set, extractor, part, keys[part],
                                             f"caching pass {index + 1}/{passes}")
            self.train_features.append(features)
            reused += count
        self.val_features, count = self._features(self.val_set, extractor, "val", keys["val"], "caching val features")
        reused += count
        seconds = time.perf_counter() - started
        images = len(self.train_set) * max(1, passes) + len(self.val_set)
        self.train_set.pixels_only = self.val_set.pixels_only = False
        converted = getattr(extractor, "export_seconds", 0.0)
        log.info("cached %d x %d backbone features in %.1f s with %s (%d computed at %.1f images/s, %d reused; "
                 "backbone conversion %.1f s of it) in %s", images, self.val_features.shape[1], seconds, engine,
                 images - reused, (images - reused) / max(seconds - converted, 1e-9), reused, converted,
                 self.store.directory)
        if self.dist.is_main:
            self.store.write_stats({"engine": engine, "threads": getattr(extractor, "threads", torch.get_num_threads()),
                                    "images": images, "computed": images - reused, "reused": reused,
                                    "seconds": round(seconds, 3), "conversion_seconds": round(converted, 3),
                                    "images_per_s": round((images - reused) / max(seconds - converted, 1e-9), 2)})
        del extractor, module
        # A linear head on cached features is a few tiny ops per step: more threads only add
        # synchronisation (10x slower on a busy 2-core machine, measured).
        torch.set_num_threads(1)

    def start_epoch(self, epoch: int) -> DataLoader:
        self.head.train()
        self.sampler.set_epoch(epoch)
        features = self.train_features[epoch % len(self.train_features)]
        return DataLoader(TensorDataset(features, self.labels), batch_size=self.config.batch_size,
                          sampler=self.sampler, generator=_generator(self.config.seed, epoch))

    def val_logits(self, amp: bool) -> torch.Tensor:
        self.head.eval()
        with torch.no_grad():
            return self.head(self.val_features.to(self.dist.device)).float().cpu()
