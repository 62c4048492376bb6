"""The Export page's data: build the export folder of the current plan and benchmark it, each in a
``BackgroundJob`` with an estimate, progress with the time left and a Stop; and the honest labels:
how the int8 file stores each layer of the plan, and whether ONNX Runtime runs it in integer kernels.

Export folders live in this process's private folder (``sources.private_dir``); only the newest
``KEPT_EXPORTS`` are kept, so a long-running app does not fill the disk. Results are plain data for
``st.session_state``: paths as strings, numbers, and the engine's dicts. A running job lives under
``EXPORT_JOB`` or ``BENCH_JOB`` (``{"label", "job", "until"}``) until the page stores its result:
``state.EXPORTS[label]`` (``build``'s dict, with the plan it was built from, the census of its int8
file and its seconds) or ``state.LATENCY[label]`` (``{"rows", "plan", "stopped", "seconds",
"budget_s"}``). The page run that starts a job estimated at most ``INLINE_ESTIMATE_S`` long waits
for it up to ``until`` (``INLINE_WAIT_S`` later; see ``follow_until``), drawing its progress, so a
short job shows its result at once; a longer one is followed by a fragment that polls it. Either way
its Stop button works: a click interrupts the page run that waits.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import threading
import time
from pathlib import Path
from typing import Any

import streamlit as st

from compress_core import CompressError, LayerInfo, ModelHandle
from compress_core.ort.artifacts import INT8_ONNX, export_artifacts
from compress_core.ort.bench import ORT_DEFAULT, ORT_DEFAULT_SAMPLES, UNASSIGNED, bench_folder, layer_comparison
from compress_core.ort.budget import (
    EXPORT_CENSUS,
    BenchPlan,
    Step,
    Stopped,
    Tracker,
    costs_before_quantization,
    export_steps,
    format_seconds,
    plan_bench,
)
from compress_core.ort.cpu import cpu_features
from compress_core.ort.int8 import STORAGE_BITS, Int8Options
from compress_core.ort.latency import open_and_probe
from compress_core.ort.nbits import NBitsOptions
from compress_core.ort.profiling import op_census
from compress_core.ort.runtime import int8_notes
from compress_core.pipeline import CompressedModel
from compress_core.plan import Plan

from . import cache
from .jobs import BackgroundJob, Report
from .sources import private_dir

EXPORTS = "exports"
KEPT_EXPORTS = 8
EXPORT_JOB = "export_job"  # {"label", "job", "until"} while an export runs
BENCH_JOB = "bench_job"  # {"label", "job", "until"} while a latency benchmark runs
MESSAGE = "export_message"  # (kind, text): how a stopped or failed job ended, shown once
INLINE_ESTIMATE_S = 10.0  # a job estimated to end within this is followed by the page run that starts it ...
INLINE_WAIT_S = 300.0  # ... for at most this long; a longer job is followed by a fragment that polls it at once
BENCH_THREADS = 2
_removal_lock = threading.Lock()  # one removal at a time: two would race on the same folders
MIME_TYPES = {
    ".onnx": "application/octet-stream",
    ".pt": "application/octet-stream",
    ".yaml": "application/yaml",
    ".json": "application/json",
    ".md": "text/markdown",
    ".npz": "application/octet-stream",
}
CANDIDATE_NOTES = {
    "original_fp32": "the model as loaded, exported to ONNX in float32 (BatchNorm folded): the baseline of every speed-up",
    "compressed_fp32": "the plan applied (weights on their grids, pruned, low rank) but stored and run in float32: "
    "what the plan alone does to speed",
    "compressed_int8": "the compressed model through ONNX Runtime's quantizer with this page's settings: each layer "
    "stored as the bit-width table says",
    "compressed_nbits": "the plan's 2-4-bit MatMul / Gemm layers and embedding tables stored block-wise in 4 bits "
    "(MatMulNBits, GatherBlockQuantized), activations quantized block by block at run time (int8 compute) or kept "
    "float: the smallest file",
    ORT_DEFAULT: "ONNX Runtime's own quantize_static with its defaults (QDQ, S8S8, per-tensor MinMax) on the original "
    "model, calibrated on the same data: the baseline to beat",
}
NO_INTEGER_KERNEL = {
    "QInt4": "4-bit weights are stored as QInt4, and ONNX Runtime has no int4 Conv, MatMul or Gemm kernel on CPU",
    "QInt16": "16-bit weights are stored as QInt16, and ONNX Runtime has no int16 Conv, MatMul or Gemm kernel on CPU",
}
PATH_SWITCHES = {  # Int8Options field -> (label, help, static exports only): overrides of this CPU's int8 path
    "reduce_range": (
        "reduce_range",
        "7-bit weights (ORT's reduce_range): no saturation without VNNI, a coarser grid",
        False,
    ),
    "per_channel": ("Per-channel weights", "Off: one scale per weight tensor, for every layer", False),
    "float_narrow_convs": ("One-channel convs float", "Keep float the Conv layers that read a single channel", True),
    "pad_conv_channels": (
        "Pad Conv inputs",
        "Pad Conv inputs with zero channels to a multiple of 4, for ONNX Runtime's fast int8 conv kernels",
        True,
    ),
}
FLOAT_BY_PLAN = "float (the plan keeps it float)"
FLOAT_BY_PATH = "float (this CPU's int8 path keeps it float)"
INTEGER_KERNEL = "integer kernel"
FLOAT_KERNEL = "float kernel (weights dequantized)"


# Building -----------------------------------------------------------------------------------------


def path_choice_text(value: Any) -> str:
    """How a path override select box shows its value: None is the rule's choice."""
    if value is None:
        return "as this CPU's path"
    return {True: "on", False: "off"}.get(value, str(value))


