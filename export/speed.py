"""Speed truth per target: how fast each precision of a bundle ran on the CPU that exported it.

The gate times fp32 and the variant on the same images, same run, alternating rounds
(``imgcls.export.gate.throughput``). This module turns those figures into what a reader of the card
needs, ``card.export["int8"]["speed"]``::

    {"ratio_vs_fp32": 1.42,              # INT8 images/s divided by fp32 images/s, same run
     "fp32_images_per_s": 150.3, "int8_images_per_s": 213.1,
     "batch": 8,                         # the batch both were timed at
     "format": "U8S8",                   # activation and weight types of the kernels that ran
     "cpu": {"isa": "avx512_vnni",       # imgcls.models.core.cpu.isa_of: avx512_vnni | avx_vnni | amx_int8 |
                                         #   avx512 | avx2 | arm64_dotprod | arm64 | <machine>
             "target": "vnni",           # the INT8 target this CPU calls for (x86 | vnni | arm64)
             "model": "AMD EPYC ...", "machine": "x86_64"},
     "faster_than_fp32": true,           # ratio_vs_fp32 >= 1
     "serve_here": "int8",               # int8 only when the gate passed and it is faster here, else fp32
     "line": "INT8 runs 1.42x fp32 on this CPU (AVX-512 VNNI, U8S8): serve INT8 here"}

``card.export["int8"]`` also says ``int8_format`` (the kept file's, e.g. ``U8U8``; ``format`` stays
the quantization format, ``QDQ``) and ``target`` (which CPUs the file was made for). A server on a CPU of another ``isa`` cannot rely on ``ratio_vs_fp32``:
the same file can run 0.13x fp32 on AVX2 and faster than fp32 with VNNI.
"""
from __future__ import annotations

from typing import Any, Mapping

from imgcls.models.core.cpu import ISA_WORDS, cpu_features, isa_of

_TYPE_LETTERS = {"QUInt8": "U8", "QInt8": "S8"}


def format_of(settings: Mapping[str, Any]) -> str:
    """``U8U8`` / ``U8S8`` / ``S8S8`` from a recipe's settings (activation type then weight type)."""
    if settings.get("mode") == "dynamic" or settings.get("dynamic_matmul"):
        return f"dynamic U8{_TYPE_LETTERS.get(str(settings.get('weight_type')), '?')}"
    letters = [_TYPE_LETTERS.get(str(settings.get(key)), "?") for key in ("activation_type", "weight_type")]
    return "".join(letters)


def speed_line(ratio: float, isa: str, fmt: str, passed: bool, precision: str = "int8") -> str:
    """The one line the export report says about speed on this CPU."""
    name = precision.upper()
    head = f"{name} runs {ratio:.2f}x fp32 on this CPU ({ISA_WORDS.get(isa, isa)}, {fmt})"
    if not passed:
        return f"{head}: its gate refused it; serve fp32"
    if ratio >= 1.0:
        return f"{head}: serve {name} here"
    return f"{head}: for edge devices, serve fp32 here"


def speed_record(gate: Mapping[str, Any], fmt: str, passed: bool, cpu: Mapping[str, Any] | None = None,
                 precision: str = "int8") -> dict[str, Any] | None:
    """``card.export[precision]["speed"]`` from the gate's figures (None when the gate timed nothing)."""
    if not gate or "speed_ratio" not in gate:
        return None
    cpu = dict(cpu or cpu_features())
    isa = isa_of(str(cpu.get("machine", "")), set(cpu.get("flags", ())))
    ratio = round(float(gate["speed_ratio"]), 4)  # the line, the choice and the card say the same figure
    return {
        "ratio_vs_fp32": ratio,
        "fp32_images_per_s": round(float(gate["fp32_images_per_s"]), 2),
        f"{precision}_images_per_s": round(float(gate[f"{precision}_images_per_s"]), 2),
        "batch": int(gate["benchmark_batch"]), "format": fmt,
        "cpu": {"isa": isa, "target": cpu.get("target"), "model": cpu.get("model"), "machine": cpu.get("machine")},
        "faster_than_fp32": ratio >= 1.0,
        "serve_here": precision if passed and ratio >= 1.0 else "fp32",
        "line": speed_line(ratio, isa, fmt, passed, precision),
    }
