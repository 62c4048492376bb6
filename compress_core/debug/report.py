"""``debug_model``: the int8 model of a compressed model, each layer's error and time, ranked, and
the files that say so: ``layers.csv``, ``node_data.json`` (Model Explorer's overlay of the own error;
every overlay in ``node_data/``), ``report.md``, with the two ONNX files they describe.

Each layer's ``suggestion`` is the fix its figures point to: where the weights carry most of its own
error, more bits (8; switch to per channel when already 8 bits per tensor); where its input
activations do, keep it float (no bit width of the weights helps, and one layer's activations
cannot be calibrated apart from the model's).
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from compress_core import jsonio
from compress_core.analysis.metrics import quality_metric
from compress_core.atomic import atomic_write, atomic_write_text
from compress_core.debug.errors import DEBUG_BATCH, layer_errors, rank
from compress_core.debug.fix import Fix, int8_outcome
from compress_core.debug.overlay import DEFAULT_OVERLAY, OVERLAYS, overlays
from compress_core.debug.speed import SpeedReport, layer_speeds
from compress_core.errors import CompressError
from compress_core.models.handle import EvalData
from compress_core.ort.conv_channels import pad_in_floats, pad_input_channels
from compress_core.ort.int8 import STORAGE_BITS, Int8Options
from compress_core.ort.runtime import runtime_line, runtime_record
from compress_core.pipeline import CompressedModel

FP32_FILE = "model_fp32.onnx"
INT8_FILE = "model_int8.onnx"
LAYERS_CSV = "layers.csv"
NODE_DATA = "node_data.json"
NODE_DATA_DIR = "node_data"
REPORT = "report.md"
DEBUG_SAMPLES = 128
CSV_COLUMNS = (
    "rank",
    "layer",
    "node",
    "op_type",
    "bits",
    "storage",
    "output_sqnr_db",
    "output_cosine",
    "own_sqnr_db",
    "own_output_sqnr_db",
    "restore_gain_db",
    "restore_quality_gain",
    "weight_sqnr_db",
    "activation_sqnr_db",
    "fp32_ms",
    "int8_ms",
    "speedup",
    "verdict",
    "suggestion",
)
WEIGHT_MARGIN_DB = 3.0  # weights "carry" the error when their SQNR is this much below the activations'


@dataclass
class DebugResult:
    """The ranked rows (``CSV_COLUMNS`` each), the speed report (None when not profiled), the int8
    model's quality (``key``, ``int8``, the ``samples`` it is measured on, and how many of them the
    layers' figures are ``measured`` on), and the files written (by name)."""

    rows: list[dict[str, Any]]
    speed: SpeedReport | None
    quality: dict[str, Any]
    files: dict[str, Path]

    @property
    def ranked_layers(self) -> list[str]:
        return [row["layer"] for row in self.rows]


def suggestion(row: dict[str, Any]) -> Fix | None:
    """The fix a layer's figures point to (see the module's docstring); None for a float layer."""
    bits, weight, activation = row.get("bits"), row.get("weight_sqnr_db"), row.get("activation_sqnr_db")
    if bits is None:
        return None
    if weight is not None and activation is not None and weight + WEIGHT_MARGIN_DB < activation:
        if bits < 8:
            return Fix("bits", row["layer"], 8)
        if row.get("storage") and row.get("granularity") == "tensor":
            return Fix("granularity", row["layer"])
    return Fix("float", row["layer"])


