"""What the CPU means for int8 (``int8_notes``), and the record of the machine that every result
carries (``runtime_record``: CPU, ONNX Runtime version, threads; ``runtime_line``: the same in one line)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import fields as dataclass_fields
from typing import Any

from compress_core.ort.cpu import CpuInfo, cpu_features


def int8_notes(info: CpuInfo) -> list[str]:
    """What the CPU's features imply for int8 in ONNX Runtime, in plain words, most important first."""
    if not info.known:
        return [
            "The CPU's features could not be read: whether U8S8 int8 kernels saturate, and how much faster "
            "int8 runs than fp32, cannot be told in advance. Measure them with bench."
        ]
    notes = []
    if info.is_arm:
        if info.i8mm:
            notes.append(
                "i8mm: int8 matrix-multiply instructions (SMMLA / UMMLA), up to twice the int8 throughput of "
                "the dot-product instructions; recent ONNX Runtime uses them in its int8 matrix multiplies."
            )
        if info.dotprod:
            notes.append(
                "Dot product (asimddp): int8 dot products of four pairs run in one instruction with 32-bit sums; "
                "int8 kernels do not saturate, and int8 is usually 2-4x faster than fp32 on compute-bound layers."
            )
        else:
            notes.append(
                "No Arm dot-product extension: int8 products are widened to 16 bits before they are added, "
                "so int8 is exact but gains little speed over fp32; the smaller file is the main gain."
            )
        return notes
    if info.amx:
        notes.append(
            "AMX: int8 matrix multiplies can run on the AMX tile unit, many times the int8 throughput of "
            "vector instructions; expect the largest int8 speed-ups over fp32 on large layers."
        )
    if info.vnni:
        kind = " and ".join(
            name for present, name in ((info.avx512_vnni, "AVX-512"), (info.avx_vnni, "AVX")) if present
        )
        notes.append(
            f"VNNI ({kind} VNNI): int8 dot products run in one instruction with 32-bit sums; U8S8 kernels do not "
            "saturate, and int8 can be 2-4x faster than fp32 on compute-bound layers."
        )
    elif info.avx2 or info.avx512f:
        width = "AVX-512" if info.avx512f else "AVX2"
        notes.append(
            f"{width} without VNNI: ONNX Runtime's U8S8 kernels add pairs of u8 x s8 products in 16 bits "
            "(vpmaddubsw), which can saturate and cost accuracy; int8 speed-up over fp32 is at most about 2x. "
            "S8S8 activations avoid the saturation at some speed; a U8S8 figure measured here is a lower bound "
            "of what a VNNI machine gets."
        )
    else:
        notes.append(
            "No AVX2: ONNX Runtime falls back to SSE int8 kernels; int8 gains little speed over fp32, "
            "the smaller file is the main gain."
        )
    return notes


def runtime_record(threads: int | None, threads_of: str = "onnxruntime") -> dict[str, Any]:
    """What a result records of the machine it was measured on, as JSON data: ``cpu``
    (``CpuInfo.to_dict``), ``onnxruntime`` (its version), ``threads`` (intra-op threads; None for
    the engine's default) and ``threads_of`` (whose threads: ``onnxruntime``, or ``torch`` for a
    figure PyTorch measured)."""
    import onnxruntime

    return {
        "cpu": cpu_features().to_dict(),
        "onnxruntime": onnxruntime.__version__,
        "threads": threads,
        "threads_of": threads_of,
    }


def cpu_from_record(record: Mapping[str, Any]) -> CpuInfo:
    """The ``CpuInfo`` of a ``runtime_record`` (read back from JSON; keys it does not know are ignored)."""
    cpu = record["cpu"]
    return CpuInfo(**{field.name: cpu[field.name] for field in dataclass_fields(CpuInfo) if field.name in cpu})


def runtime_line(record: Mapping[str, Any]) -> str:
    """One line of a ``runtime_record``: ``CPU: <model>, <n> cores; int8 features: AVX2, AVX-512
    VNNI; ORT 1.x; 2 threads`` (``2 torch threads`` when torch's threads were recorded)."""
    info = cpu_from_record(record)
    threads, engine = record.get("threads"), record.get("threads_of", "onnxruntime")
    engine_name = "" if engine == "onnxruntime" else f"{engine} "
    if threads is None:
        threads_text = f"{'ORT' if engine == 'onnxruntime' else engine}'s default threads"
    else:
        threads_text = f"{threads} {engine_name}thread{'s' if threads != 1 else ''}"
    return f"CPU: {info.summary()}; ORT {record['onnxruntime']}; {threads_text}"
