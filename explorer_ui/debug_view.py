"""The Debug page's work: run ``debug_model`` on the session's plan, open the graphs with their overlays
in Model Explorer, and try one fix with its before and after.

Results are plain data in the session (``DEBUG``: label -> {"plan", "folder", "rows", "quality"};
``DEBUG_FIX``: label -> the last fix's comparison), so they survive page switches.
"""

from __future__ import annotations

import atexit
import json
import tempfile
from pathlib import Path
from typing import Any

import streamlit as st

from compress_core.analysis.quality import USER_METRIC
from compress_core.debug.fix import Fix, Outcome, compare, fixed_options, fixed_plan, int8_outcome
from compress_core.debug.overlay import DEFAULT_OVERLAY
from compress_core.debug.report import FP32_FILE, INT8_FILE, NODE_DATA_DIR, debug_model
from compress_core.ort.int8 import Int8Options
from compress_core.pipeline import CompressedModel, compress
from compress_core.plan import Plan
from explorer_ui.model_explorer_server import ModelExplorerServer, onnx_graphs

DEBUG = "debug_results"
DEBUG_FIX = "debug_fix"
DEBUG_SAMPLES = 64
# Model Explorer shows the overlay loaded last: the own error
SHOWN_OVERLAYS = ("bits", "speedup", "fp32_ms", "int8_ms", "output_sqnr_db", "restore_gain_db", DEFAULT_OVERLAY)


@st.cache_resource(show_spinner=False)
def model_explorer() -> ModelExplorerServer:
    """The one Model Explorer server of this app process, stopped when the process exits."""
    server = ModelExplorerServer()
    atexit.register(server.stop)
    return server


def run_debug(model: CompressedModel, plan: Plan) -> dict[str, Any]:
    """``debug_model`` into a fresh folder; the session's entry for it."""
    folder = Path(tempfile.mkdtemp(prefix="compress-debug-"))
    result = debug_model(model, folder, Int8Options(), DEBUG_SAMPLES)
    return {"plan": plan.to_dict(), "folder": str(folder), "rows": result.rows, "quality": result.quality}


def viewer_url(entry: dict[str, Any], page_host: str | None) -> str:
    """Model Explorer's URL with the fp32 and int8 graphs side by side, each with the overlays
    (published once per debug run: the path is kept in ``entry``)."""
    server = model_explorer()
    if "viewer" not in entry:
        entry["viewer"] = _publish(server, entry)
    return server.url(entry["viewer"], page_host)


def _publish(server: ModelExplorerServer, entry: dict[str, Any]) -> str:
    folder = Path(entry["folder"])
    models = [
        (name, server.publish_graphs(onnx_graphs(folder / file, f"{name} graph")), f"{name} graph")
        for name, file in (("fp32", FP32_FILE), ("int8", INT8_FILE))
    ]
    overlays = []
    for name in SHOWN_OVERLAYS:
        path = folder / NODE_DATA_DIR / f"{name}.json"
        if path.exists():
            data = json.loads(path.read_text())
            overlays += [(name, server.publish_node_data(data, graph), target) for target, _, graph in models]
    return server.viewer_path(models, overlays)


def try_fix(model: CompressedModel, entry: dict[str, Any], fix: Fix, layer_names: list[str]) -> dict[str, Any]:
    """Re-export with ``fix`` and compare with the debugged int8 file (quality as ``debug_model``
    measured it): quality, ms and bytes."""
    plan = Plan.from_dict(entry["plan"])
    folder = Path(entry["folder"])
    int8_file = folder / INT8_FILE
    before = Outcome(entry["quality"]["key"], entry["quality"]["int8"], int8_file, int8_file.stat().st_size)
    fixed = compress(model.original, fixed_plan(plan, layer_names, fix))
    after = int8_outcome(fixed, fixed_options(Int8Options(), fix), folder / "after_int8.onnx")
    return {"fix": fix.describe(), "plan": fixed.plan.to_dict(), **compare(before, after, model, runs=10)}


def before_after_rows(result: dict[str, Any]) -> list[dict[str, Any]]:
    """The comparison of ``try_fix`` as table rows: quality (in % but for a user metric), ms per batch
    and bytes, before and after."""
    percent = result["key"] != USER_METRIC  # accuracy, agreement, cosine: fractions shown in %
    label = f"{result['key']} (%)" if percent else result["key"]
    rows = []
    for name in ("before", "after"):
        figures = result[name]
        quality = figures["quality"]
        rows.append(
            {
                "": name,
                label: None if quality is None else (round(100 * quality, 2) if percent else quality),
                "ms per batch": None if figures["ms"] is None else round(figures["ms"], 3),
                "bytes": figures["bytes"],
            }
        )
    return rows
