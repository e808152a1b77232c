"""Which stages the installed extras support, found without importing them (torch takes seconds).

``imgcls train`` on a serving-only install would otherwise die with a ``ModuleNotFoundError``
traceback; ``missing_for(stage)`` gives the one-line message naming the extra to install instead.
"""
from __future__ import annotations

import importlib.util

# stage -> (modules it cannot run without, the extra(s) that install them)
REQUIREMENTS: dict[str, tuple[tuple[str, ...], str]] = {
    "digits": (("sklearn",), "train"),
    "train": (("torch", "torchvision", "timm", "safetensors"), "train"),
    "export": (("torch", "onnx", "onnxruntime"), "train"),
    "score": (("onnxruntime",), "serve-cpu"),
    "serve": (("bentoml", "onnxruntime"), "serve-cpu"),
    "demo": (("torch", "sklearn", "bentoml", "onnxruntime"), "train,serve-cpu"),
}


def installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a parent package missing, or a module without a spec
        return False


def missing_modules(stage: str) -> list[str]:
    modules, _ = REQUIREMENTS.get(stage, ((), ""))
    return [name for name in modules if not installed(name)]


def missing_for(stage: str) -> str | None:
    """A one-line message when ``stage`` cannot run in this environment, else None."""
    missing = missing_modules(stage)
    if not missing:
        return None
    extra = REQUIREMENTS[stage][1]
    return (f"imgcls {stage}: this installation lacks {', '.join(missing)}; "
            f"install the '{extra}' extra: pip install 'imgcls[{extra}]'")