def export_folder(model_key: str, plan: Plan, fine_tuned: bool = False) -> Path:
    """A folder of its own for each (model, plan, fine-tuned or not)."""
    digest = hashlib.sha256(f"{model_key}\n{plan.to_yaml()}\n{fine_tuned}".encode()).hexdigest()[:16]
    return private_dir(EXPORTS) / digest


def build(
    model: CompressedModel,
    folder: Path,
    int8: Int8Options | None,
    tracker: Tracker | None = None,
    nbits: NBitsOptions | None = None,
) -> dict[str, Any]:
    """Write the export folder of ``model`` (``cache.compressed``, or the Recover panel's fine-tuned
    model) and return its files (name -> path, sizes), metrics and, with int8, the ``census`` of the
    int8 file (``profiling.op_census``: which layers ONNX Runtime runs in integer kernels); ``nbits`` adds
    the weight-only MatMulNBits file (``ort.nbits``). Raises
    ``Stopped`` when ``tracker``'s cancel stops it (before any file reaches ``folder``)."""
    track = tracker if tracker is not None else Tracker()
    result = export_artifacts(model, folder, int8=int8, tracker=track, nbits=nbits)
    os.utime(result.folder)
    remove_old_exports(result.folder.parent)
    files = {name: {"path": str(path), **result.sizes[name]} for name, path in result.files.items()}
    built: dict[str, Any] = {"folder": str(result.folder), "files": files, "metrics": result.metrics, "census": None}
    if INT8_ONNX in result.files:
        track.begin(EXPORT_CENSUS, check=False)  # the files are in place: a stop now would only lose the census
        census = op_census(result.files[INT8_ONNX], result.metrics["layer_nodes"])
        built["census"] = {
            "integer": census.integer,
            "float": census.float,
            "float_layers": census.float_layers,
            "integer_nodes": sum(census.integer.values()),
            "float_nodes": census.float_nodes,
            "kept_float": [
                row["layer"]
                for row in result.metrics["int8"]["layers"]
                if row["bits"] is not None and row["storage"] == "float"
            ],
        }
    return built


