"""The Sensitivity page's data: start a sweep as a background job, and shape its table for charts."""

from __future__ import annotations

import threading
from typing import Any

from compress_core import ModelHandle
from compress_core.analysis.sensitivity import run_sensitivity
from compress_core.analysis.sweep import Progress, SensitivityResult, Sweep

from .budget import Deadline
from .jobs import BackgroundJob, Report

FRAGILE_COUNT = 5


def start(handle: ModelHandle, sweep: Sweep, budget_s: float | None = None) -> BackgroundJob:
    """Run the sweep on the handle in the background; the job's result is ``SensitivityResult.to_dict()``.

    The sweep stops after ``budget_s`` seconds (or at Stop) and keeps the cells it measured."""

    def work(report: Report, cancel: threading.Event) -> dict[str, Any]:
        deadline = Deadline(budget_s, cancel)

        def progress(step: Progress) -> None:
            fraction = step.cell / step.cell_count
            where = f"layer {step.layer_index}/{step.layer_count} ({step.layer}), cell {step.cell}/{step.cell_count}"
            report(fraction, deadline.progress_text(fraction, where))

        result = run_sensitivity(handle, sweep, progress=progress, cancel=deadline.stop).to_dict()
        result["budget_spent"] = deadline.expired
        return result

    return BackgroundJob(work)


def cell_count(sweep: Sweep, layers: int) -> int:
    """Cells of a sweep over ``layers`` layers: one per layer and (kind, level)."""
    return layers * len(sweep.cells())


def estimate_seconds(sweep: Sweep, layers: int, pass_seconds: float) -> float:
    """The sweep's expected time: one evaluation pass per cell (each cell runs the model once on the data)."""
    return cell_count(sweep, layers) * pass_seconds


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
    level = harshest(row.level for row in table.rows if row.kind == kind)
    by_layer = {row.layer: row for row in table.rows if row.kind == kind and row.level == level}
    return [
        {
            "layer": name,
            "level": level,
            f"{table.metric_name} (%)": round(by_layer[name].metric, 2),
            "drop (points)": round(by_layer[name].drop, 2),
            "proxy": None if by_layer[name].proxy is None else round(by_layer[name].proxy, 3),
        }
        for name in ranking
    ]
