"""This CPU's kind for INT8: the ISA class whose integer kernels ONNX Runtime runs here.

``kind`` is the INT8 target a CPU calls for: ``vnni`` (x86 with AVX-512 VNNI, AVX-VNNI or AMX),
``x86`` (AVX2/AVX-512 without VNNI: U8S8 pair sums saturate, INT8 is often slower than fp32) or
``arm64``. ``isa`` is one word finer (``avx2``, ``avx512``, ``avx512_vnni``, ``arm64_dotprod`` ...),
the same words the card's ``export.int8.speed.cpu`` uses. Read from ``/proc/cpuinfo``; no torch.

Why the kind matters: on x86 without VNNI the U8S8 kernels multiply-add pairs of u8*s8 products into
int16 (``vpmaddubsw``), which saturates; with VNNI (``vpdpbusd``) or on ARM64 (``sdot``/``udot``)
products accumulate in int32 and do not. The export chooses its INT8 target from this (``auto``) and
records ``cpu_features`` of the machine whose kernels ran the gate.
"""
from __future__ import annotations

import os
import platform
from dataclasses import dataclass
from pathlib import Path

CPUINFO = Path("/proc/cpuinfo")
REPORTED_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_int8", "asimddp")
VNNI_FLAGS = frozenset({"avx512_vnni", "avx_vnni", "amx_int8"})
ARM_MACHINES = frozenset({"aarch64", "arm64"})
# The instruction set that decides ONNX Runtime's integer kernels, most capable first.
ISA_ORDER = (("amx_int8", "amx_int8"), ("avx512_vnni", "avx512_vnni"), ("avx_vnni", "avx_vnni"),
             ("avx512f", "avx512"), ("avx2", "avx2"))
ISA_WORDS = {"avx512_vnni": "AVX-512 VNNI", "avx_vnni": "AVX-VNNI", "amx_int8": "AMX", "avx512": "AVX-512, no VNNI",
             "avx2": "AVX2, no VNNI", "arm64_dotprod": "ARM64 dot product", "arm64": "ARM64"}


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


def machine_cores() -> int:
    """Cores this process may run on (its CPU affinity), at least 1; ``imgcls.service.runtime.available_cpus``
    further bounds it by the cgroup's CPU quota."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


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
    """What a bundle records about the gating machine: architecture, model name, INT8-relevant flags."""
    flags = cpu_flags(cpuinfo)
    return {"machine": platform.machine(), "model": cpu_model(cpuinfo),
            "flags": sorted(f for f in REPORTED_FLAGS if f in flags),
            "target": target_for(platform.machine(), flags)}


def target_for(machine: str, flags: frozenset[str] | set[str]) -> str:
    """``arm64`` on ARM, ``vnni`` on x86 with VNNI (or AMX), otherwise ``x86``."""
    if machine.lower() in ARM_MACHINES:
        return "arm64"
    return "vnni" if flags & VNNI_FLAGS else "x86"


def isa_of(machine: str, flags: frozenset[str] | set[str]) -> str:
    """One word for the integer kernels a CPU gets (``ISA_WORDS``' keys), else the machine name."""
    if machine.lower() in ARM_MACHINES:
        return "arm64_dotprod" if "asimddp" in flags else "arm64"
    return next((name for flag, name in ISA_ORDER if flag in flags), machine.lower() or "unknown")


def kind_of_isa(isa: str) -> str:
    """The kind (``vnni`` | ``x86`` | ``arm64``) an ``isa`` word belongs to."""
    if isa.startswith("arm64"):
        return "arm64"
    return "vnni" if isa in ("avx512_vnni", "avx_vnni", "amx_int8") else "x86"


@dataclass(frozen=True)
class CpuKind:
    kind: str  # vnni | x86 | arm64
    isa: str  # ISA_WORDS key, or the machine name

    @property
    def words(self) -> str:
        """For people: ``AVX2, no VNNI``, ``AVX-512 VNNI``, ``ARM64 dot product`` ..."""
        return ISA_WORDS.get(self.isa, self.isa)


def local_cpu(cpuinfo: Path = CPUINFO, machine: str | None = None) -> CpuKind:
    """This machine's kind and ISA."""
    machine = machine or platform.machine()
    flags = cpu_flags(cpuinfo)
    return CpuKind(kind=target_for(machine, flags), isa=isa_of(machine, flags))


def local_target() -> str:
    """This machine's INT8 target (``vnni`` | ``x86`` | ``arm64``)."""
    return target_for(platform.machine(), cpu_flags())


def local_isa() -> str:
    """This machine's ISA word (``ISA_WORDS``' keys, else the machine name)."""
    return isa_of(platform.machine(), cpu_flags())