def start_export(
    model: CompressedModel,
    folder: Path,
    int8: Int8Options | None,
    steps: list[Step],
    plan: Plan,
    nbits: NBitsOptions | None = None,
) -> BackgroundJob:
    """``build`` in the background, followed by ``steps`` (``export_estimate``). The job's result is
    ``build``'s dict with ``plan`` (what it was built from), ``seconds`` and ``estimated_s``; or
    ``{"stopped": True, "seconds"}`` when stopped (the destination then holds no new file)."""

    def work(report: Report, cancel: threading.Event) -> dict[str, Any]:
        tracker = Tracker(steps, report, cancel.is_set)
        try:
            with tracker.ticking():
                built = build(model, folder, int8, tracker, nbits)
        except Stopped:
            return {"stopped": True, "seconds": tracker.elapsed_s}
        tracker.finish("built")
        return {**built, "plan": plan.to_dict(), "seconds": tracker.elapsed_s, "estimated_s": tracker.estimated_s}

    return BackgroundJob(work)


@st.cache_data(show_spinner=False, max_entries=16)
def forward_cost(key: str, _handle: ModelHandle) -> dict[str, float]:
    """What the estimates start from, measured once per model: ``open_s`` (opening a session on its
    ONNX export), ``forward_s`` (one sample through it, ``open_and_probe`` at batch 1 or its static
    batch, on ``BENCH_THREADS`` threads), ``onnx_bytes`` and ``data_bytes`` (the evaluation inputs)."""
    prepared = cache.original(key, _handle)
    inputs = _handle.data.inputs
    batch = _handle.fixed_batch or 1
    _, open_s, run_s = open_and_probe(prepared.onnx_model, inputs, batch, BENCH_THREADS)
    forward_s = run_s / batch
    data_bytes = sum(array.nbytes for array in inputs.arrays.values())
    return {
        "open_s": open_s,
        "forward_s": forward_s,
        "onnx_bytes": prepared.onnx_model.ByteSize(),
        "data_bytes": data_bytes,
    }


def export_estimate(cost: dict[str, float], samples: int, int8: Int8Options | None, prepared: bool) -> list[Step]:
    """The export's steps and their estimated seconds (``budget.export_steps``) from ``forward_cost``."""
    mode = None if int8 is None else ("dynamic" if int8.dynamic else "static")
    return export_steps(
        cost["forward_s"],
        samples,
        onnx_bytes=int(cost["onnx_bytes"]),
        data_bytes=int(cost["data_bytes"]),
        int8=mode,
        calibration_samples=64 if int8 is None else int8.calibration_samples,
        prepared=prepared,
        census=True,
    )


def remove_old_exports(parent: Path, keep: int = KEPT_EXPORTS) -> list[Path]:
    """Remove all but the ``keep`` most recently built export folders in ``parent`` (hidden staging
    folders of builds under way are left alone); returns the folders removed."""
    with _removal_lock:
        folders = [
            path
            for path in parent.iterdir()
            if path.is_dir() and not path.is_symlink() and not path.name.startswith(".")
        ]
        folders.sort(key=lambda path: path.stat().st_mtime_ns, reverse=True)
        for stale in folders[keep:]:
            shutil.rmtree(stale, ignore_errors=True)
    return folders[keep:]


def still_on_disk(built: dict[str, Any]) -> bool:
    """Whether every file of a built export folder (``build``'s result) is still there: an old
    folder is removed once ``KEPT_EXPORTS`` newer ones have been built."""
    return all(Path(file["path"]).is_file() for file in built["files"].values())


def quantizes_any_layer(plan: Plan, layers: list[LayerInfo]) -> bool:
    """True when the plan gives at least one layer of the model a bit width (an invalid plan counts
    as True: the Build button reports its error)."""
    try:
        configs = plan.resolve([layer.name for layer in layers])
    except CompressError:
        return True
    return any(config.bits is not None for config in configs.values())


def smooths_any_layer(plan: Plan, layers: list[LayerInfo]) -> bool:
    """True when the plan smooths some layer's input (``smooth``): that acts on dynamic int8 exports
    only, so the page starts on dynamic for it (an invalid plan counts as False)."""
    try:
        configs = plan.resolve([layer.name for layer in layers])
    except CompressError:
        return False
    return any(config.smooth is not None for config in configs.values())


