"""What CPU this process runs on, and what that means for int8 in ONNX Runtime.

int8 figures depend on the CPU. Without VNNI, ONNX Runtime's x86 U8S8 kernels add pairs of
u8 x s8 products in 16 bits (``vpmaddubsw``), which can saturate and cost accuracy; with VNNI
(AVX-512 VNNI or AVX-VNNI) one instruction sums four products in 32 bits. The speed-up of int8 over
fp32 differs as much: AVX2-only, VNNI and AMX machines, and on Arm the dot-product and i8mm
extensions. ``cpu_features`` reads the CPU's model, cores and those features (``/proc/cpuinfo``
first, py-cpuinfo where there is none; once per process), ``int8_notes`` says in plain words what
they imply (``compress_core.ort.runtime``).

The parsers (``parse_proc_cpuinfo``, ``from_py_cpuinfo``) are pure functions of their input.
"""

from __future__ import annotations

import functools
import os
import platform
import re
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

PROC_CPUINFO = Path("/proc/cpuinfo")
# Both spellings of each feature: /proc/cpuinfo's, and py-cpuinfo's (which drops the underscore).
AVX512_VNNI_FLAGS = frozenset({"avx512_vnni", "avx512vnni"})
AVX_VNNI_FLAGS = frozenset({"avx_vnni", "avxvnni"})
AMX_FLAGS = frozenset({"amx_int8", "amxint8"})
DOTPROD_FLAGS = frozenset({"asimddp", "dotprod"})
I8MM_FLAGS = frozenset({"i8mm"})
# Arm CPUs often give no model name in /proc/cpuinfo: the implementer and part codes name them.
ARM_IMPLEMENTERS = {
    "0x41": "Arm",
    "0x42": "Broadcom",
    "0x46": "Fujitsu",
    "0x48": "HiSilicon",
    "0x4e": "NVIDIA",
    "0x51": "Qualcomm",
    "0x61": "Apple",
    "0xc0": "Ampere",
}
ARM_PARTS = {
    "0xd03": "Cortex-A53",
    "0xd05": "Cortex-A55",
    "0xd08": "Cortex-A72",
    "0xd0b": "Cortex-A76",
    "0xd0c": "Neoverse-N1",
    "0xd40": "Neoverse-V1",
    "0xd41": "Cortex-A78",
    "0xd49": "Neoverse-N2",
    "0xd4f": "Neoverse-V2",
    "0xd8e": "Neoverse-N3",
}


@dataclass(frozen=True)
class CpuInfo:
    """The CPU as far as int8 inference cares.

    ``logical_cores`` is the machine's count (processor entries); ``available_cores`` how many this
    process may run on (its affinity; fewer in a container or under ``taskset``). The booleans are
    the int8 features ONNX Runtime's kernels use: ``avx512f`` is AVX-512 itself, ``amx`` AMX with
    int8 (``amx_int8``), ``dotprod`` Arm's dot-product (``asimddp``) and ``i8mm`` Arm's int8 matrix
    multiply. ``source`` tells where the figures come from: ``/proc/cpuinfo``, ``py-cpuinfo``, or
    ``platform`` (neither: the features are then unknown, not absent).
    """

    model: str
    architecture: str
    logical_cores: int
    available_cores: int
    avx2: bool = False
    avx512f: bool = False
    avx512_vnni: bool = False
    avx_vnni: bool = False
    amx: bool = False
    dotprod: bool = False
    i8mm: bool = False
    source: str = "platform"

    @property
    def is_arm(self) -> bool:
        """An Arm CPU (aarch64 / arm64 / armv7 ...)."""
        return self.architecture.lower().startswith(("arm", "aarch"))

    @property
    def vnni(self) -> bool:
        """AVX-512 VNNI or AVX-VNNI: int8 dot products summed in 32 bits, no U8S8 saturation."""
        return self.avx512_vnni or self.avx_vnni

    @property
    def known(self) -> bool:
        """Whether the features were read at all (else every feature reads False for lack of news)."""
        return self.source != "platform"

    def int8_features(self) -> list[str]:
        """The int8 features present, by their usual names, e.g. ``["AVX2", "AVX-512", "AVX-512 VNNI"]``."""
        names = (
            (self.avx2, "AVX2"),
            (self.avx512f, "AVX-512"),
            (self.avx512_vnni, "AVX-512 VNNI"),
            (self.avx_vnni, "AVX-VNNI"),
            (self.amx, "AMX"),
            (self.dotprod, "dot product"),
            (self.i8mm, "i8mm"),
        )
        return [name for present, name in names if present]

    def cores_text(self) -> str:
        """``"2 cores"``, or ``"2 of 64 cores"`` when this process may use fewer than the machine has."""
        if self.available_cores < self.logical_cores:
            return f"{self.available_cores} of {self.logical_cores} cores"
        return f"{self.available_cores} core{'s' if self.available_cores != 1 else ''}"

    def summary(self) -> str:
        """``<model>, <n> cores; int8 features: AVX2, AVX-512 VNNI`` (``none``, or ``unknown`` when
        they could not be read)."""
        features = ", ".join(self.int8_features()) or ("none" if self.known else "unknown")
        return f"{self.model}, {self.cores_text()}; int8 features: {features}"

    def to_dict(self) -> dict[str, Any]:
        """The fields, plus ``int8_features``, as plain JSON data."""
        return {**asdict(self), "int8_features": self.int8_features()}


