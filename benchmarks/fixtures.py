"""What the benchmarks measure on: bundles made by the real pipeline, and real-size JPEGs.

Two kinds of model, cached under a work directory (default ``.bench-out/work``) and rebuilt when
their recipe or the code of models/ and export/ changes:
- ``speed_bundle(arch)``: a random-init backbone + head (no ImageNet weights for MobileNet-v2 /
  ResNet-50 exist offline) saved as a real checkpoint and exported by the real ``export_bundle``.
  Speed, FLOPs and size do not depend on the weight values; accuracy does, so it is not read here.
- ``demo_bundle()``: efficientnet_lite0 with its real ImageNet weights, head fine-tuned by the real
  ``imgcls train`` (cached features) on the digits, exported with INT8 by ``imgcls export``: the
  demo's recipe on a subset of the digits. If ``make demo`` left ``bundles/demo``, that is used.
JPEGs are scikit-image's bundled photos (real photographs) re-encoded at real-world sizes.
"""
from __future__ import annotations

import io
import json
import logging
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from PIL import Image

log = logging.getLogger("bench.fixtures")

from benchmarks.report import REPO_ROOT  # noqa: E402,F401 - one definition
DEFAULT_WORKDIR = REPO_ROOT / ".bench-out" / "work"
PHOTOS = ("chelsea", "coffee", "astronaut", "rocket", "cat", "hubble_deep_field")
SPEED_CLASSES = 10  # TorchServe's image_classifier asks for the top 5: at least 5 classes
PEER_PHOTO = ("coffee", (600, 400))  # the JPEG the NOTES measured TorchServe with


def threads_in_use() -> int:
    """The CPUs this process may use (affinity mask and cgroup quota), as the predictor sizes ORT."""
    from imgcls.service.runtime import available_cpus

    return max(1, int(available_cpus()))


def photo(name: str) -> Image.Image:
    import skimage.data

    return Image.fromarray(getattr(skimage.data, name)()).convert("RGB")


def jpeg_bytes(image: Image.Image, size: tuple[int, int] | None = None, quality: int = 90) -> bytes:
    if size is not None and image.size != size:
        image = image.resize(size, Image.Resampling.BICUBIC)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def peer_jpeg() -> bytes:
    """The one JPEG both HTTP servers classify: scikit-image's coffee photo, 600x400, q90."""
    name, size = PEER_PHOTO
    return jpeg_bytes(photo(name), size)


def real_jpegs(folder: Path, count: int, long_side: int = 1280) -> list[Path]:
    """``count`` JPEGs (q90) of the bundled photos, scaled to ``long_side`` px, slightly rotated each round."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        name = PHOTOS[i % len(PHOTOS)]
        path = folder / f"{i:04d}_{name}_{long_side}.jpg"
        if not path.exists():
            image = photo(name).rotate(2 * (i // len(PHOTOS)), resample=Image.Resampling.BILINEAR)
            scale = long_side / max(image.size)
            size = (round(image.width * scale), round(image.height * scale))
            path.write_bytes(jpeg_bytes(image, size))
        paths.append(path)
    return paths


@dataclass(frozen=True)
class Prepared:
    run_dir: Path
    bundle_dir: Path
    recipe: dict[str, Any]
    seconds: float  # spent preparing now (0 when reused from the cache)

    @property
    def arch(self) -> str:
        return str(self.recipe["arch"])


def pipeline_code_sha256() -> str:
    """Hash of the code that makes bundles (models/, export/): a change there rebuilds the cache."""
    import hashlib

    digest = hashlib.sha256()
    for path in sorted([*REPO_ROOT.glob("models/**/*.py"), *REPO_ROOT.glob("export/*.py")]):
        digest.update(str(path.relative_to(REPO_ROOT)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


def _cached(folder: Path, recipe: dict[str, Any]) -> bool:
    marker = folder / "recipe.json"
    try:
        return json.loads(marker.read_text()) == recipe and (folder / "bundle" / "card.json").is_file()
    except (OSError, ValueError):
        return False


def _fresh(folder: Path) -> None:
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)


def speed_bundle(arch: str, workdir: Path = DEFAULT_WORKDIR, int8: bool = False, fp16: bool = False) -> Prepared:
    """Random-init ``arch`` (+ a 10-class head) -> checkpoint -> real export (fp32, optional INT8 / fp16)."""
    recipe = {"kind": "speed", "arch": arch, "int8": int8, "fp16": fp16, "weights": "random init (backbone and head)",
              "classes": SPEED_CLASSES, "version": 3, "code": pipeline_code_sha256()}
    folder = Path(workdir) / f"speed-{arch}{'-int8' if int8 else ''}{'-fp16' if fp16 else ''}"
    if _cached(folder, recipe):
        return Prepared(folder / "runs" / arch, folder / "bundle", recipe, 0.0)
    started = time.perf_counter()
    _fresh(folder)
    from imgcls.export.bundle import export_bundle
    from imgcls.export.config import ExportConfig
    from tests.factories import make_tiny_run

    log.info("preparing %s: random-init checkpoint, real export%s", arch, " + INT8" if int8 else "")
    classes = tuple(f"class{i}" for i in range(SPEED_CLASSES))
    run_dir = make_tiny_run(folder, classes=classes, arch=arch, per_class=4, size=(320, 256))
    config = ExportConfig(progress=False, parity_images=4, int8=int8, fp16=fp16, calibration_size=16)
    export_bundle(run_dir, folder / "bundle", config)
    (folder / "recipe.json").write_text(json.dumps(recipe))
    return Prepared(run_dir, folder / "bundle", recipe, time.perf_counter() - started)


def run_cli(*args: str, ok: tuple[int, ...] = (0,)) -> int:
    """``imgcls ARGS`` in a child process (stdout discarded); its exit status, which must be in ``ok``."""
    command = [sys.executable, "-m", "imgcls.cli", *args]
    log.info("$ imgcls %s", " ".join(args))
    code = subprocess.run(command, cwd=REPO_ROOT, stdout=subprocess.DEVNULL).returncode
    if code not in ok:
        raise RuntimeError(f"`imgcls {args[0]}` failed with exit status {code}")
    return code


@dataclass(frozen=True)
class DemoRecipe:
    arch: str = "efficientnet_lite0"
    per_class: int = 40
    epochs: int = 6
    calibration_size: int = 200


def demo_bundle(workdir: Path = DEFAULT_WORKDIR, recipe: DemoRecipe = DemoRecipe(), use_demo: bool = True) -> Prepared:
    """The demo's recipe (ImageNet weights, head on cached features, INT8) on a digits subset."""
    demo = REPO_ROOT / "bundles" / "demo"
    if use_demo and (demo / "model.int8.onnx").is_file() and (REPO_ROOT / "runs" / "demo").is_dir():
        return Prepared(REPO_ROOT / "runs" / "demo", demo, {"kind": "make demo", "arch": "efficientnet_lite0"}, 0.0)
    spec = {"kind": "demo-recipe", **asdict(recipe), "weights": "imagenet", "strategy": "head", "version": 1,
            "code": pipeline_code_sha256()}
    folder = Path(workdir) / f"demo-{recipe.arch}"
    if _cached(folder, spec):
        return Prepared(folder / "run", folder / "bundle", spec, 0.0)
    started = time.perf_counter()
    _fresh(folder)
    from imgcls.digits import write_digits

    write_digits(folder / "digits", limit_per_class=recipe.per_class)
    run_cli("train", "--data", str(folder / "digits"), "--arch", recipe.arch, "--weights", "imagenet",
         "--strategy", "head", "--epochs", str(recipe.epochs), "--out", str(folder / "run"), "--loader-workers", "0")
    run_cli("export", str(folder / "run"), "--out", str(folder / "bundle"), "--int8", "--no-progress",
         "--calibration-size", str(recipe.calibration_size), ok=(0, 3))  # 3: INT8 refused by its gate
    (folder / "recipe.json").write_text(json.dumps(spec))
    return Prepared(folder / "run", folder / "bundle", spec, time.perf_counter() - started)