def mime_type(name: str) -> str:
    """The download MIME type of an export file."""
    return MIME_TYPES.get(Path(name).suffix, "application/octet-stream")


def follow_until(estimated_s: float) -> float:
    """Until when (``time.monotonic``) the page run that starts a job estimated at ``estimated_s``
    waits for it: ``INLINE_WAIT_S`` from now for a short job, now for a long one."""
    return time.monotonic() + (INLINE_WAIT_S if estimated_s <= INLINE_ESTIMATE_S else 0.0)


def start_benchmark(
    folder: str, threads: int, batch: int | None, runs: int | None, budget_s: float | None
) -> BackgroundJob:
    """``bench_folder`` in the background within ``budget_s``; the job's result is ``{"rows", "plan"
    (the first plan, ``BenchPlan.to_dict``), "stopped", "seconds", "budget_s"}``. Stopped, the rows
    hold what was measured (``bench_folder``)."""

    def work(report: Report, cancel: threading.Event) -> dict[str, Any]:
        plans: list[BenchPlan] = []
        start = time.monotonic()
        rows = bench_folder(
            folder, threads, batch, runs, progress=report, budget_s=budget_s, cancel=cancel.is_set, on_plan=plans.append
        )
        return {
            "rows": rows,
            "plan": plans[0].to_dict() if plans else None,
            "stopped": cancel.is_set(),
            "seconds": time.monotonic() - start,
            "budget_s": budget_s,
        }

    return BackgroundJob(work)


def bench_estimate(
    cost: dict[str, float],
    samples: int,
    fixed_batch: int | None,
    budget_s: float | None,
    batch: int | None,
    runs: int | None,
    with_int8: bool,
    with_nbits: bool,
) -> BenchPlan:
    """The benchmark's plan before it starts, from ``forward_cost`` of the original (every candidate
    taken to cost as much; the benchmark times each before it settles its plan)."""
    names = [
        "original_fp32",
        "compressed_fp32",
        *(["compressed_int8"] if with_int8 else []),
        *(["compressed_nbits"] if with_nbits else []),
    ]
    probe_batch = fixed_batch or 1
    run_s = {name: cost["forward_s"] * probe_batch for name in names}
    session_s = {name: cost["open_s"] for name in names}
    costs = costs_before_quantization(
        run_s,
        session_s,
        samples,
        int(cost["onnx_bytes"]),
        probe_batch=probe_batch,
        fixed_batch=fixed_batch,
        calibration_samples=ORT_DEFAULT_SAMPLES,
        quantized=ORT_DEFAULT,
    )
    opening = sum(session_s.values()) + sum(run_s.values())
    return plan_bench(costs, budget_s, spent_s=opening, batch=batch, runs=runs)


