"""The Tune page's data: the plan as an editable table, bulk edits, recipes, and apply-and-measure.

The table has one row per compressible layer; ``plan_rows`` shows what the plan does to each (by the
plan's precedence) and ``rows_plan`` turns the rows back into a plan with one exact entry per
changed layer. Plain functions of ``Plan`` / ``LayerInfo``: no Streamlit.

The rank column is text, so that it round-trips a plan exactly (a number column would turn the
fraction ``1.0``, full rank, into the rank ``1``): empty for no factorization, a number with a
decimal point for a fraction of full rank (``0.5``, ``1.0``), an integer for a rank (``8``).
"""

from __future__ import annotations

import math
from typing import Any

from compress_core import CompressError, LayerInfo
from compress_core.analysis.quality import USER_METRIC, metric_title, quality_value
from compress_core.analysis.report import format_value, metric_rows
from compress_core.models.handle import ModelHandle
from compress_core.ops.quantize import ALLOWED_BITS
from compress_core.pipeline import CompressedModel
from compress_core.plan import LayerConfig, Plan, PruneConfig
from compress_core.plan.patterns import compile_pattern
from compress_core.plan.quoting import quoted
from compress_core.transform.aliases import layer_aliases

FLOAT = "float"
BITS_OPTIONS = (FLOAT, *(str(bits) for bits in ALLOWED_BITS))
PRUNE_KIND_OPTIONS = ("unstructured", "structured", "2:4", "4:8", "1:4")
EDITABLE = ("bits", "scheme", "granularity", "smooth", "prune_ratio", "prune_kind", "rank")


def plan_rows(plan: Plan, layers: list[LayerInfo]) -> list[dict[str, Any]]:
    """One row per layer: its name, type, parameters and the settings the plan gives it."""
    rows = []
    for layer in layers:
        config = plan.config_for(layer.name) or LayerConfig()
        rows.append(
            {
                "layer": layer.name,
                "type": layer.type,
                "params": layer.params,
                "bits": FLOAT if config.bits is None else str(config.bits),
                "scheme": config.scheme,
                "granularity": config.granularity,
                "smooth": config.smooth,
                "prune_ratio": 0.0 if config.prune is None else config.prune.ratio,
                "prune_kind": "unstructured" if config.prune is None else config.prune.kind,
                "rank": rank_text(config.rank),
            }
        )
    return rows


def row_config(row: dict[str, Any]) -> LayerConfig:
    """The layer config of one table row (a ``CompressError`` names the layer for a bad value)."""
    try:
        bits = None if row["bits"] in (None, FLOAT) else int(row["bits"])
        smooth: Any = row.get("smooth")
        return LayerConfig(
            bits=bits,
            scheme=row["scheme"] or "symmetric",
            granularity=row["granularity"] or "channel",
            smooth=None if bits is None or _empty(smooth) else float(smooth),  # a float layer has nothing to smooth
            prune=_prune(row["prune_ratio"], row["prune_kind"] or "unstructured"),
            rank=parse_rank(row["rank"]),
        )
    except CompressError as exc:
        raise CompressError(f"layer '{row['layer']}': {exc}") from exc


def _prune(ratio: Any, kind: str) -> PruneConfig | None:
    """The row's pruning, None for none: an N:M kind implies its ratio (the ratio cell is then ignored)."""
    config = PruneConfig.with_kind(kind, 0.0 if _empty(ratio) else ratio)
    return None if config.ratio == 0 else config


def rank_text(rank: int | float | None) -> str | None:
    """The rank cell of a plan's rank: None (empty), ``"8"`` for a rank, ``"0.5"`` / ``"1.0"`` for a fraction."""
    return None if rank is None else repr(rank)


def parse_rank(cell: Any) -> int | float | None:
    """The plan's rank of a rank cell (see the module doc); ints and floats pass through as they are.

    Text without a decimal point is a rank, text with one a fraction; anything else is a
    ``CompressError`` (``LayerConfig`` then refuses out-of-range values, such as ``2.7``).
    """
    if _empty(cell):
        return None
    if not isinstance(cell, str):
        return cell
    text = cell.strip()
    for convert in (int, float):
        try:
            return convert(text)
        except ValueError:
            continue
    raise CompressError(
        f"rank {cell!r} is not allowed; leave it empty, or write a rank like 8 or a fraction of full rank like 0.5"
    )


def _empty(cell: Any) -> bool:
    """An emptied cell: None, blank text, or NaN."""
    return (
        cell is None or (isinstance(cell, str) and not cell.strip()) or (isinstance(cell, float) and math.isnan(cell))
    )


def rows_plan(rows: list[dict[str, Any]]) -> Plan:
    """A plan with one exact entry per row that changes its layer."""
    configs = {row["layer"]: row_config(row) for row in rows}
    return Plan(layers={name: config for name, config in configs.items() if not config.is_identity})


def edit_rows(rows: list[dict[str, Any]], edited: dict[int, dict[str, Any]]) -> list[dict[str, Any]]:
    """``rows`` with a data editor's ``edited_rows`` (row index -> changed cells) applied; a number
    put in the rank cell becomes its text (``rank_text``), keeping int (rank) and float (fraction) apart."""
    return [
        {**row, **{key: _cell(key, value) for key, value in edited.get(index, {}).items() if key in EDITABLE}}
        for index, row in enumerate(rows)
    ]