def debug_model(
    model: CompressedModel,
    out: str | Path,
    options: Int8Options | None = None,
    samples: int = DEBUG_SAMPLES,
    speed: bool = True,
    threads: int = 2,
    check: Callable[[], None] | None = None,
) -> DebugResult:
    """Quantize ``model`` (``quantize_int8`` with ``options``, the defaults when None), measure each layer on ``samples``
    evaluation samples (all when fewer), profile both files (``speed``), and write the folder ``out``.

    Raises ``CompressError`` for a dynamic int8 model (no QDQ pairs to measure), a bad ``samples``,
    or a folder that cannot be written.
    """
    options = options if options is not None else Int8Options()
    if options.dynamic:
        raise CompressError(
            "debug measures static (QDQ) int8 models; dynamic quantization has no activation ranges to compare"
        )
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
        raise CompressError(f"samples {samples!r} is not allowed; use an integer >= 1")
    folder = Path(out)
    if folder.exists() and not folder.is_dir():
        raise CompressError(f"{folder}: exists and is not a folder")
    folder.mkdir(parents=True, exist_ok=True)
    original = model.original
    fp32_path = atomic_write(folder / FP32_FILE, lambda path: onnx.save(original.onnx_model, str(path)))
    outcome = int8_outcome(model, options, folder / INT8_FILE)
    int8 = onnx.load(str(outcome.path))
    pad_in_floats(int8)  # a padded input's QDQ pair, as the debugger pairs layers (the same integers)
    handle = original.handle
    inputs = handle.data.inputs[: min(samples, len(handle.data.inputs))]
    labels, origin = handle.data.labels, handle.data.origin
    targets = model.compressed.layer_targets
    measured = handle.replace(data=EvalData(inputs, None if labels is None else labels[: len(inputs)], origin))
    output = handle.quality.output

    def score(reference: np.ndarray, outputs: np.ndarray) -> float:
        return quality_metric(measured, reference, outputs)

    # The int8 file may read some Conv inputs padded with zero channels (ort.conv_channels): the errors are
    # measured against the fp32 model padded alike (the same values), whose tensors pair with the int8 ones.
    padded = {conv.layer: conv.node for conv in outcome.padded}
    reference = pad_input_channels(original.onnx_model, padded)[0] if padded else original.onnx_model
    errors = rank(
        layer_errors(
            reference,
            int8,
            targets,
            inputs,
            handle.fixed_batch,
            DEBUG_BATCH,
            check,
            output,
            score,
            handle.output_axis(output),
        )
    )
    bits = _planned(model)
    speeds = None
    if speed:
        speeds = layer_speeds(
            fp32_path, outcome.path, original.onnx_model, targets, {k: v[0] for k, v in bits.items()}, inputs, threads
        )
    by_layer = {row.layer: row for row in speeds.layers} if speeds else {}
    rows = []
    for position, error in enumerate(errors, 1):
        planned, storage, granularity = bits.get(error.layer, (None, "float", None))
        storage = storage if error.quantized else "float"  # what the int8 file holds, whatever was planned
        timing = by_layer.get(error.layer)
        row: dict[str, Any] = {
            "rank": position,
            **{key: value for key, value in asdict(error).items() if key != "notes"},
            "bits": planned,
            "storage": storage,
            "granularity": granularity,
            "fp32_ms": timing.fp32_ms if timing else None,
            "int8_ms": timing.int8_ms if timing else None,
            "speedup": timing.speedup if timing else None,
            "verdict": timing.verdict if timing else None,
            "notes": error.notes,
        }
        fix = suggestion(row)
        row["suggestion"] = fix.describe() if fix else ""
        rows.append(row)
    quality = {"key": outcome.key, "int8": outcome.quality, "samples": len(handle.data), "measured": len(inputs)}
    files = {FP32_FILE: fp32_path, INT8_FILE: outcome.path}
    files.update(write_files(folder, rows, speeds, quality, model, [original.onnx_model.graph.name, int8.graph.name]))
    return DebugResult(rows, speeds, quality, files)


def _planned(model: CompressedModel) -> dict[str, tuple[int | None, str, str | None]]:
    """Each layer's planned bits, ONNX storage and granularity (float layers: None, ``float``, None)."""
    quantized = model.compressed.handle.compression.quantized if model.compressed.handle.compression else {}
    planned = {}
    for layer in model.compressed.inventory:
        grid = quantized.get(layer.weight_name, quantized.get(layer.name))
        planned[layer.name] = (
            (None, "float", None)
            if grid is None
            else (grid.bits, STORAGE_BITS.get(grid.bits, "QInt8"), grid.granularity)
        )
    return planned


def write_files(
    folder: Path,
    rows: list[dict[str, Any]],
    speeds: SpeedReport | None,
    quality: dict[str, Any],
    model: CompressedModel,
    graph_ids: list[str],
) -> dict[str, Path]:
    """``layers.csv``, ``node_data.json``, ``node_data/<overlay>.json`` and ``report.md`` in ``folder``."""
    files = {LAYERS_CSV: atomic_write_text(folder / LAYERS_CSV, layers_csv(rows))}
    found = overlays(rows, graph_ids)
    (folder / NODE_DATA_DIR).mkdir(exist_ok=True)
    for name, data in found.items():
        files[f"{NODE_DATA_DIR}/{name}.json"] = atomic_write_text(
            folder / NODE_DATA_DIR / f"{name}.json", jsonio.dumps(data)
        )
    headline = found.get(DEFAULT_OVERLAY) or found.get("output_sqnr_db") or {}
    files[NODE_DATA] = atomic_write_text(folder / NODE_DATA, jsonio.dumps(headline))
    files[REPORT] = atomic_write_text(folder / REPORT, report_markdown(rows, speeds, quality, model))
    return files


