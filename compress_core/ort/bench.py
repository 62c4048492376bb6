"""Benchmark an export folder: its ONNX files plus ORT's default int8 of the original, side by side.

Each candidate gets its latency (interleaved runs, ``latency.measure_latency``), its speed-up over
the original fp32 model, its quality on the folder's evaluation data (measured in ONNX Runtime), its
size raw and zipped, and the census of compute nodes that still run in float after ORT's
optimization, with the layers they belong to, the slowest nodes from ORT's profiler and the
profiled time of every layer; ``layer_comparison`` sets the int8 file's layers against the compressed
fp32 file's, to show where int8 costs time instead of saving it. Every row records the CPU it ran
on (int8 speed-ups differ between AVX2-only, VNNI and AMX machines).

The whole benchmark fits a time budget (``budget.DEFAULT_BUDGET_S``, 45 s): after one timed run of
each candidate, ``budget.plan_bench`` picks the batch (a static batch wins) and the runs, and the
warm-up at that batch settles the runs (``budget.runs_that_fit``); a batch or runs the caller gives
are kept. ``cancel`` stops it between runs and steps, keeping what was measured: the timed rounds
so far, and the quality, census and profile of the candidates already analysed.
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import onnx

from compress_core.analysis.metrics import output_fidelity
from compress_core.atomic import atomic_write
from compress_core.errors import CompressError
from compress_core.models.evaldata import load_npz
from compress_core.models.inputs import InputSpec
from compress_core.ort.artifacts import (
    EVAL_DATA,
    FP32_ONNX,
    INT8_ONNX,
    METRICS,
    NBITS_ONNX,
    ORIGINAL_ONNX,
    file_sizes,
    headline,
    run_onnx,
)
from compress_core.ort.budget import (
    DEFAULT_BUDGET_S,
    PLAN_SHARE,
    BenchCosts,
    BenchPlan,
    Step,
    Stopped,
    Tracker,
    costs_before_quantization,
    plan_bench,
    runs_that_fit,
)
from compress_core.ort.int8 import CALIBRATION_BATCH, EvalDataReader, calibration_inputs
from compress_core.ort.latency import measure_latency, open_and_probe
from compress_core.ort.prep import prepare_for_quantization
from compress_core.ort.profiling import NodeTime, op_census, profile_nodes
from compress_core.ort.runtime import runtime_record

ORT_DEFAULT = "ort_default_int8"
ORT_DEFAULT_SAMPLES = 64  # calibration samples of ORT's default quantization (at most the data's)
CANDIDATES = (
    ("original_fp32", ORIGINAL_ONNX),
    ("compressed_fp32", FP32_ONNX),
    ("compressed_int8", INT8_ONNX),
    ("compressed_nbits", NBITS_ONNX),
)
TOP_LAYERS = 5
UNASSIGNED = "(no layer)"
STEPS = (
    Step("open", "opening the files and timing one run of each", 0.0),
    Step("quantize", "ONNX Runtime's default quantization of the original", 0.0),
    Step("time", "timing the files, interleaved", 0.0),
    Step("analyse", "quality, op census and profile of each file", 0.0),
)


def bench_folder(
    folder: str | Path,
    threads: int = 2,
    batch: int | None = None,
    runs: int | None = None,
    warmup: int | None = None,
    progress: Callable[[float, str], None] | None = None,
    *,
    budget_s: float | None = DEFAULT_BUDGET_S,
    cancel: Callable[[], bool] | None = None,
    on_plan: Callable[[BenchPlan], None] | None = None,
) -> list[dict[str, Any]]:
    """One dict per candidate: ``name``, ``median_ms``, ``p10_ms``, ``p90_ms``, ``speedup`` (over
    the original fp32), ``accuracy`` (the quality figure named by ``quality``), ``bytes``,
    ``zip_bytes``, ``integer_nodes``, ``float_nodes``, ``float_layers``, ``top_layers``,
    ``layer_ms`` (``layer_totals``: profiled ms per run of each layer, and of the nodes of no layer)
    and ``runtime`` (``cpu.runtime_record``: the CPU, ONNX Runtime's version and ``threads``; the
    same for every candidate, so that each row tells what it was measured on); ``batch``, ``runs``
    and ``warmup`` as timed; ``complete`` (its quality, census and profile were measured) and
    ``stopped`` (``cancel`` ended the benchmark early).

    ``batch``, ``runs`` and ``warmup`` left None are chosen to fit ``budget_s`` seconds (None: no
    budget; batch 32, 50 runs); ``on_plan`` receives the plan (``BenchPlan``: batch, runs,
    estimated seconds) once the first runs are timed, before the long steps. ``progress(fraction,
    text)`` tells the step and the time left. When ``cancel()`` turns true the benchmark ends at the
    next run or step: the rows hold the rounds timed so far (no row when none was), and the
    analysis of the candidates finished before (the others' ``complete`` is False and their
    quality, census and profile are None or empty).
    """
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
    layer_nodes = metrics.get("layer_nodes", {})
    runtime = runtime_record(threads)
    plan_bench(BenchCosts({}, {}, 0), budget_s, batch=batch, runs=runs, warmup=warmup)  # bad arguments fail first
    tracker = Tracker(STEPS, progress, cancel)
    probe_batch = fixed_batch or batch or 1  # the batch to be timed when known, else the cheapest
    paths = {name: folder / file for name, file in CANDIDATES if (folder / file).is_file()}
    sessions: dict[str, Any] = {}
    session_s: dict[str, float] = {}
    run_s: dict[str, float] = {}
    rows: list[dict[str, Any]] = []
    stopped = False
    with tempfile.TemporaryDirectory() as scratch, tracker.ticking():
        try:
            tracker.begin("open")
            for name, path in paths.items():
                tracker.check()
                sessions[name], session_s[name], run_s[name] = open_and_probe(path, inputs, probe_batch, threads)
            calibration_samples = min(ORT_DEFAULT_SAMPLES, len(inputs))
            original = folder / ORIGINAL_ONNX
            costs = costs_before_quantization(
                run_s,
                session_s,
                len(inputs),
                original.stat().st_size,
                probe_batch=probe_batch,
                fixed_batch=fixed_batch,
                calibration_samples=calibration_samples,
                quantized=ORT_DEFAULT,
            )
            plan = plan_bench(costs, budget_s, spent_s=tracker.elapsed_s, batch=batch, runs=runs, warmup=warmup)
            if on_plan is not None:
                on_plan(plan)
            _estimate(tracker, plan, costs, costs.round_s(plan.batch))
            tracker.begin("quantize")
            paths[ORT_DEFAULT] = _quantize_ort_default(
                original, Path(scratch) / f"{ORT_DEFAULT}.onnx", inputs, calibration_samples, fixed_batch, tracker
            )
            tracker.check()
            sessions[ORT_DEFAULT], session_s[ORT_DEFAULT], run_s[ORT_DEFAULT] = open_and_probe(
                paths[ORT_DEFAULT], inputs, probe_batch, threads
            )
            costs = BenchCosts(run_s, session_s, len(inputs), probe_batch, fixed_batch)
            plan = plan_bench(  # the batch announced stays; the measured ORT default settles the rest
                costs, budget_s, spent_s=tracker.elapsed_s, batch=plan.batch, runs=runs, warmup=warmup
            )
            _estimate(tracker, plan, costs, costs.round_s(plan.batch))
            rows = _timed_rows(paths, inputs, threads, plan, costs, sessions, tracker, runtime)
            tracker.begin("analyse")
            reference = None
            for index, row in enumerate(rows):
                tracker.check()
                name = row["name"]
                tracker.tick(index, len(rows), f"quality, op census and profile of {name}")
                outputs = run_onnx(
                    paths[name], inputs, fixed_batch, output, axis, session=sessions[name], check=tracker.check
                )
                reference = outputs if reference is None else reference  # original_fp32 comes first
                fidelity = output_fidelity(reference, outputs, labels, metrics["task"], metrics.get("ctc_blank"))
                key, value = headline(fidelity, metrics["task"])
                tracker.check()
                census = op_census(paths[name], layer_nodes)
                tracker.check()
                profile = profile_nodes(paths[name], inputs, layer_nodes, threads, plan.batch, plan.profile_runs)
                row.update(
                    {
                        "accuracy": value,
                        "quality": key,
                        "integer_nodes": sum(census.integer.values()),
                        "float_nodes": census.float_nodes,
                        "float_layers": census.float_layers,
                        "top_layers": [
                            {"node": t.node, "op_type": t.op_type, "layer": t.layer, "ms": t.ms, "share": t.share}
                            for t in profile[:TOP_LAYERS]
                        ],
                        "layer_ms": layer_totals(profile),
                        "complete": True,
                    }
                )
        except Stopped:
            stopped = True
    likely = {"accuracy": None if labels is None else 0.0, "agreement": 0.0, "cosine": 0.0}  # no file analysed
    measured = next((row["quality"] for row in rows if row["complete"]), headline(likely, metrics["task"])[0])
    for row in rows:
        row["stopped"] = stopped
        if not row["complete"]:
            row["quality"] = measured
    tracker.finish("stopped" if stopped else "measured")
    return rows


class _StoppingReader:
    """A calibration data reader that raises ``Stopped`` once the benchmark is to stop: ONNX
    Runtime's calibration asks for one batch at a time, so a stop lands within one batch's run."""

    def __init__(self, reader: EvalDataReader, tracker: Tracker) -> None:
        self.reader, self.tracker = reader, tracker

    def get_next(self) -> dict[str, Any] | None:
        self.tracker.check()
        return self.reader.get_next()

    def rewind(self) -> None:
        self.reader.rewind()

    def __len__(self) -> int:
        return len(self.reader)


def _quantize_ort_default(
    original: Path, path: Path, inputs: Any, samples: int, fixed_batch: int | None, tracker: Tracker
) -> Path:
    """``int8.quantize_ort_default`` (ORT's ``quantize_static`` with its defaults, calibrated on
    ``samples`` samples in batches of the static batch or ``CALIBRATION_BATCH``), stopping between
    calibration batches (``Stopped``) when ``tracker`` says so."""
    from onnxruntime.quantization import quantize_static

    batch = fixed_batch or CALIBRATION_BATCH
    model, _ = prepare_for_quantization(onnx.load(str(original)))
    reader = _StoppingReader(EvalDataReader(calibration_inputs(inputs, samples), batch, batch), tracker)
    return atomic_write(path, lambda temporary: quantize_static(model, temporary, reader))


def _estimate(tracker: Tracker, plan: BenchPlan, costs: BenchCosts, round_s: float) -> None:
    """The tracker's estimates of the quantization (when still to do), the timing and the analysis."""
    if costs.pending_s:
        tracker.estimate("quantize", costs.pending_s)
    tracker.estimate("time", (plan.warmup + plan.runs) * round_s)
    tracker.estimate("analyse", costs.analysis_s(plan.profile_runs, round_s))


