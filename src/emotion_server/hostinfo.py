"""Which CPU this is: its model name and the widest vector instructions it offers.

A speed measured here (a model card's ms per face, a benchmark's table) depends on these more
than on anything else: ONNX Runtime's INT8 kernels run several times faster with AVX-512 VNNI
or AMX than with AVX2 alone (docs/performance.md), and training's bfloat16 pays only where the
CPU multiplies it natively. So every such figure is written down with this beside it.
"""

from __future__ import annotations

import platform
from pathlib import Path

CPUINFO = Path("/proc/cpuinfo")

# The widest first: the first of these the CPU has names its class.
VECTOR_ISAS = (
    ("amx_int8", "AMX"),
    ("avx512_vnni", "AVX-512 VNNI"),
    ("avx512f", "AVX-512"),
    ("avx_vnni", "AVX-VNNI"),
    ("avx2", "AVX2"),
)


def parse_cpuinfo(text: str) -> tuple[str, frozenset[str]]:
    """/proc/cpuinfo's text -> (the first processor's model name, its flags)."""
    model, flags = "", frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and not model:
            model = value.strip()
        elif key == "flags" and not flags:
            flags = frozenset(value.split())
    return model, flags


def _cpuinfo() -> tuple[str, frozenset[str]]:
    try:
        return parse_cpuinfo(CPUINFO.read_text())
    except OSError:  # not Linux
        return platform.processor(), frozenset()


def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags as Linux names them (empty where /proc/cpuinfo is absent)."""
    return _cpuinfo()[1]


def vector_isa(flags: frozenset[str]) -> str:
    """The widest vector instruction set among `flags`, for example "AVX2" or "AVX-512 VNNI"."""
    for flag, name in VECTOR_ISAS:
        if flag in flags:
            return name
    return "no AVX2" if flags else "unknown ISA"


def cpu() -> str:
    """The CPU in a few words: "AMD EPYC (AVX2)", "Intel(R) Xeon(R) Processor (AMX)"."""
    model, flags = _cpuinfo()
    return f"{model or platform.machine() or 'unknown CPU'} ({vector_isa(flags)})"


def describe() -> str:
    """The CPU and how many cores this process may use (config.available_cpus: its affinity
    and its cgroup's quota): "AMD EPYC (AVX2), 2 cores"."""
    from emotion_server.config import available_cpus

    cores = available_cpus()
    return f"{cpu()}, {cores} core{'' if cores == 1 else 's'}"
