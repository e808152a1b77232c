#!/usr/bin/env bash
# Item 11: the GPU benchmark, prepared to run in one go on a machine with an NVIDIA GPU.
#
#   benchmarks/gpu_check.sh [extra benchmarks.gpu_check flags]
#
# Makes (once) a separate environment, .venv-gpu: CUDA torch and the train/dev extras, with
# onnxruntime replaced by onnxruntime-gpu (both install into the same onnxruntime/ folder, so the
# CPU build is removed first; never do this in .venv). Then runs benchmarks.gpu_check, which fails
# unless session.get_providers() really starts with CUDAExecutionProvider, and writes
# benchmarks/results/gpu_check.json; `python -m benchmarks.run_all --render-only` adds it to
# benchmarks/RESULTS.md. Needs an NVIDIA driver for CUDA 13 (nvidia-smi) and the package index
# (or a wheelhouse via PIP_FIND_LINKS). Takes about 5 minutes on one GPU after the install.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${GPU_VENV:-.venv-gpu}"
ORT_VERSION="$(grep -o 'onnxruntime-gpu==[0-9.]*' pyproject.toml | head -1 | cut -d= -f3)"

nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --upgrade pip
  "$VENV/bin/pip" install -q -e '.[train,serve-cpu,dev]'
  "$VENV/bin/pip" uninstall -q -y onnxruntime
  "$VENV/bin/pip" install -q --force-reinstall --no-deps "onnxruntime-gpu==${ORT_VERSION}"
  "$VENV/bin/pip" install -q "onnxruntime-gpu[cuda,cudnn]==${ORT_VERSION}" || true  # pip-installed CUDA libs, if the driver has none
fi
"$VENV/bin/python" - <<'PY'
import onnxruntime as ort
assert "CUDAExecutionProvider" in ort.get_available_providers(), ort.get_available_providers()
print("onnxruntime", ort.__version__, ort.get_device())
PY
mkdir -p benchmarks/results
exec timeout 900 "$VENV/bin/python" -m benchmarks.gpu_check --out benchmarks/results/gpu_check.json "$@"
