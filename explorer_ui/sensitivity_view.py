"""The Sensitivity page's data: where the sweep runs, start it as a background job, and shape its table for charts."""

from __future__ import annotations

import os
import threading
from typing import Any

from compress_core import ModelHandle
from compress_core.analysis.runners import CellRunner, InProcessRunner, PoolRunner, RayRunner
from compress_core.analysis.sensitivity import run_sensitivity
from compress_core.analysis.sweep import Progress, SensitivityResult, Sweep

from .budget import Deadline
from .jobs import BackgroundJob, Report

FRAGILE_COUNT = 5
RUN_ON = ("this process", "local workers", "a Ray cluster")


def runner(choice: str, workers: int = 2, address: str = "local") -> CellRunner:
    """The runner of a "Run on" choice: this process, ``workers`` local processes, or Ray at ``address``."""
    if choice == RUN_ON[1]:
        return PoolRunner(workers)
    if choice == RUN_ON[2]:
        return RayRunner(address.strip() or "local")
    return InProcessRunner()


def connect(address: str) -> tuple[str, int]:
    """Connect this process to Ray at ``address`` (kept for the next sweeps): what is there (nodes,
    CPUs, workers) and the number of workers. A ``CompressError`` says why it could not connect."""
    cluster = RayRunner(address.strip() or "local")
    return cluster.describe(), cluster.workers()


def local_workers_text(workers: int) -> str:
    """What ``workers`` local processes mean on this machine."""
    cores = os.cpu_count() or 1
    note = f"; more than its {cores} cores only adds overhead" if workers > cores else ""
    return f"{workers} local worker process{'es' if workers > 1 else ''}, one thread each{note}"


def start(
    handle: ModelHandle, sweep: Sweep, budget_s: float | None = None, on: CellRunner | None = None
) -> BackgroundJob:
    """Run the sweep on the handle in the background (its cells where ``on`` says, this process by
    default); the job's result is ``SensitivityResult.to_dict()``. The runner is closed at the end
    (local workers end; a Ray connection made before, by ``connect``, stays).

    The sweep stops after ``budget_s`` seconds (or at Stop) and keeps the cells it measured."""

    def work(report: Report, cancel: threading.Event) -> dict[str, Any]:
        deadline = Deadline(budget_s, cancel)

        def progress(step: Progress) -> None:
            fraction = step.cell / step.cell_count
            where = f"layer {step.layer_index}/{step.layer_count} ({step.layer}), cell {step.cell}/{step.cell_count}"
            report(fraction, deadline.progress_text(fraction, where))

        with on or InProcessRunner() as cells_on:
            result = run_sensitivity(handle, sweep, progress=progress, cancel=deadline.stop, runner=cells_on).to_dict()
        result["budget_spent"] = deadline.expired
        return result

    return BackgroundJob(work)


def cell_count(sweep: Sweep, layers: int) -> int:
    """Cells of a sweep over ``layers`` layers: one per layer and (kind, level)."""
    return layers * len(sweep.cells())


def estimate_seconds(sweep: Sweep, layers: int, pass_seconds: float, workers: int = 1) -> float:
    """The sweep's expected time: one evaluation pass per cell (each cell runs the model once on the
    data), the cells spread over ``workers``."""
    return cell_count(sweep, layers) * pass_seconds / max(workers, 1)


def kinds(result: dict[str, Any]) -> list[str]:
    """The kinds measured, in sweep order."""
    measured = {row["kind"] for row in result["rows"]}
    return [kind for kind in result["sweep"]["kinds"] if kind in measured]


def grid(result: dict[str, Any], kind: str) -> dict[str, Any]:
    """Layers x levels of one kind: the quality metric of each cell (None where skipped)."""
    rows = [row for row in result["rows"] if row["kind"] == kind]
    layers = list(dict.fromkeys(row["layer"] for row in rows))
    levels = list(Sweep(**result["sweep"]).levels(kind))
    metric = {(row["layer"], row["level"]): row["metric"] for row in rows}
    return {
        "layers": layers,
        "levels": levels,
        "metric": [[metric.get((layer, level)) for level in levels] for layer in layers],
    }


def fragile(result: dict[str, Any], kind: str) -> list[dict[str, Any]]:
    """The most sensitive layers of one kind at its harshest level, with their drop and proxy."""
    table = SensitivityResult.from_dict(result)
    ranking = table.ranking(kind)[:FRAGILE_COUNT]
    harshest = max if kind in ("prune", "structured") else min
    measured = [row for row in table.rows if row.kind == kind and row.level is not None and row.metric is not None]
    if not measured:
        return []
    level = harshest(row.level for row in measured if row.level is not None)
    by_layer = {row.layer: row for row in measured if row.level == level}
    return [
        {
            "layer": row.layer,
            "level": level,
            f"{table.metric_name} (%)": round(row.metric, 2) if row.metric is not None else None,
            "drop (points)": round(row.drop, 2) if row.drop is not None else None,
            "proxy": None if row.proxy is None else round(row.proxy, 3),
        }
        for row in (by_layer[name] for name in ranking if name in by_layer)
    ]