def layers_csv(rows: list[dict[str, Any]]) -> str:
    """One CSV row per layer, ``CSV_COLUMNS``, figures rounded to 4 significant digits."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for row in rows:
        writer.writerow([_cell(row.get(column)) for column in CSV_COLUMNS])
    return buffer.getvalue()


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return "inf" if math.isinf(value) and value > 0 else f"{value:.4g}"
    return str(value)


def report_markdown(
    rows: list[dict[str, Any]], speeds: SpeedReport | None, quality: dict[str, Any], model: CompressedModel
) -> str:
    """The debug report: the int8 quality, the ranked layers with their causes, and the speed verdicts."""
    handle = model.original.handle
    value = quality["int8"]
    shown = "n/a" if value is None else f"{100 * value:.2f}%"
    lines = [
        f"# Int8 debug of {handle.name}",
        "",
        f"Int8 {quality['key']} on {quality['samples']} evaluation samples ({handle.data.origin}; "
        f"{'against the labels' if quality['key'] == 'accuracy' else 'against fp32'}): **{shown}**; the layers' "
        f"figures are measured on {quality['measured']} of them. Layers are ranked by their *restore gain*: how much the int8 model's {quality['key']} "
        "(then its output SQNR) gains when only that layer's weights go back to fp32. *Own* is the layer run "
        "alone on the fp32 model's inputs, with its input quantized and its integer weights, against the same "
        "layer in float; *own at output* the fp32 model with only that layer in int8; *weight* and *activation* "
        "split the own error into its two causes; *output* is the error the int8 model carries after the "
        "layer, inherited and own (SQNR in dB: lower is worse).",
        "",
        f"Measured on {runtime_line(runtime_record(None))}.",
        "",
        f"| rank | layer | bits | restore gain ({quality['key']}) | restore gain dB | own dB | own at output dB | "
        "weight dB | activation dB | output dB | cosine | suggestion |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row['rank']} | {row['layer']} | {row['bits'] or 'float'} | "
            f"{_number(row['restore_quality_gain'], '+.3g')} | {_number(row['restore_gain_db'], '+.2f')} | "
            f"{_db(row['own_sqnr_db'])} | {_db(row['own_output_sqnr_db'])} | {_db(row['weight_sqnr_db'])} | "
            f"{_db(row['activation_sqnr_db'])} | {_db(row['output_sqnr_db'])} | {_number(row['output_cosine'], '.4f')} | "
            f"{row['suggestion']} |"
        )
    notes = [f"- {row['layer']}: {note}" for row in rows for note in row.get("notes", [])]
    if notes:
        lines += ["", *notes]
    if speeds is not None:
        lines += [
            "",
            "## Speed per layer",
            "",
            f"Kernel time per run from ONNX Runtime's profiler: fp32 {speeds.fp32_total_ms:.3f} ms, int8 "
            f"{speeds.int8_total_ms:.3f} ms, of which {speeds.qdq_nodes} QuantizeLinear/DequantizeLinear node(s) "
            f"{speeds.qdq_ms:.3f} ms and {speeds.layout_nodes} layout node(s) (Transpose, NCHWc reorders) "
            f"{speeds.layout_ms:.3f} ms.",
            "",
            "| layer | fp32 ms | int8 ms | speed-up | verdict |",
            "|---|---:|---:|---:|---|",
        ]
        for timing in speeds.layers:
            lines.append(
                f"| {timing.layer} | {_number(timing.fp32_ms, '.4f')} | {_number(timing.int8_ms, '.4f')} | "
                f"{_number(timing.speedup, '.2f')} | {timing.verdict} |"
            )
        if speeds.slowest_extra:
            lines += [
                "",
                "Slowest QuantizeLinear / DequantizeLinear and layout nodes of the int8 file (as ORT runs it): "
                + ", ".join(f"`{time.node}` ({time.op_type}, {time.ms:.4f} ms)" for time in speeds.slowest_extra)
                + ".",
            ]
        if speeds.float_layers:
            lines += ["", f"Planned int8 but running a float kernel: {', '.join(speeds.float_layers)}."]
    lines += [
        "",
        "## Files",
        "",
        f"- `{LAYERS_CSV}`: the table above, one row per layer, with the times and verdicts.",
        f"- `{NODE_DATA}`: Model Explorer's overlay of the own error; `{NODE_DATA_DIR}/` has one per figure "
        f"({', '.join(OVERLAYS)}).",
        f"- `{FP32_FILE}`, `{INT8_FILE}`: the graphs they colour.",
    ]
    return "\n".join(lines) + "\n"


def _db(value: float | None) -> str:
    if value is None:
        return "n/a"
    return "exact" if math.isinf(value) and value > 0 else f"{value:.1f}"


def _number(value: float | None, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)
