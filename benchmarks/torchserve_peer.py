"""TorchServe 0.12 with its default ``image_classifier`` handler, serving the same fine-tuned weights.

Builds a model archive from an imgcls checkpoint (a torchvision model class with the replaced
head, the state dict, ``index_to_name.json``), starts TorchServe on loopback ports with token auth
off, waits until the model answers, and stops it (and its Java process group) afterwards.
Configuration: NOTES.md measured its best here at 2 workers with OMP_NUM_THREADS=1.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("bench.torchserve")

MODEL_CLASSES = {
    "mobilenet_v2": ("torchvision.models.mobilenetv2", "MobileNetV2", ""),
    "resnet50": ("torchvision.models.resnet", "ResNet", "Bottleneck, [3, 4, 6, 3], "),
}


@dataclass(frozen=True)
class TorchServeConfig:
    workers: int = 2
    omp_threads: int = 1
    netty_threads: int = 4


def write_model_file(arch: str, num_classes: int, path: Path) -> None:
    module, cls, args = MODEL_CLASSES[arch]
    extra_import = "from torchvision.models.resnet import Bottleneck\n" if arch == "resnet50" else ""
    path.write_text(
        f"from {module} import {cls}\n{extra_import}\n\n"
        f"class ImageClassifier({cls}):\n"
        f"    def __init__(self):\n"
        f"        super().__init__({args}num_classes={num_classes})\n"
    )


def build_archive(checkpoint: Path, workdir: Path) -> Path:
    """checkpoint dir -> workdir/model_store/clf.mar (the MAR format pickles nothing of ours)."""
    import torch
    from safetensors.torch import load_file

    from imgcls.models.core.card import ModelCard

    card = ModelCard.load(checkpoint)
    staging = workdir / "mar-src"
    store = workdir / "model_store"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    store.mkdir(parents=True, exist_ok=True)
    write_model_file(card.arch, card.num_classes, staging / "model.py")
    torch.save(load_file(str(checkpoint / "weights.safetensors")), staging / "weights.pth")
    (staging / "index_to_name.json").write_text(json.dumps({str(i): n for i, n in enumerate(card.class_names)}))
    archiver = Path(sys.executable).with_name("torch-model-archiver")
    subprocess.run(
        [str(archiver), "--model-name", "clf", "--version", "1.0", "--model-file", str(staging / "model.py"),
         "--serialized-file", str(staging / "weights.pth"), "--handler", "image_classifier",
         "--extra-files", str(staging / "index_to_name.json"), "--export-path", str(store), "--force"],
        check=True,
    )
    return store / "clf.mar"


def start(workdir: Path, port: int, config: TorchServeConfig) -> subprocess.Popen:
    properties = workdir / "config.properties"
    properties.write_text(
        f"inference_address=http://127.0.0.1:{port}\nmanagement_address=http://127.0.0.1:{port + 1}\n"
        f"metrics_address=http://127.0.0.1:{port + 2}\ndisable_token_authorization=true\n"
        f"default_workers_per_model={config.workers}\nnumber_of_netty_threads={config.netty_threads}\n"
        f"install_py_dep_per_model=false\nmodel_store={workdir / 'model_store'}\nload_models=clf.mar\n"
        "enable_envvars_config=false\n"
    )
    env = {**os.environ, "OMP_NUM_THREADS": str(config.omp_threads), "TS_DISABLE_SYSTEM_METRICS": "true"}
    torchserve = Path(sys.executable).with_name("torchserve")
    return subprocess.Popen(
        [str(torchserve), "--start", "--foreground", "--ncs", "--disable-token-auth",
         "--ts-config", str(properties), "--model-store", str(workdir / "model_store")],
        cwd=workdir, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )


def wait_until_answering(port: int, image: bytes, server: subprocess.Popen, timeout_s: float = 180) -> float:
    started = time.perf_counter()
    while time.perf_counter() - started < timeout_s:
        if server.poll() is not None:
            raise RuntimeError(f"torchserve exited with {server.returncode}")
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/predictions/clf", data=image, method="POST", headers={"Content-Type": "image/jpeg"}
        )
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                if response.status == 200:
                    return time.perf_counter() - started
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.5)
    raise RuntimeError(f"torchserve did not answer within {timeout_s} s")


def stop(server: subprocess.Popen) -> None:
    try:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=20)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        try:
            os.killpg(server.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        server.wait()