def _cell(key: str, value: Any) -> Any:
    numeric_rank = (
        key == "rank" and isinstance(value, (int, float)) and not isinstance(value, bool) and not _empty(value)
    )
    return rank_text(value) if numeric_rank else value


def matching_layers(layers: list[LayerInfo], pattern: str) -> list[str]:
    """Names of the layers the regex (RE2 syntax, linear time) matches in full; a bad regex or no
    match is a ``CompressError``."""
    regex = compile_pattern(pattern, f"pattern {quoted(pattern)}")
    names = [layer.name for layer in layers if regex.fullmatch(layer.name)]
    if not names:
        raise CompressError(
            f"pattern {quoted(pattern)} matches no layer; layers: {', '.join(layer.name for layer in layers[:12])}"
        )
    return names


def all_layers(layers: list[LayerInfo]) -> list[str]:
    """Names of every layer of the table."""
    return [layer.name for layer in layers]


def conv_layers(layers: list[LayerInfo]) -> list[str]:
    """Names of the convolution layers (torch ``Conv*`` modules, ONNX ``Conv`` nodes)."""
    return [layer.name for layer in layers if layer.type.startswith("Conv")]


def with_bits(plan: Plan, layers: list[LayerInfo], names: list[str], bits: str) -> Plan:
    """The plan with ``bits`` (an entry of ``BITS_OPTIONS``) set on the named layers, all else kept."""
    rows = plan_rows(plan, layers)
    return rows_plan([{**row, "bits": bits} if row["layer"] in names else row for row in rows])


def load_recipe(data: bytes, source: str, handle: ModelHandle, layers: list[LayerInfo]) -> Plan:
    """Parse a recipe file's bytes, check it against the model, and return it as the table's exact-entry
    plan. Its entries may name the model's layers or their aliases (``transform.aliases``: a recipe
    written for a torch model applies to its ONNX export)."""
    plan = Plan.from_bytes(data, source).with_aliases(layer_aliases(handle, layers))
    plan.resolve([layer.name for layer in layers])
    return rows_plan(plan_rows(plan, layers))


def apply_and_measure(model: CompressedModel) -> dict[str, Any]:
    """The applied plan and the compressed model's metrics against the original: plain data."""
    return {"plan": model.plan.to_dict(), "metrics": model.evaluate()["compressed"]}


def quality_figure(handle: ModelHandle, metrics: dict[str, Any], before: dict[str, Any]) -> tuple[str, str, str]:
    """The figure that ranks (the user's metric, accuracy, the task's agreement, or cosine), as the
    label, the value and the change from ``before``, for a ``st.metric``."""
    label = handle.quality.metric_label
    key, value = quality_value(handle.task, metrics, label)
    _, previous = quality_value(handle.task, before, label)
    if key == USER_METRIC or label:
        return f"Your metric ({label})", format_value(value, "number"), f"{value - previous:+.4g}"
    title = metric_title(handle.task, key).capitalize() if key == "agreement" else key.capitalize()
    if key == "cosine":  # a similarity, not a share: written as the report writes it (``format_value``'s ratio)
        return title, format_value(value / 100, "ratio"), f"{(value - previous) / 100:+.5f}"
    return title, format_value(value / 100, "percent"), f"{value - previous:+.2f} points"


def summary_table(columns: dict[str, dict[str, Any]], handle: ModelHandle | None = None) -> list[dict[str, str]]:
    """Rows of metrics, one column per named metrics dict (original, previous, current ...), labelled
    for the handle's task and user metric."""
    table = []
    rows = metric_rows(handle.task, handle.quality.metric_label) if handle is not None else metric_rows()
    for key, label, kind in rows:
        values = {name: metrics.get(key) for name, metrics in columns.items()}
        if all(value is None for value in values.values()):
            continue
        table.append({"metric": label, **{name: format_value(value, kind) for name, value in values.items()}})
    return table


def history_entry(entries: list[dict[str, Any]], result: dict[str, Any]) -> dict[str, Any]:
    """``result`` labelled with the next number after the history's last entry (``#1``, ``#2`` ...)."""
    number = int(entries[-1]["label"][1:]) + 1 if entries else 1
    return {**result, "label": f"#{number}"}


def history_table(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per applied plan, newest first: its label, size, quality and what it changed, each
    number written as the summary table writes it (``format_value``: percentages with two decimals,
    cosine with five, ``n/a`` where a figure does not apply)."""
    return [
        {
            "applied": entry["label"],
            "size (bytes)": format_value(entry["metrics"]["plan_bytes"], "int"),
            "accuracy": format_value(entry["metrics"]["accuracy"], "percent"),
            "agreement": format_value(entry["metrics"]["agreement"], "percent"),
            "cosine": format_value(entry["metrics"]["cosine"], "ratio"),
            "layers changed": len(entry["plan"]["layers"]),
        }
        for entry in reversed(entries)
    ]
