"""Metrics as markdown, for ``metrics.md`` and the export report."""

from __future__ import annotations

import math
from typing import Any

ROWS = (
    ("accuracy", "Accuracy", "percent"),
    ("agreement", "Top-1 agreement with original", "percent"),
    ("cosine", "Output cosine similarity", "ratio"),
    ("sqnr_db", "Output SQNR (dB)", "db"),
    ("params", "Parameters", "int"),
    ("nonzero_params", "Non-zero parameters", "int"),
    ("macs", "MACs per sample (compressible layers)", "int"),
    ("float_bytes", "Size at fp32 (bytes)", "int"),
    ("plan_bytes", "Size at the plan's bit widths (bytes)", "int"),
    ("zip_bytes", "Zip-compressed ONNX file (bytes)", "int"),
)


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
    return f"{int(value):,}"


def metrics_markdown(metrics: dict[str, Any], title: str = "Metrics") -> str:
    """The ``{"original": ..., "compressed": ...}`` metrics as a markdown table with notes."""
    columns = [key for key in ("original", "compressed") if key in metrics]
    lines = [f"# {title}", "", "| metric | " + " | ".join(columns) + " |", "|---|" + "---|" * len(columns)]
    for key, label, kind in ROWS:
        lines.append(f"| {label} | " + " | ".join(format_value(metrics[c].get(key), kind) for c in columns) + " |")
    compressed = metrics.get("compressed", {})
    if compressed.get("layer_sqnr"):
        lines += ["", "| layer | weight SQNR (dB) |", "|---|---|"]
        lines += [f"| {name} | {format_value(value, 'db')} |" for name, value in compressed["layer_sqnr"].items()]
    if compressed.get("notes"):
        lines += ["", "Notes:", *(f"- {note}" for note in compressed["notes"])]
    return "\n".join(lines) + "\n"