def _available_cores(default: int) -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # no sched_getaffinity on macOS / Windows
        return default


def _features(flags: Iterable[str]) -> dict[str, bool]:
    lowered = {flag.lower() for flag in flags}
    return {
        "avx2": "avx2" in lowered,
        "avx512f": "avx512f" in lowered,
        "avx512_vnni": bool(lowered & AVX512_VNNI_FLAGS),
        "avx_vnni": bool(lowered & AVX_VNNI_FLAGS),
        "amx": bool(lowered & AMX_FLAGS),
        "dotprod": bool(lowered & DOTPROD_FLAGS),
        "i8mm": bool(lowered & I8MM_FLAGS),
    }


def _arm_model(fields: Mapping[str, str]) -> str | None:
    implementer, part = fields.get("cpu implementer", "").lower(), fields.get("cpu part", "").lower()
    if not implementer:
        return None
    vendor = ARM_IMPLEMENTERS.get(implementer, f"implementer {implementer}")
    name = ARM_PARTS.get(part, f"part {part}") if implementer == "0x41" else f"part {part}"
    return f"{vendor} {name}"


def parse_proc_cpuinfo(text: str, machine: str = "", available_cores: int | None = None) -> CpuInfo | None:
    """The ``CpuInfo`` described by a ``/proc/cpuinfo`` text; None when it names no feature flags.

    ``machine`` is ``platform.machine()`` (``/proc/cpuinfo`` of x86 does not state it; without it
    the architecture is inferred from the text); ``available_cores`` defaults to the logical cores.
    Flags are the union of every processor's ``flags`` (x86) or ``Features`` (Arm) line.
    """
    flags: set[str] = set()
    fields: dict[str, str] = {}
    processors = 0
    x86 = False
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if not sep:
            continue
        key, value = key.strip().lower(), value.strip()
        if key in ("flags", "features"):
            flags.update(value.split())
            x86 = x86 or key == "flags"
        elif key == "processor" and value.isdigit():
            processors += 1
        elif value:
            fields.setdefault(key, value)
    if not flags:
        return None
    if not machine:
        if x86:
            machine = "x86_64"
        else:
            version = fields.get("cpu architecture", "")
            machine = "aarch64" if version.isdigit() and int(version) >= 8 else f"armv{version or '?'}"
    model = (
        fields.get("model name")
        or _arm_model(fields)
        or next((fields[key] for key in ("model", "hardware") if not fields.get(key, "0").isdigit()), None)
        or fields.get("cpu model")
        or machine
    )
    model = re.sub(r"\s+", " ", model)
    cores = max(processors, 1)
    return CpuInfo(
        model=model,
        architecture=machine,
        logical_cores=cores,
        available_cores=min(available_cores, cores) if available_cores else cores,
        source="/proc/cpuinfo",
        **_features(flags),
    )


def from_py_cpuinfo(info: Mapping[str, Any], available_cores: int | None = None) -> CpuInfo:
    """The ``CpuInfo`` of py-cpuinfo's ``get_cpu_info()`` dict (``brand_raw``, ``arch_string_raw``,
    ``count``, ``flags``)."""
    cores = int(info.get("count") or os.cpu_count() or 1)
    machine = str(info.get("arch_string_raw") or info.get("arch") or platform.machine())
    return CpuInfo(
        model=str(info.get("brand_raw") or info.get("brand") or machine),
        architecture=machine,
        logical_cores=cores,
        available_cores=min(available_cores, cores) if available_cores else cores,
        source="py-cpuinfo",
        **_features(str(flag) for flag in info.get("flags", [])),
    )


def _py_cpuinfo() -> dict[str, Any] | None:
    try:
        import cpuinfo

        info = cpuinfo.get_cpu_info()
    except Exception:  # noqa: BLE001 - py-cpuinfo fails in many ways (it may spawn a process); no answer is an answer
        return None
    return info if isinstance(info, dict) else None


def read_cpu_features(proc_path: Path = PROC_CPUINFO) -> CpuInfo:
    """``cpu_features`` without the cache: ``proc_path`` when it can be read and names flags, else
    py-cpuinfo, else what ``platform`` knows (``source`` ``platform``, features unknown)."""
    machine = platform.machine()
    logical = os.cpu_count() or 1
    available = _available_cores(logical)
    try:
        parsed = parse_proc_cpuinfo(proc_path.read_text(encoding="utf-8", errors="replace"), machine, available)
    except OSError:
        parsed = None
    if parsed is not None:
        return parsed
    info = _py_cpuinfo()
    if info is not None:
        return from_py_cpuinfo(info, available)
    return CpuInfo(
        model=platform.processor() or machine or "unknown CPU",
        architecture=machine or "unknown",
        logical_cores=logical,
        available_cores=min(available, logical),
    )


@functools.cache
def cpu_features() -> CpuInfo:
    """This machine's CPU (read once per process; see ``read_cpu_features``)."""
    return read_cpu_features()