def latency_table(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The side-by-side table: one row per candidate, the columns a reader compares (a candidate
    whose analysis a stop cut short has its latency only)."""
    return [
        {
            "candidate": row["name"],
            "median ms": row["median_ms"],
            "p10 ms": row["p10_ms"],
            "p90 ms": row["p90_ms"],
            "speed-up": row["speedup"],
            row["quality"]: row["accuracy"],
            "bytes": row["bytes"],
            "zipped bytes": row["zip_bytes"],
            "integer nodes": row["integer_nodes"],
            "float nodes": row["float_nodes"],
        }
        for row in rows
    ]


def bench_caption(result: dict[str, Any]) -> str:
    """How the benchmark ran: batch, runs, threads, its time against the estimate and the budget,
    and whether it was stopped."""
    rows, plan = result["rows"], result.get("plan")
    budget = result.get("budget_s")
    first = rows[0]
    text = (
        f"Batch {first['batch']}, {first['runs']} interleaved timed run{'s' if first['runs'] != 1 else ''} per "
        f"candidate after {first['warmup']} warm-up, {first['runtime']['threads']} threads; "
        f"measured in {format_seconds(result['seconds'])}"
    )
    if plan is not None:
        text += f" (estimated {format_seconds(plan['estimated_s'])}"
        text += f", budget {format_seconds(budget)})" if budget is not None else ", no budget)"
    if plan is not None and plan.get("batch_note"):
        text += f". Batch: {plan['batch_note']}"
    if result["stopped"]:
        unfinished = [row["name"] for row in rows if not row["complete"]]
        text += ". Stopped early: the runs timed so far are kept" + (
            f"; {', '.join(unfinished)} without quality, op census or profile" if unfinished else ""
        )
    return text + "."


def layer_times(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The slowest nodes of each candidate (ORT's profiler), with the layer each belongs to."""
    return [{"candidate": row["name"], **layer} for row in rows for layer in row["top_layers"]]


def layer_speedups(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per layer, compressed fp32 against int8 (``export_bench.layer_comparison``), for a table;
    empty unless both files were analysed."""
    return [
        {"layer": row["layer"], "fp32 ms": row["fp32_ms"], "int8 ms": row["int8_ms"], "speed-up": row["speedup"]}
        for row in layer_comparison([row for row in rows if row.get("complete", True)])
    ]


def unassigned_caption(rows: list[dict[str, Any]]) -> str:
    """How much profiled time belongs to no layer in each file: int8 adds quantize and layout nodes."""
    unassigned = {row["name"]: row["layer_ms"].get(UNASSIGNED, 0.0) for row in rows}
    return (
        "Layers that run in integer kernels in the int8 file, timed by ORT's profiler (each file on its own). "
        f"Nodes of no layer (quantize / dequantize, layout transposes, pooling, adds) take "
        f"{unassigned['compressed_fp32']:.3f} ms in fp32 and {unassigned['compressed_int8']:.3f} ms in int8."
    )


def this_cpu() -> tuple[str, list[str]]:
    """The "This CPU" panel: a title (model, cores, int8 features) and what the features imply for
    int8 in ONNX Runtime (``cpu.int8_notes``), since latency and int8 accuracy hold for this CPU only."""
    info = cpu_features()
    return f"This CPU: {info.summary()}", int8_notes(info)


# Honest labels ------------------------------------------------------------------------------------


def planned_bits(plan: Plan, layers: list[LayerInfo]) -> dict[str, int | None]:
    """Each layer's planned bit width (None: float); every layer float for a plan the model cannot
    take (the Build button reports its error)."""
    try:
        configs = plan.resolve([layer.name for layer in layers])
    except CompressError:
        return {layer.name: None for layer in layers}
    return {layer.name: (configs[layer.name].bits if layer.name in configs else None) for layer in layers}


def storage_of(bits: int | None, dynamic: bool) -> str:
    """How the int8 file stores a layer's weights (``ort.int8``): excluded when float; dynamic
    quantization stores every weight in int8; static QDQ stores 4 bits as QInt4, 16 as QInt16 and
    every other width as QInt8."""
    if bits is None:
        return "float (left out)"
    if dynamic:
        return "QInt8 (dynamic)"
    return STORAGE_BITS.get(bits, "QInt8")


def bit_width_rows(
    plan: Plan, layers: list[LayerInfo], dynamic: bool, census: dict[str, Any] | None = None
) -> list[dict[str, Any]]:
    """One row per layer: its planned bits, how the int8 file stores it, and whether ONNX Runtime
    runs it in an integer kernel on this CPU: measured when ``census`` (the built int8 file's) is
    given, else foreseen from the storage (``NO_INTEGER_KERNEL``)."""
    bits = planned_bits(plan, layers)
    float_layers = set(census["float_layers"]) if census is not None else set()
    rows = []
    for layer in layers:
        planned = bits[layer.name]
        stored = storage_of(planned, dynamic)
        if planned is None:
            runs = FLOAT_BY_PLAN
        elif census is not None and layer.name in census.get("kept_float", []):
            runs = FLOAT_BY_PATH
        elif census is not None:
            runs = f"{FLOAT_KERNEL if layer.name in float_layers else INTEGER_KERNEL} (measured)"
        else:
            runs = FLOAT_KERNEL if stored in NO_INTEGER_KERNEL else INTEGER_KERNEL
        rows.append(
            {
                "layer": layer.name,
                "type": layer.type,
                "planned bits": "float" if planned is None else str(planned),
                "int8 file stores it as": stored,
                "ONNX Runtime runs it in": runs,
            }
        )
    return rows


def foreseen_float_layers(plan: Plan, layers: list[LayerInfo], dynamic: bool) -> dict[str, list[str]]:
    """Layers planned with bits that the int8 file will store in a type ONNX Runtime has no integer
    kernel for (``NO_INTEGER_KERNEL``), by storage type: they will run in float."""
    found: dict[str, list[str]] = {}
    for name, bits in planned_bits(plan, layers).items():
        stored = storage_of(bits, dynamic)
        if bits is not None and stored in NO_INTEGER_KERNEL:
            found.setdefault(stored, []).append(name)
    return found


def measured_float_layers(built: dict[str, Any]) -> list[str]:
    """Layers the built int8 file quantizes (planned with bits) that ONNX Runtime still runs in float
    (its census); empty without an int8 file."""
    census, quantized = built.get("census"), built["metrics"].get("int8")
    if census is None or quantized is None:
        return []
    planned = {row["layer"] for row in quantized["layers"] if row["bits"] is not None and row["storage"] != "float"}
    return [layer for layer in census["float_layers"] if layer in planned]


def foreseen_warning(found: dict[str, list[str]], planned: int) -> str:
    """The warning before the build: which planned layers will not run in integer kernels, and why."""
    count = sum(len(names) for names in found.values())
    reasons = "; ".join(NO_INTEGER_KERNEL[storage] for storage in found)
    return (
        f"{count} of the {planned} layers planned with bits would not run in integer kernels on this CPU: "
        f"{_names(sum(found.values(), []))}. {reasons[0].upper()}{reasons[1:]}: it dequantizes those weights to "
        "float and runs the float kernel. The int8 file is smaller, but no faster than fp32 there. "
        "The 8-bit path (QInt8) runs in integer kernels."
    )


def measured_warning(float_layers: list[str], census: dict[str, Any], speedup: float | None = None) -> str:
    """The warning from a census (the built file's, or the benchmark's): how many compute nodes run
    in integer kernels, and which planned layers run in float."""
    integer, total = census["integer_nodes"], census["integer_nodes"] + census["float_nodes"]
    text = (
        f"In model_int8.onnx ONNX Runtime runs {integer} of {total} compute nodes in integer kernels on this CPU; "
        f"{len(float_layers)} layer{'s' if len(float_layers) != 1 else ''} planned with bits run in float: "
        f"{_names(float_layers)}"
    )
    if speedup is not None:
        text += f". Measured: compressed_int8 is {speedup:.2f}x as fast as original_fp32"
    return text + ". Their weights are stored small but dequantized to float for every run."


def bench_float_layers(
    result: dict[str, Any], built: dict[str, Any]
) -> tuple[list[str], dict[str, Any] | None, float | None]:
    """From the benchmark's compressed_int8 row (when analysed): the planned layers it ran in float,
    its census and its speed-up."""
    row = next((row for row in result["rows"] if row["name"] == "compressed_int8" and row["complete"]), None)
    quantized = built["metrics"].get("int8")
    if row is None or quantized is None:
        return [], None, None
    planned = {entry["layer"] for entry in quantized["layers"] if entry["bits"] is not None}
    census = {"integer_nodes": row["integer_nodes"], "float_nodes": row["float_nodes"]}
    return [layer for layer in row["float_layers"] if layer in planned], census, row["speedup"]


def _names(names: list[str], limit: int = 8) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def cpu_int8_note() -> str:
    """The first of ``int8_notes`` for this CPU: what its features mean for int8 speed."""
    return int8_notes(cpu_features())[0]
