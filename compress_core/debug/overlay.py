"""Per-node data for Google's Model Explorer: one colour-graded overlay per figure.

Model Explorer's node-data file (``ModelNodeData`` in ``model_explorer.node_data_builder``) maps a
graph's id to ``{"results": {node id: {"value": v}}, "gradient": [...]}``; its ONNX adapter
(``model-explorer-onnx``) uses the graph's name as the graph id and each node's name as the node
id. The fp32 and the int8 file keep the layers' node names, so one overlay colours both graphs: it
is keyed by every graph name given.

The gradient runs from the value that is worst (red) to the one that is best (green): the lowest
SQNR, the longest time, the smallest speed-up, the fewest bits. Values that are not finite (an
exact layer's infinite SQNR) are left out: the node stays uncoloured.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

BAD, MIDDLE, GOOD = "#d7191c", "#ffffbf", "#1a9641"
# name -> (title, unit, higher is better)
OVERLAYS: dict[str, tuple[str, str, bool]] = {
    "output_sqnr_db": ("output error (SQNR)", "dB", True),
    "own_sqnr_db": ("own error (SQNR)", "dB", True),
    "restore_gain_db": ("restore gain (output SQNR)", "dB", True),
    "weight_sqnr_db": ("weight-only error (SQNR)", "dB", True),
    "activation_sqnr_db": ("activation error (SQNR)", "dB", True),
    "fp32_ms": ("fp32 time", "ms", False),
    "int8_ms": ("int8 time", "ms", False),
    "speedup": ("int8 speed-up", "x", True),
    "bits": ("planned bits", "bits", True),
}
DEFAULT_OVERLAY = "own_sqnr_db"


def node_data(values: Mapping[str, float | None], graph_ids: list[str], name: str) -> dict[str, Any]:
    """Model Explorer's node data for one overlay: ``values`` by node name, on every graph of ``graph_ids``.

    ``name`` is a key of ``OVERLAYS``; its direction sets the gradient.
    """
    title, unit, higher_better = OVERLAYS[name]
    results = {
        node: {"value": round(float(value), 4)}
        for node, value in values.items()
        if value is not None and math.isfinite(value)
    }
    low, high = (BAD, GOOD) if higher_better else (GOOD, BAD)
    graph = {
        "name": f"{title} ({unit})",
        "results": results,
        "gradient": [{"stop": 0, "bgColor": low}, {"stop": 0.5, "bgColor": MIDDLE}, {"stop": 1, "bgColor": high}],
    }
    return {graph_id: graph for graph_id in dict.fromkeys(graph_ids)}


def overlays(rows: list[dict[str, Any]], graph_ids: list[str]) -> dict[str, dict[str, Any]]:
    """Every overlay of ``OVERLAYS`` that ``rows`` (one per layer, with ``node``) hold a value for."""
    found = {}
    for name in OVERLAYS:
        values = {row["node"]: row.get(name) for row in rows}
        if any(value is not None for value in values.values()):
            found[name] = node_data(values, graph_ids, name)
    return found
