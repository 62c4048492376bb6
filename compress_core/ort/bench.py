"""Benchmark an export folder: its ONNX files plus ORT's default int8 of the original, side by side.

Each candidate gets its latency (interleaved runs, ``latency.measure_latency``), its speed-up over
the original fp32 model, its quality on the folder's evaluation data (measured in ONNX Runtime), its
size raw and zipped, and the census of compute nodes that still run in float after ORT's
optimization, with the layers they belong to, the slowest nodes from ORT's profiler and the
profiled time of every layer; ``layer_comparison`` sets the int8 file's layers against the compressed
fp32 file's, to show where int8 costs time instead of saving it. Every row records the CPU it ran
on (int8 speed-ups differ between AVX2-only, VNNI and AMX machines).
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from compress_core.analysis.metrics import output_fidelity
from compress_core.errors import CompressError
from compress_core.models.evaldata import load_npz
from compress_core.models.inputs import InputSpec
from compress_core.ort.artifacts import (
    EVAL_DATA,
    FP32_ONNX,
    INT8_ONNX,
    METRICS,
    ORIGINAL_ONNX,
    file_sizes,
    headline,
    run_onnx,
)
from compress_core.ort.int8 import CALIBRATION_BATCH, quantize_ort_default
from compress_core.ort.latency import measure_latency
from compress_core.ort.profiling import NodeTime, op_census, profile_nodes
from compress_core.ort.runtime import runtime_record

ORT_DEFAULT = "ort_default_int8"
CANDIDATES = (("original_fp32", ORIGINAL_ONNX), ("compressed_fp32", FP32_ONNX), ("compressed_int8", INT8_ONNX))
TOP_LAYERS = 5
UNASSIGNED = "(no layer)"


def bench_folder(
    folder: str | Path,
    threads: int = 2,
    batch: int = 32,
    runs: int = 50,
    warmup: int = 5,
    progress: Callable[[int, int], None] | None = None,
) -> list[dict[str, Any]]:
    """One dict per candidate: ``name``, ``median_ms``, ``p10_ms``, ``p90_ms``, ``speedup`` (over
    the original fp32), ``accuracy`` (the quality figure named by ``quality``), ``bytes``,
    ``zip_bytes``, ``integer_nodes``, ``float_nodes``, ``float_layers``, ``top_layers``,
    ``layer_ms`` (``layer_totals``: profiled ms per run of each layer, and of the nodes of no layer)
    and ``runtime`` (``cpu.runtime_record``: the CPU, ONNX Runtime's version and ``threads``; the
    same for every candidate, so that each row tells what it was measured on)."""
    folder = Path(folder)
    missing = [name for name in (METRICS, EVAL_DATA, ORIGINAL_ONNX) if not (folder / name).is_file()]
    if missing:
        raise CompressError(
            f"{folder}: not an export folder (missing {', '.join(missing)}); write one with: export MODEL --recipe R --out {folder}"
        )
    metrics = json.loads((folder / METRICS).read_text(encoding="utf-8"))
    if "inputs" not in metrics:
        raise CompressError(
            f"{folder / METRICS}: has no input specs (written by an older version); export the model again"
        )
    data = load_npz(folder / EVAL_DATA, [InputSpec.from_dict(spec) for spec in metrics["inputs"]])
    inputs, labels = data.inputs, data.labels
    fixed_batch, output, axis = metrics.get("fixed_batch"), metrics.get("output", 0), metrics.get("output_axis", 0)
    batch = fixed_batch or batch
    layer_nodes = metrics.get("layer_nodes", {})
    runtime = runtime_record(threads)
    with tempfile.TemporaryDirectory() as scratch:
        paths = {name: folder / file for name, file in CANDIDATES if (folder / file).is_file()}
        paths[ORT_DEFAULT] = quantize_ort_default(
            folder / ORIGINAL_ONNX,
            Path(scratch) / f"{ORT_DEFAULT}.onnx",
            inputs,
            batch=fixed_batch or CALIBRATION_BATCH,
        )
        timings = measure_latency(
            paths, inputs, threads, batch, warmup, runs, baseline="original_fp32", progress=progress
        )
        reference = run_onnx(paths["original_fp32"], inputs, fixed_batch, output, axis)
        rows = []
        for timing in timings:
            path = paths[timing.name]
            outputs = run_onnx(path, inputs, fixed_batch, output, axis)
            fidelity = output_fidelity(reference, outputs, labels, metrics["task"], metrics.get("ctc_blank"))
            key, value = headline(fidelity, metrics["task"])
            census = op_census(path, layer_nodes)
            profile = profile_nodes(path, inputs, layer_nodes, threads, batch)
            rows.append(
                {
                    "name": timing.name,
                    "median_ms": timing.median_ms,
                    "p10_ms": timing.p10_ms,
                    "p90_ms": timing.p90_ms,
                    "speedup": timing.speedup,
                    "throughput": timing.throughput,
                    "accuracy": value,
                    "quality": key,
                    **file_sizes(path),
                    "integer_nodes": sum(census.integer.values()),
                    "float_nodes": census.float_nodes,
                    "float_layers": census.float_layers,
                    "top_layers": [
                        {"node": row.node, "op_type": row.op_type, "layer": row.layer, "ms": row.ms, "share": row.share}
                        for row in profile[:TOP_LAYERS]
                    ],
                    "layer_ms": layer_totals(profile),
                    "runtime": runtime,
                }
            )
    return rows


def layer_totals(profile: list[NodeTime]) -> dict[str, float]:
    """Profiled ms per run of each layer (the sum over the nodes that compute it); the nodes of no
    layer (quantize / dequantize, layout transposes, pooling, residual adds) under ``UNASSIGNED``."""
    totals: dict[str, float] = {}
    for node in profile:
        key = node.layer if node.layer is not None else UNASSIGNED
        totals[key] = totals.get(key, 0.0) + node.ms
    return totals


def layer_comparison(
    rows: list[dict[str, Any]], baseline: str = "compressed_fp32", candidate: str = "compressed_int8"
) -> list[dict[str, Any]]:
    """Per layer that runs in integer kernels in ``candidate``: ``fp32_ms`` (in ``baseline``),
    ``int8_ms`` and ``speedup``, slowest-down first, so the layers where int8 costs time lead.

    Layers still float in ``candidate`` (kept float by the plan, or left float by ORT) are not
    compared. Empty without both files.
    """
    by_name = {row["name"]: row for row in rows}
    if baseline not in by_name or candidate not in by_name:
        return []
    before, after = by_name[baseline]["layer_ms"], by_name[candidate]["layer_ms"]
    floating = set(by_name[candidate]["float_layers"]) | {UNASSIGNED}
    table = [
        {"layer": layer, "fp32_ms": before[layer], "int8_ms": after[layer], "speedup": before[layer] / after[layer]}
        for layer in before
        if layer not in floating and before[layer] > 0 and after.get(layer, 0.0) > 0
    ]
    return sorted(table, key=lambda row: row["speedup"])