def _timed_rows(
    paths: dict[str, Path],
    inputs: Any,
    threads: int,
    plan: BenchPlan,
    costs: BenchCosts,
    sessions: dict[str, Any],
    tracker: Tracker,
    runtime: dict[str, Any],
) -> list[dict[str, Any]]:
    """The interleaved timing, as one row per candidate with its latency (analysis still to come)."""
    tracker.begin("time", f"timing the files interleaved at batch {plan.batch}")
    deadline: list[float] = []

    def choose_runs(measured: dict[str, float]) -> int:
        chosen = runs_that_fit(plan, costs, measured, tracker.elapsed_s)
        round_s = sum(measured.values())
        _estimate(tracker, BenchPlan(**{**vars(plan), "runs": chosen}), costs, round_s)
        if plan.budget_s is not None and plan.auto_runs:
            analysis = costs.analysis_s(plan.profile_runs, round_s)
            deadline.append(tracker.started + plan.budget_s * PLAN_SHARE - analysis)
        return chosen

    def progress(done: int, total: int) -> None:
        tracker.tick(done, total, f"timing the files interleaved at batch {plan.batch}: run {done} of {total}")

    timings = measure_latency(
        paths,
        inputs,
        threads,
        plan.batch,
        plan.warmup,
        plan.runs,
        baseline="original_fp32",
        progress=progress,
        sessions=sessions,
        cancel=tracker.stopped,
        choose_runs=choose_runs if plan.auto_runs else None,
        time_up=lambda: bool(deadline) and time.monotonic() >= deadline[0],
    )
    return [
        {
            "name": timing.name,
            "median_ms": timing.median_ms,
            "p10_ms": timing.p10_ms,
            "p90_ms": timing.p90_ms,
            "speedup": timing.speedup,
            "throughput": timing.throughput,
            "accuracy": None,
            "quality": None,
            **file_sizes(paths[timing.name]),
            "integer_nodes": None,
            "float_nodes": None,
            "float_layers": [],
            "top_layers": [],
            "layer_ms": {},
            "runtime": runtime,
            "batch": timing.batch,
            "runs": timing.runs,
            "warmup": plan.warmup,
            "complete": False,
        }
        for timing in timings
    ]


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