def describe(prepared: Prepared) -> dict[str, Any]:
    from imgcls.models.core.card import ModelCard

    card = ModelCard.load(prepared.bundle_dir)
    return {"arch": card.arch, "classes": card.num_classes, "input": card.preprocess.crop_size,
            "recipe": prepared.recipe, "bundle": str(prepared.bundle_dir),
            "files": {k: v.get("bytes") for k, v in card.export.get("files", {}).items()}}


def raw_session(model_path: Path, threads: int) -> Any:
    """A plain ONNX Runtime CPU session (default thread spinning, all graph optimisations)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])


def pixel_batch(bundle_dir: Path, batch: int, seed: int = 0) -> Any:
    """uint8 [batch, 3, H, W] model input made from real photos (the bundle's own preprocessing)."""
    import numpy as np

    from imgcls.models.core.card import ModelCard

    preprocess = ModelCard.load(bundle_dir).preprocess
    images = [preprocess.pixels(preprocess.load(jpeg_bytes(photo(PHOTOS[(seed + i) % len(PHOTOS)]))))
              for i in range(min(batch, len(PHOTOS)))]
    return np.stack([images[i % len(images)] for i in range(batch)])


def main(argv: list[str] | None = None) -> int:
    """Prepare (or find cached) every bundle the benchmark set uses, and say how long it took."""
    import argparse

    from benchmarks.report import setup_logging, write_result

    parser = argparse.ArgumentParser(description="prepare the benchmark bundles (cached in --workdir)")
    parser.add_argument("--archs", nargs="+", default=["mobilenet_v2", "resnet50"])
    parser.add_argument("--int8-archs", nargs="*", default=["mobilenet_v2"])
    parser.add_argument("--demo-per-class", type=int, default=DemoRecipe.per_class,
                        help="digits per class for the efficientnet_lite0 run; 0 skips it")
    parser.add_argument("--workdir", type=Path, default=DEFAULT_WORKDIR)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    setup_logging()
    prepared = [speed_bundle(arch, args.workdir) for arch in args.archs]
    prepared += [speed_bundle(arch, args.workdir, int8=True) for arch in args.int8_archs]
    if args.demo_per_class:
        prepared.append(demo_bundle(args.workdir, DemoRecipe(per_class=args.demo_per_class)))
    write_result(args.out, "prepare", {
        "bundles": [{**describe(p), "prepared_s": p.seconds} for p in prepared],
        "seconds": sum(p.seconds for p in prepared),
    })
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
