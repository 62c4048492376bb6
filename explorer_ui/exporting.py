"""The Export page's data: build the export folder of the current plan, and benchmark it.

Export folders live in this process's private folder (``sources.private_dir``); only the newest
``KEPT_EXPORTS`` are kept, so a long-running app does not fill the disk. Results are plain data for
``st.session_state``: paths as strings, numbers, and the engine's dicts.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from compress_core import CompressError, LayerInfo
from compress_core.ort.artifacts import export_artifacts
from compress_core.ort.bench import UNASSIGNED, bench_folder, layer_comparison
from compress_core.ort.cpu import cpu_features
from compress_core.ort.int8 import Int8Options
from compress_core.ort.runtime import int8_notes
from compress_core.pipeline import CompressedModel
from compress_core.plan import Plan

from .sources import private_dir

EXPORTS = "exports"
KEPT_EXPORTS = 8
_removal_lock = threading.Lock()  # one removal at a time: two would race on the same folders
MIME_TYPES = {
    ".onnx": "application/octet-stream",
    ".pt": "application/octet-stream",
    ".yaml": "application/yaml",
    ".json": "application/json",
    ".md": "text/markdown",
    ".npz": "application/octet-stream",
}


def export_folder(model_key: str, plan: Plan, fine_tuned: bool = False) -> Path:
    """A folder of its own for each (model, plan, fine-tuned or not)."""
    digest = hashlib.sha256(f"{model_key}\n{plan.to_yaml()}\n{fine_tuned}".encode()).hexdigest()[:16]
    return private_dir(EXPORTS) / digest


def build(model: CompressedModel, folder: Path, int8: Int8Options | None, say: Callable[[str], None]) -> dict[str, Any]:
    """Write the export folder of ``model`` (``cache.compressed``, or the Recover panel's fine-tuned
    model) and return its files (name -> path, sizes) and metrics."""
    result = export_artifacts(model, folder, int8=int8, progress=say)
    os.utime(result.folder)
    remove_old_exports(result.folder.parent)
    files = {name: {"path": str(path), **result.sizes[name]} for name, path in result.files.items()}
    return {"folder": str(result.folder), "files": files, "metrics": result.metrics}


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


def mime_type(name: str) -> str:
    """The download MIME type of an export file."""
    return MIME_TYPES.get(Path(name).suffix, "application/octet-stream")


def benchmark(
    folder: str, threads: int, batch: int, runs: int, progress: Callable[[float], None]
) -> list[dict[str, Any]]:
    """``bench_folder`` with progress as a fraction in [0, 1]."""
    return bench_folder(
        folder, threads=threads, batch=batch, runs=runs, progress=lambda done, total: progress(done / total)
    )


def latency_table(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The side-by-side table: one row per candidate, the columns a reader compares."""
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


def layer_times(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The slowest nodes of each candidate (ORT's profiler), with the layer each belongs to."""
    return [{"candidate": row["name"], **layer} for row in rows for layer in row["top_layers"]]


def layer_speedups(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per layer, compressed fp32 against int8 (``export_bench.layer_comparison``), for a table."""
    return [
        {"layer": row["layer"], "fp32 ms": row["fp32_ms"], "int8 ms": row["int8_ms"], "speed-up": row["speedup"]}
        for row in layer_comparison(rows)
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
