"""The CPU that gates INT8: its instruction-set features, and the INT8 target they call for.

ONNX Runtime's integer kernels differ by instruction set. On x86 without VNNI the U8S8 kernels
multiply-add pairs of u8*s8 products into int16 (``vpmaddubsw``), which saturates; with VNNI
(``vpdpbusd``) or on ARM64 (``sdot``/``udot``) products accumulate in int32 and do not. The
target is therefore chosen from the features of the machine (``auto``), never fixed, and the
bundle records both the target and the features of the machine whose kernels ran the gate.
"""
from __future__ import annotations

import platform
from pathlib import Path

CPUINFO = Path("/proc/cpuinfo")
REPORTED_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_int8", "asimddp")
VNNI_FLAGS = frozenset({"avx512_vnni", "avx_vnni", "amx_int8"})
ARM_MACHINES = frozenset({"aarch64", "arm64"})


def cpu_flags(cpuinfo: Path = CPUINFO) -> frozenset[str]:
    """The ``flags`` (x86) or ``Features`` (ARM) of the first CPU listed; empty when unreadable."""
    try:
        text = cpuinfo.read_text(errors="replace")
    except OSError:
        return frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip().lower() in ("flags", "features"):
            return frozenset(value.split())
    return frozenset()


def cpu_model(cpuinfo: Path = CPUINFO) -> str:
    """The CPU's model name (x86 ``model name``, ARM ``Model``/``CPU part``), else what platform says."""
    try:
        text = cpuinfo.read_text(errors="replace")
    except OSError:
        text = ""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("model name", "Model", "CPU part") and value.strip():
            return value.strip()
    return platform.processor() or platform.machine()


def cpu_features(cpuinfo: Path = CPUINFO) -> dict[str, object]:
    """What the bundle records about the gating machine: architecture, model name, INT8-relevant flags."""
    flags = cpu_flags(cpuinfo)
    return {"machine": platform.machine(), "model": cpu_model(cpuinfo),
            "flags": sorted(f for f in REPORTED_FLAGS if f in flags),
            "target": target_for(platform.machine(), flags)}


def target_for(machine: str, flags: frozenset[str] | set[str]) -> str:
    """``arm64`` on ARM, ``vnni`` on x86 with VNNI (or AMX), otherwise ``x86`` (AVX2 without VNNI)."""
    if machine.lower() in ARM_MACHINES:
        return "arm64"
    if flags & VNNI_FLAGS:
        return "vnni"
    return "x86"


def local_target() -> str:
    return target_for(platform.machine(), cpu_flags())


# The instruction set that decides ONNX Runtime's integer kernels, most capable first.
_ISA_ORDER = (("amx_int8", "amx_int8"), ("avx512_vnni", "avx512_vnni"), ("avx_vnni", "avx_vnni"),
              ("avx512f", "avx512"), ("avx2", "avx2"))


def isa_of(machine: str, flags: frozenset[str] | set[str]) -> str:
    """One word for the integer kernels a CPU gets: ``avx512_vnni``, ``avx_vnni``, ``amx_int8``,
    ``avx512`` (no VNNI), ``avx2``, ``arm64_dotprod`` / ``arm64``, else the machine name."""
    if machine.lower() in ARM_MACHINES:
        return "arm64_dotprod" if "asimddp" in flags else "arm64"
    return next((name for flag, name in _ISA_ORDER if flag in flags), machine.lower() or "unknown")


def local_isa() -> str:
    return isa_of(platform.machine(), cpu_flags())
