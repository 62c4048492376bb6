"""Sensitivity and suggestion benchmark: sweep wall times, activation-cache speed-up, 1/6-size plans,
and sweeps on real ONNX models (ddddocr's detector and OCR).

Run from the repository root::

    python benchmarks/sensitivity.py [--repeats 3] [--threads N]
    python benchmarks/sensitivity.py --ray-only     # only the scaling part, the rest of the results kept
    python benchmarks/sensitivity.py --onnx-only    # only the ONNX part, the rest of the results kept

Writes ``benchmarks/results/sensitivity.md`` and ``.json``. Every sweep runs without the disk cache;
times are medians over ``--repeats`` runs (the machine is shared, so they are noisy).

The ONNX part (skipped when ddddocr 1.6.1 is not installed: ``pip install --no-deps ddddocr==1.6.1``)
runs on ``common_det.onnx`` (30 generated 416x416 images) and
``common.onnx`` (30 rendered strings, width 160): one forward pass over the samples in the model's own
session (the median of three before the sweep, one after each swept layer's cells and three after the
sweep, so that a load that drifts weighs on forward passes and cells alike); the mean time of a sweep
cell (bits 8 and 4, prune 0.5 on every n-th layer; one ONNX Runtime session for the sweep, the cell's
weight fed in; from the sweep's progress callbacks, leaving out the forward passes timed there and the
set-up: inventory, the sweep's session, the check that its batch can be freed, the reference pass and
the first cell); a cell through ``apply_plan`` (a new session per cell, as sweeps did before); and
``suggest_plan`` with its default kinds (bits and pruning) at a size target, with the cells it
measured; the load average before and after each model.

The scaling part (skipped without Ray: ``pip install -e ".[ray]"``) runs one sweep (``digits_resnet``,
bits 4 and 2 on its 16 layers: 32 cells of one to two seconds each on one core) on a local Ray cluster of
1, 2, 2 and 1 CPUs in turn (``ray.init(num_cpus=N)``, one thread per worker), and reports the wall times,
the speed-up (mean times), the time to the first cell (workers start, read the model from the object
store, run the reference pass), the per-task overhead (in the 1-worker runs, the time between two cells
beyond a cell's own time in this process on one thread, measured just before; a cell task's round trip
beyond the cell's time inside the worker; and the round trip of an empty task), the object store's put and a
worker's get of 100 MB of torch tensors, and the time of one sample's forward pass on one thread of a
ResNet-50-sized CNN (224x224) and a BERT-base-sized encoder (128 tokens), built here with random
weights, from which ``docs/scaling.md`` estimates full sweeps. The machine's load average
(``os.getloadavg``) is recorded beside every figure: the machine may be shared.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from compress_core import load_model  # noqa: E402
from compress_core.analysis.cells import CellContext, evaluate_cell  # noqa: E402
from compress_core.analysis.metrics import quality_metric  # noqa: E402
from compress_core.analysis.runners import Payload, RayRunner, SweepJob, worker_context  # noqa: E402
from compress_core.analysis.sensitivity import run_sensitivity  # noqa: E402
from compress_core.analysis.suggest import suggest_plan, uniform_plan  # noqa: E402
from compress_core.analysis.sweep import Progress, Sweep, config_for  # noqa: E402
from compress_core.analysis.sweep_cache import model_key  # noqa: E402
from compress_core.models.handle import RUN_BATCH, EvalData, ModelHandle  # noqa: E402
from compress_core.models.inputs import Inputs, generated_inputs  # noqa: E402
from compress_core.models.inventory import layer_inventory  # noqa: E402
from compress_core.ort.runtime import runtime_line, runtime_record  # noqa: E402
from compress_core.plan import Plan  # noqa: E402
from compress_core.transform.apply import apply_plan  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
SIZE_TARGET = 1 / 6
SWEEPS = {
    "digits_cnn": (Sweep(kinds=("bits", "prune")), 10.0),
    "digits_resnet": (Sweep(kinds=("bits", "prune")), 60.0),
    "minilm": (Sweep(kinds=("bits",)), 120.0),
}


ONNX_SAMPLES = 30
ONNX_CELL_SWEEP = Sweep(bits=(8, 4), prune=(0.5,), kinds=("bits", "prune"))
ONNX_MODELS = {
    # file: (inputs for load_model, every n-th layer swept for the per-cell time, suggest's size target).
    # common.onnx keeps 31% of its weights outside Conv / Gemm / MatMul layers (its recurrent part), so
    # 1/6 of its size is out of reach.
    "common_det.onnx": ({}, 12, SIZE_TARGET),
    "common.onnx": ({"input1": (1, 64, 160)}, 2, 0.4),
}
APPLY_PLAN_CELLS = 3
FORWARD_RUNS = 3
CELL_TARGET = 1.5


def timed_sweep(handle, sweep: Sweep, repeats: int, staged: bool = True) -> tuple[float, object]:
    """Median wall time (s) of ``repeats`` uncached sweeps, and the last result."""
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        result = run_sensitivity(handle, sweep, cache=False, staged=staged)
        times.append(time.perf_counter() - started)
    return statistics.median(times), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's choice)")
    parser.add_argument("--ray-only", action="store_true", help="only the scaling part; keep the other results")
    parser.add_argument("--onnx-only", action="store_true", help="only the ONNX part; keep the other results")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.ray_only or args.onnx_only:
        report = json.loads((RESULTS / "sensitivity.json").read_text())
        if args.ray_only:
            report["scaling"] = scaling_report()
        else:
            report["onnx"] = onnx_report()
        write(report)
        return
    started = time.perf_counter()
    report = {
        "runtime": runtime_record(torch.get_num_threads(), threads_of="torch"),
        "machine": {"cpus": torch.get_num_threads(), "python": platform.python_version(), "torch": torch.__version__},
        "sweeps": {},
        "suggestions": {},
    }
    handles = {}
    for name, (sweep, limit) in SWEEPS.items():
        handles[name] = handle = load_model(name)
        seconds, result = timed_sweep(handle, sweep, args.repeats if name == "digits_cnn" else 1)
        report["sweeps"][name] = {
            "kinds": list(sweep.kinds),
            "layers": len({row.layer for row in result.rows}),
            "cells": len(result.rows),
            "seconds": round(seconds, 2),
            "limit_seconds": limit,
            "strategy": result.strategy,
            "most_sensitive_to_2_bits": result.ranking("bits")[:3] if 2 in sweep.bits else None,
        }
        print(name, report["sweeps"][name], flush=True)
    bits_only = Sweep(kinds=("bits",))
    staged, _ = timed_sweep(handles["digits_resnet"], bits_only, 1)
    full, _ = timed_sweep(handles["digits_resnet"], bits_only, 1, staged=False)
    report["activation_cache"] = {
        "model": "digits_resnet",
        "sweep": "bits",
        "staged_seconds": round(staged, 2),
        "full_pass_seconds": round(full, 2),
        "speedup": round(full / staged, 2),
    }
    print(report["activation_cache"], flush=True)
    for name in ("digits_cnn", "digits_resnet"):
        handle = handles[name]
        table = run_sensitivity(handle, SWEEPS[name][0], cache=False)
        suggestion = suggest_plan(handle, table, target_size=SIZE_TARGET)
        plan, uniform = uniform_plan(handle, SIZE_TARGET)
        report["suggestions"][name] = {
            "target_size": SIZE_TARGET,
            "suggested": suggestion.metrics,
            "met": suggestion.met,
            "plan": suggestion.plan.to_dict()["layers"],
            "uniform_bits": plan.default.bits,
            "uniform": uniform,
        }
        print(name, report["suggestions"][name], flush=True)
    report["onnx"] = onnx_report()
    report["total_seconds"] = round(time.perf_counter() - started, 1)
    report["scaling"] = scaling_report()
    write(report)


def write(report: dict) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "sensitivity.json").write_text(json.dumps(report, indent=2))
    (RESULTS / "sensitivity.md").write_text(markdown(report))


SCALING_MODEL = "digits_resnet"
SCALING_SWEEP = Sweep(bits=(4, 2), kinds=("bits",))
SCALING_ORDER = (1, 2, 2, 1)
OVERHEAD_CELLS = 6
"""Worker counts in turn (ABBA), so that a load that drifts during the run weighs on both alike."""
EMPTY_TASKS = 50
TRANSFER_MB = 100


def load() -> list[float]:
    return [round(value, 2) for value in os.getloadavg()]


def scaling_report() -> dict | None:
    """1 vs 2 local Ray workers on one sweep, the per-task overhead and the object store (see the docstring)."""
    if importlib.util.find_spec("ray") is None:
        print("ray is not installed: scaling part skipped", flush=True)
        return None
    import ray

    handle = load_model(SCALING_MODEL)
    layers = layer_inventory(handle)
    section: dict = {"model": SCALING_MODEL, "sweep": SCALING_SWEEP.to_dict(), "ray": ray.__version__, "runs": []}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    context = CellContext(handle, layers, layers, staged=False, threads=1)
    for workers in SCALING_ORDER:
        torch.set_num_threads(1)
        own, own_load = own_cell_seconds(context), load()
        torch.set_num_threads(threads)
        before = load()
        init_started = time.perf_counter()
        ray.init(address="local", num_cpus=workers, include_dashboard=False, log_to_driver=False)
        init_seconds = time.perf_counter() - init_started
        stamps: list[float] = []
        started = time.perf_counter()
        result = run_sensitivity(
            handle,
            SCALING_SWEEP,
            cache=False,
            runner=RayRunner(),
            progress=lambda _, stamps=stamps: stamps.append(time.perf_counter()),
        )
        seconds = time.perf_counter() - started
        steady = (stamps[-1] - stamps[0]) / (len(stamps) - 1)
        run = {
            "workers": workers,
            "cells": result.evaluations,
            "seconds": round(seconds, 2),
            "first_cell_seconds": round(stamps[0] - started, 2),
            "steady_per_cell_seconds": round(steady, 3),
            "own_cell_seconds": round(own, 3),
            "own_cell_load": own_load,
            "ray_init_seconds": round(init_seconds, 2),
            "failed": len(result.failed),
            "load_before": before,
            "load_after": load(),
        }
        if workers == 1:  # cells one after another: the time between two beyond a cell's own
            run["overhead_per_cell_seconds"] = round(steady - own, 3)
            run["task_overhead_ms"] = task_overhead_ms(ray, handle, layers)
        elif "empty_task_round_trip_ms" not in section:
            section.update(overheads(ray))
        section["runs"].append(run)
        print(f"ray, {workers} worker(s):", run, flush=True)
        ray.shutdown()
    # last: after a large model has run in this process, its later small cells run faster (0.88 s against
    # 1.5 s once), which would make the in-process cell time a poor reference for the workers'
    torch.set_num_threads(1)
    section["sample_forward_seconds_one_thread"] = {name: sample_forward(name) for name in ("resnet50", "bert_base")}
    torch.set_num_threads(threads)
    mean = {
        workers: statistics.mean(run["seconds"] for run in section["runs"] if run["workers"] == workers)
        for workers in (1, 2)
    }
    section["speedup"] = round(mean[1] / mean[2], 2)
    print("scaling:", {key: value for key, value in section.items() if key != "runs"}, flush=True)
    return section


def task_overhead_ms(ray, handle: ModelHandle, layers: list) -> float:
    """Median of a cell task's round trip minus the cell's own time inside the worker, over
    ``OVERHEAD_CELLS`` cells run one at a time: what Ray adds to a cell (submit, schedule, return)."""
    job = SweepJob(handle, layers, layers, SCALING_SWEEP, RUN_BATCH, False, f"overhead-{model_key(handle)}")
    stored = [ray.put(Payload.of(job, 1))]
    timed = ray.remote(_timed_cell).options(num_cpus=1)
    cells = [(layer.name, "bits", 4) for layer in layers[:OVERHEAD_CELLS]]
    ray.get(timed.remote(job.key, stored, cells[0]))  # the worker reads the model and runs the reference pass
    extra = []
    for cell in cells:
        trip_started = time.perf_counter()
        inside = ray.get(timed.remote(job.key, stored, cell))
        extra.append(time.perf_counter() - trip_started - inside)
    return round(1000 * statistics.median(extra), 2)


def _timed_cell(key: str, stored: list, cell: tuple) -> float:
    import ray

    context = worker_context(key, lambda: ray.get(stored[0]))
    started = time.perf_counter()
    evaluate_cell(context, cell, SCALING_SWEEP)
    return time.perf_counter() - started


def own_cell_seconds(context: CellContext) -> float:
    """Median seconds of 4 cells of the scaling sweep in this process, on the thread count set."""
    layers = context.layers
    own = []
    for layer in layers[:: max(len(layers) // 4, 1)][:4]:
        cell_started = time.perf_counter()
        evaluate_cell(context, (layer.name, "bits", 4), SCALING_SWEEP)
        own.append(time.perf_counter() - cell_started)
    return statistics.median(own)


def overheads(ray) -> dict:
    """Round trip of an empty task, and the object store's put / a worker's get of ``TRANSFER_MB`` of tensors."""
    empty = ray.remote(num_cpus=1)(lambda value: value)
    ray.get(empty.remote(0))
    trips = []
    for index in range(EMPTY_TASKS):
        trip_started = time.perf_counter()
        ray.get(empty.remote(index))
        trips.append(time.perf_counter() - trip_started)
    tensors = {f"w{index}": torch.randn(TRANSFER_MB * 2**20 // 4 // 10) for index in range(10)}
    put_started = time.perf_counter()
    stored = ray.put(tensors)
    put_seconds = time.perf_counter() - put_started
    reader = ray.remote(num_cpus=1)(_timed_get)
    return {
        "empty_task_round_trip_ms": round(1000 * statistics.median(trips), 2),
        "transfer_mb": TRANSFER_MB,
        "put_seconds": round(put_seconds, 3),
        "worker_get_seconds": round(ray.get(reader.remote([stored])), 3),
        "overhead_load": load(),
    }


def _timed_get(stored: list) -> float:
    import ray

    started = time.perf_counter()
    ray.get(stored[0])
    return time.perf_counter() - started


def sample_forward(name: str, batch: int = 8) -> float:
    """Seconds of one sample's forward pass on one thread: a ResNet-50-sized CNN at 224x224, or a
    BERT-base-sized encoder over 128 tokens (random weights: the time does not depend on them)."""
    if name == "resnet50":
        model, inputs = resnet50_sized(), torch.randn(batch, 3, 224, 224)
    else:
        layer = torch.nn.TransformerEncoderLayer(768, 12, 3072, batch_first=True)
        model, inputs = torch.nn.TransformerEncoder(layer, 12, enable_nested_tensor=False), torch.randn(batch, 128, 768)
    model.eval()
    with torch.inference_mode():
        model(inputs)
        times = []
        for _ in range(3):
            forward_started = time.perf_counter()
            model(inputs)
            times.append(time.perf_counter() - forward_started)
    return round(statistics.median(times) / batch, 4)


def resnet50_sized() -> torch.nn.Module:
    """ResNet-50's layers (bottleneck blocks 3, 4, 6, 3; 53 convolutions and a 1000-way head), random weights."""
    nn = torch.nn

    class Bottleneck(nn.Module):
        def __init__(self, inputs: int, width: int, stride: int) -> None:
            super().__init__()
            outputs = 4 * width
            self.body = nn.Sequential(
                nn.Conv2d(inputs, width, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
                nn.Conv2d(width, width, 3, stride, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
                nn.Conv2d(width, outputs, 1, bias=False), nn.BatchNorm2d(outputs),
            )  # fmt: skip
            self.skip = (
                nn.Sequential(nn.Conv2d(inputs, outputs, 1, stride, bias=False), nn.BatchNorm2d(outputs))
                if stride != 1 or inputs != outputs
                else nn.Identity()
            )

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.relu(self.body(x) + self.skip(x))

    blocks, inputs = [], 64
    for width, count, stride in ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)):
        for index in range(count):
            blocks.append(Bottleneck(inputs, width, stride if index == 0 else 1))
            inputs = 4 * width
    return nn.Sequential(
        nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(3, 2, 1),
        *blocks, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2048, 1000),
    )  # fmt: skip


