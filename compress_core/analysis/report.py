"""Metrics as markdown, for ``metrics.md`` and the export report."""

from __future__ import annotations

import math
from typing import Any

from compress_core.analysis.quality import USER_METRIC, metric_title

ROWS = (
    ("accuracy", "Accuracy", "percent"),
    ("agreement", "Top-1 agreement with original", "percent"),
    ("exact_match", "Exact match with original (whole sample)", "percent"),
    ("cosine", "Output cosine similarity", "ratio"),
    ("sqnr_db", "Output SQNR (dB)", "db"),
    ("params", "Parameters", "int"),
    ("nonzero_params", "Non-zero parameters", "int"),
    ("macs", "MACs per sample (compressible layers)", "int"),
    ("float_bytes", "Size at fp32 (bytes)", "int"),
    ("plan_bytes", "Size at the plan's bit widths (bytes)", "int"),
    ("zip_bytes", "Zip-compressed ONNX file (bytes)", "int"),
)


def metric_rows(task: str | None = None, metric_label: str | None = None) -> list[tuple[str, str, str]]:
    """``ROWS`` labelled for ``task`` (``per-step agreement with original`` for sequences), with a
    first row for the user's metric (``metric_label``) when there is one."""
    rows = [
        (key, f"{metric_title(task, key).capitalize()} with original", kind)
        if key == "agreement" and task
        else (key, label, kind)
        for key, label, kind in ROWS
    ]
    return ([(USER_METRIC, f"Your metric ({metric_label})", "number")] if metric_label else []) + rows


def format_value(value: Any, kind: str) -> str:
    """One metric value as text (``n/a`` where it does not apply)."""
    if value is None:
        return "n/a"
    if kind == "percent":
        return f"{100 * value:.2f}%"
    if kind == "db":
        return "inf" if math.isinf(value) else f"{value:.1f}"
    if kind == "ratio":
        return f"{value:.5f}"
    if kind == "number":
        return f"{value:.4g}"
    return f"{int(value):,}"


def metrics_markdown(
    metrics: dict[str, Any], title: str = "Metrics", task: str | None = None, metric_label: str | None = None
) -> str:
    """The ``{"original": ..., "compressed": ...}`` metrics as a markdown table with notes (rows
    labelled for ``task``, see ``metric_rows``)."""
    columns = [key for key in ("original", "compressed") if key in metrics]
    lines = [f"# {title}", "", "| metric | " + " | ".join(columns) + " |", "|---|" + "---|" * len(columns)]
    for key, label, kind in metric_rows(task, metric_label):
        lines.append(f"| {label} | " + " | ".join(format_value(metrics[c].get(key), kind) for c in columns) + " |")
    compressed = metrics.get("compressed", {})
    if compressed.get("layer_sqnr"):
        lines += ["", "| layer | weight SQNR (dB) |", "|---|---|"]
        lines += [f"| {name} | {format_value(value, 'db')} |" for name, value in compressed["layer_sqnr"].items()]
    if compressed.get("notes"):
        lines += ["", "Notes:", *(f"- {note}" for note in compressed["notes"])]
    return "\n".join(lines) + "\n"
