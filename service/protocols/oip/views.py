"""The names a served model answers to in the Open Inference Protocol, and its model configuration.

Each served model ``NAME`` is also served as two views, for clients that expect a model with exactly
one input (Triton's ``image_client.py``, ``perf_analyzer``, most image examples), as Triton serves
one model name per kind of input:

- ``NAME``: the model, both inputs (``image`` BYTES ``[N]`` and ``pixels`` UINT8 ``[N, 3, S, S]``);
- ``NAME.image``: only ``image``, one encoded file (JPEG, PNG...) per element, decoded, resized and
  cropped by the server as ``/classify`` does;
- ``NAME.pixels``: only ``pixels``, ``FORMAT_NCHW``, resized by the client to ``S x S`` (S: the bundle's
  crop size), unnormalised (UINT8, or FP32 in 0..255): the graph normalises inside.

A served model's own name wins: a model named ``a.pixels`` hides the view ``pixels`` of a model ``a``.
``model_config`` is Triton's model configuration (``GET /v2/models/{name}/config``, gRPC ``ModelConfig``)
as plain data in Triton's JSON form, with the batching settings the engine runs.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from imgcls.service.protocols.oip.messages import IMAGE, PIXELS, PLATFORM, PROBABILITIES, ModelSpec

if TYPE_CHECKING:  # ONNX Runtime: imported by the workers' engine, not by the arbiter that reads this module
    from imgcls.service.engine.classifier import LoadedModel
    from imgcls.service.engine.registry import ModelRegistry

VIEW_SUFFIXES = {"." + IMAGE: IMAGE, "." + PIXELS: PIXELS}
CONFIG_TYPES = {"BYTES": "TYPE_STRING", "UINT8": "TYPE_UINT8", "FP32": "TYPE_FP32"}


@dataclass(frozen=True)
class ViewName:
    """A requested name: the served model it names and the view of it ("" = the model itself)."""

    model: str
    view: str

    @property
    def name(self) -> str:
        return self.model + ("." + self.view if self.view else "")


def parse_view(name: str, registry: ModelRegistry) -> ViewName:
    """``NAME``, ``NAME.image`` or ``NAME.pixels``; a served model's own name wins over a view."""
    served = registry.names()
    if name not in served:
        for suffix, view in VIEW_SUFFIXES.items():
            if name.endswith(suffix) and name[: -len(suffix)] in served:
                return ViewName(name[: -len(suffix)], view)
    return ViewName(name, "")


def resolve(name: str, registry: ModelRegistry) -> tuple[LoadedModel, ViewName]:
    """The served model a name (or view name) refers to; ``EngineError`` (unknown_model...) otherwise."""
    view = parse_view(name, registry)
    return registry.resolve(view.model), view


def view_names(model: str) -> list[str]:
    return [model, *(model + suffix for suffix in VIEW_SUFFIXES)]


def model_spec(model: LoadedModel, view: str = "") -> ModelSpec:
    predictor = model.predictor
    return ModelSpec(name=model.name + ("." + view if view else ""),
                     version=predictor.model_version.rsplit("@", 1)[-1], crop_size=predictor.input_size,
                     class_names=tuple(predictor.class_names), max_images=model.settings.max_images, view=view)


def model_config(model: LoadedModel, view: str = "") -> dict[str, Any]:
    """Triton's model configuration of a model or view: inputs with format and dims (batch dimension left out:
    ``max_batch_size`` > 0), the output, and the dynamic batching in force (batch sizes run, extra wait)."""
    spec, settings = model_spec(model, view), model.settings
    inputs = []
    for name, (datatype, shape) in spec.input_shapes().items():
        entry: dict[str, Any] = {"name": name, "data_type": CONFIG_TYPES[datatype],
                                 "format": "FORMAT_NCHW" if name == PIXELS else "FORMAT_NONE"}
        if name == IMAGE:  # one encoded file per batch item, the item itself a scalar (Triton's reshape)
            entry.update(dims=[1], reshape={"shape": []})
        else:
            entry["dims"] = shape[1:]
        inputs.append(entry)
    on_gpu = model.plan.pad
    return {
        "name": spec.name, "platform": PLATFORM, "backend": "onnxruntime",
        "version_policy": {"latest": {"num_versions": 1}},
        "max_batch_size": settings.max_images,
        "input": inputs,
        "output": [{"name": PROBABILITIES, "data_type": "TYPE_FP32", "dims": [len(spec.class_names)]}],
        "dynamic_batching": {"preferred_batch_size": list(model.plan.sizes),
                             "max_queue_delay_microseconds": int(round(settings.batch_wait_ms * 1000))},
        "instance_group": [{"name": spec.name, "count": settings.workers, "kind": "KIND_GPU" if on_gpu else "KIND_CPU"}],
        "parameters": {key: {"string_value": str(value)} for key, value in (
            ("view_of", model.name), ("model_version", model.info.version), ("max_queue_images", settings.max_queue_images),
            ("largest_inference_batch", model.plan.sizes[-1]), ("precision", model.info.precision))},
    }