def onnx_report() -> dict | None:
    """Forward pass, sweep cell and suggest times on ddddocr's ONNX files (None without ddddocr)."""
    spec = importlib.util.find_spec("ddddocr")
    if spec is None or not spec.submodule_search_locations:
        print("ddddocr is not installed: ONNX part skipped", flush=True)
        return None
    folder = Path(list(spec.submodule_search_locations)[0])
    section = {"runtime": runtime_record(None), "samples": ONNX_SAMPLES, "cell_target": CELL_TARGET, "models": {}}
    for name, (inputs, every, target) in ONNX_MODELS.items():
        handle = load_model(folder / name, inputs=inputs)
        if name == "common.onnx":
            data = Inputs.single(rendered_text(ONNX_SAMPLES), "input1")
            handle = handle.replace(data=EvalData(data, None, f"{ONNX_SAMPLES} rendered strings"))
        else:
            data = generated_inputs(handle.input_specs, ONNX_SAMPLES)  # load_model's count depends on the CPU
            handle = handle.replace(data=EvalData(data, None, f"{ONNX_SAMPLES} generated images"))
        section["models"][name] = entry = onnx_entry(handle, every, target)
        print(name, entry, flush=True)
    return section


def onnx_entry(handle: ModelHandle, every: int, target: float) -> dict:
    """The figures of one ONNX model (see the module's docstring)."""
    load_before = load()
    layers = layer_inventory(handle)
    timed_forward(handle)  # the model's own session, built before anything is timed
    forwards = [timed_forward(handle) for _ in range(FORWARD_RUNS)]
    spans: list[tuple[float, float]] = []  # (a cell ended, the next one may start)
    per_layer = len(ONNX_CELL_SWEEP.cells())

    def progress(step: Progress) -> None:
        ended = time.perf_counter()
        if step.cell % per_layer == 0:  # a layer's cells are done
            forwards.append(timed_forward(handle))
        spans.append((ended, time.perf_counter()))

    started = time.perf_counter()
    result = run_sensitivity(
        handle,
        ONNX_CELL_SWEEP,
        cache=False,
        layers=[layer.name for layer in layers[every - 1 :: every]],
        progress=progress,
    )
    forwards += [timed_forward(handle) for _ in range(FORWARD_RUNS)]
    cells = [later[0] - earlier[1] for earlier, later in zip(spans, spans[1:])]
    setup = spans[0][0] - started  # inventory, session, reference pass and the first cell
    forward, per_cell = statistics.median(forwards), statistics.mean(cells)
    applied = []
    reference = handle.run(handle.data.inputs)
    for layer in layers[:: max(len(layers) // APPLY_PLAN_CELLS, 1)][:APPLY_PLAN_CELLS]:
        cell_started = time.perf_counter()
        plan = Plan(layers={layer.name: config_for("bits", 4, ONNX_CELL_SWEEP)})
        quality_metric(handle, reference, apply_plan(handle, plan, layers).run(handle.data.inputs))
        applied.append(time.perf_counter() - cell_started)
    started = time.perf_counter()
    suggestion = suggest_plan(handle, target_size=target, cache=False)
    suggest_seconds = time.perf_counter() - started
    default_cells = len(layers) * len(Sweep(kinds=("bits", "prune")).cells())
    return {
        "layers": len(layers),
        "samples": len(handle.data),
        "task": handle.task,
        "metric": result.metric_name,
        "data": handle.data.origin,
        "forward_seconds": round(forward, 3),
        "forward_runs": [round(value, 3) for value in forwards],
        "sweep": {
            "layers": len({row.layer for row in result.rows}),
            "cells": result.evaluations,
            "strategy": result.strategy,
            "per_cell_seconds": round(per_cell, 3),
            "per_cell_median_seconds": round(statistics.median(cells), 3),
            "per_cell_over_forward": round(per_cell / forward, 2),
            "setup_and_first_cell_seconds": round(setup, 2),
        },
        "apply_plan_per_cell_seconds": round(statistics.mean(applied), 3),
        "load_before": load_before,
        "load_after": load(),
        "suggest": {
            "target_size": target,
            "seconds": round(suggest_seconds, 1),
            "cells_measured": suggestion.evaluations,
            "whole_sweep_cells": default_cells,
            "met": suggestion.met,
            "metrics": suggestion.metrics,
            "notes": suggestion.notes,
            "plan_layers": len(suggestion.plan.layers),
        },
    }


def timed_forward(handle: ModelHandle) -> float:
    """Seconds of one forward pass over the handle's data in its own (already built) session."""
    handle.ort_session()
    started = time.perf_counter()
    handle.run(handle.data.inputs)
    return time.perf_counter() - started


def rendered_text(count: int, width: int = 160, seed: int = 0) -> np.ndarray:
    """``count`` random strings of 4 to 6 letters and digits, dark on white, [N, 1, 64, width] in [0, 1]
    as ddddocr feeds its OCR model."""
    from PIL import Image, ImageDraw, ImageFont

    rng = np.random.default_rng(seed)
    alphabet = "ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnpqrstuvwxyz23456789"
    font = ImageFont.load_default(size=34)
    images = []
    for _ in range(count):
        text = "".join(rng.choice(list(alphabet), size=int(rng.integers(4, 7))))
        image = Image.new("L", (width, 64), 255)
        ImageDraw.Draw(image).text((4, 10), text, fill=0, font=font)
        images.append(np.asarray(image, np.float32)[None] / 255.0)
    return np.stack(images)


def markdown(report: dict) -> str:
    """The report as a short Markdown page."""
    lines = [
        "# Sensitivity benchmark",
        "",
        runtime_line(report["runtime"]),
        "",
        f"`python benchmarks/sensitivity.py`; {report['machine']}; the whole run took {report['total_seconds']:.0f} s",
        "",
        "## Sweeps (no disk cache)",
        "",
        "| model | kinds | layers | cells | seconds | limit | strategy |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, sweep in report["sweeps"].items():
        lines.append(
            f"| {name} | {','.join(sweep['kinds'])} | {sweep['layers']} | {sweep['cells']} | {sweep['seconds']} | {sweep['limit_seconds']} | {sweep['strategy']} |"
        )
    cache = report["activation_cache"]
    lines += [
        "",
        "## Activation cache",
        "",
        f"{cache['model']}, {cache['sweep']} sweep: staged {cache['staged_seconds']} s, full passes {cache['full_pass_seconds']} s, speed-up {cache['speedup']}x.",
        "",
        f"## Suggested plan vs uniform at size <= {SIZE_TARGET:.4f}",
        "",
        "| model | plan | accuracy % | drop | output SQNR dB | size ratio |",
        "|---|---|---|---|---|---|",
    ]
    for name, entry in report["suggestions"].items():
        for label, metrics in (
            ("suggested", entry["suggested"]),
            (f"uniform {entry['uniform_bits']}-bit", entry["uniform"]),
        ):
            lines.append(
                f"| {name} | {label} | {metrics['metric']:.2f} | {metrics['drop']:.2f} | {metrics['output_sqnr_db']:.1f} | {metrics['size_ratio']:.4f} |"
            )
    lines += onnx_markdown(report.get("onnx"))
    lines += scaling_markdown(report.get("scaling"))
    return "\n".join(lines) + "\n"


def scaling_markdown(section: dict | None) -> list[str]:
    """The scaling part of the page."""
    if section is None:
        return ["", "## Scaling on Ray", "", "Skipped: Ray is not installed."]
    sweep = Sweep(**section["sweep"])
    overheads = [run["overhead_per_cell_seconds"] for run in section["runs"] if run["workers"] == 1]
    tasks = [run["task_overhead_ms"] for run in section["runs"] if run["workers"] == 1]
    lines = [
        "",
        "## Scaling: 1 vs 2 local Ray workers",
        "",
        f"`python benchmarks/sensitivity.py --ray-only` (Ray {section['ray']}). {section['model']}, bits "
        f"{', '.join(str(bits) for bits in sweep.bits)} on every layer, one torch thread per worker, runs in the order "
        f"{', '.join(str(run['workers']) for run in section['runs'])} workers (a fresh `ray.init(num_cpus=N)` each). "
        "Own cell: the median of 4 cells of the sweep in this process on one thread, just before the run. The "
        "machine was shared with other work while this ran: the load averages (1, 5, 15 min) are given beside "
        "each figure; the lead re-runs this part on a quiet machine.",
        "",
        "| workers | cells | sweep s | per cell after the first s | first cell s | own cell s | ray.init s | failed | load before | load after |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for run in section["runs"]:
        lines.append(
            f"| {run['workers']} | {run['cells']} | {run['seconds']} | {run['steady_per_cell_seconds']} | "
            f"{run['first_cell_seconds']} | {run['own_cell_seconds']} | {run['ray_init_seconds']} | {run['failed']} | "
            f"{run['load_before']} | {run['load_after']} |"
        )
    lines += [
        "",
        f"Speed-up of 2 workers over 1 (mean sweep times): **{section['speedup']}x** (target >= 1.6x on 2 cores).",
        "",
        "Per-task overhead: a cell task's round trip beyond the cell's own time inside the worker, "
        f"{', '.join(f'{value} ms' for value in tasks)} (median of {OVERHEAD_CELLS} cells, one at a time, in each 1-worker "
        f"run); the time between two cells of the 1-worker sweeps beyond a cell's own time in this process, "
        f"{', '.join(f'{value} s' for value in overheads)} (the load moves it more than Ray: the first cell also waits "
        "for the worker to start, read the model and run the reference pass); an empty task's round trip "
        f"{section['empty_task_round_trip_ms']} ms (median of {EMPTY_TASKS}). Object store, {section['transfer_mb']} MB "
        f"of torch tensors: put {section['put_seconds']} s, a worker's get {section['worker_get_seconds']} s (load "
        f"{section['overhead_load']}).",
        "",
        "One sample's forward pass on one thread (random weights, batch 8): "
        + ", ".join(f"{name} {value} s" for name, value in section["sample_forward_seconds_one_thread"].items())
        + " (ResNet-50-sized CNN at 224x224; BERT-base-sized encoder, 128 tokens).",
    ]
    return lines


def onnx_markdown(section: dict | None) -> list[str]:
    """The ONNX part of the page."""
    if section is None:
        return ["", "## ONNX models", "", "Skipped: ddddocr is not installed."]
    lines = [
        "",
        "## ONNX models: one session per sweep",
        "",
        runtime_line(section["runtime"]),
        "",
        "Forward: one pass over the model's samples in its own session (the median of "
        f"{FORWARD_RUNS} before the sweep, one after each swept layer's cells, {FORWARD_RUNS} after). Per cell: mean "
        "time of a sweep cell (bits 8 and 4, prune 0.5; median in brackets) in the sweep's one session, the cell's weight fed in, its quality measured. Set-up: "
        "inventory, session, the check that the file's static batch can be freed, reference pass and the first cell. "
        "apply_plan: a 4-bit cell through `apply_plan` and a new session, its quality measured, as sweeps did before. "
        "Both files declare a batch of 1, so a forward pass is one call per sample; the sweep's session runs them "
        "all in one call where the graph takes any batch (checked: a batch of 2 gives what two batches of 1 give), "
        f"as the strategy line says. Target: per cell <= {section['cell_target']}x forward. Load: the load "
        "averages (1, 5, 15 min) before and after the model's figures (the machine may be shared).",
        "",
        "| model | layers | task | samples | forward s | per cell s | per cell / forward | within target | set-up s | apply_plan cell s | cells timed | load before | load after |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, entry in section["models"].items():
        sweep = entry["sweep"]
        lines.append(
            f"| {name} | {entry['layers']} | {entry['task']} | {entry['samples']} | "
            f"{entry['forward_seconds']} | "
            f"{sweep['per_cell_seconds']} ({sweep['per_cell_median_seconds']}) | "
            f"{sweep['per_cell_over_forward']}x | {'yes' if sweep['per_cell_over_forward'] <= section['cell_target'] else 'no'} | "
            f"{sweep['setup_and_first_cell_seconds']} | "
            f"{entry['apply_plan_per_cell_seconds']} | {sweep['cells']} on {sweep['layers']} layers | "
            f"{entry.get('load_before', '')} | {entry.get('load_after', '')} |"
        )
    lines += [
        "",
        "Sweep strategy: "
        + "; ".join(f"{name}: {entry['sweep']['strategy']}" for name, entry in section["models"].items())
        + ".",
    ]
    lines += [
        "",
        "`suggest_plan(handle, target_size=...)` with its default kinds (bits, prune), no disk cache "
        "(common.onnx: 0.4, as 31% of its weights are outside compressible layers):",
        "",
        "| model | target size | seconds | cells measured | whole sweep | met | metric | drop | size ratio |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, entry in section["models"].items():
        suggestion, metrics = entry["suggest"], entry["suggest"]["metrics"]
        lines.append(
            f"| {name} | {suggestion['target_size']:.4f} | {suggestion['seconds']} | {suggestion['cells_measured']} | "
            f"{suggestion['whole_sweep_cells']} | {suggestion['met']} | {entry['metric']} {metrics['metric']:.2f} % | "
            f"{metrics['drop']:.2f} | {metrics['size_ratio']:.4f} |"
        )
    return lines


if __name__ == "__main__":
    main()
