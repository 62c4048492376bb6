"""The export folder: ONNX and torch files of a compressed model, its recipe, metrics and a report.

Everything is first written into a hidden staging folder next to the destination; every ONNX file
is loaded and run once in ONNX Runtime on the evaluation data (its accuracy or fidelity is what the
report shows); only then is each file moved into place with an atomic rename. A failure at any step
removes the staging folder, so the destination never holds a partial file. A rebuild into the same
folder removes the files it does not make (``model_int8.onnx`` of an earlier build with int8), so
``bench`` never measures a stale file. A ``budget.Tracker`` follows the steps (``budget.export_steps``
estimates them) and stops the export between steps when its ``cancel`` says so.

Folder layout (``FILES``): ``model_fp32.onnx``, ``model_int8.onnx`` (with int8), ``model_nbits.onnx``
(with ``nbits``: weight-only block-wise MatMulNBits, ``ort.nbits``), ``model.pt``
(torch handles: the compressed ``state_dict``), ``recipe.yaml``, ``metrics.json``, ``report.md``,
and what ``bench`` needs: ``original_fp32.onnx`` and ``eval_data.npz``. ``metrics.json`` records the
machine the files were run on (``runtime``: ``cpu.runtime_record``), since int8 accuracy depends on
the CPU (U8S8 kernels saturate without VNNI); ``report.md`` has it as one line.
"""

from __future__ import annotations

import io
import os
import shutil
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch

from compress_core import jsonio
from compress_core.analysis import quality
from compress_core.analysis.metrics import output_quality, user_metric_label
from compress_core.analysis.report import metrics_markdown
from compress_core.atomic import sanitize_filename
from compress_core.errors import CompressError, first_line
from compress_core.models.inputs import Inputs, in_batches
from compress_core.models.sessions import make_session
from compress_core.ort.budget import EXPORT_INT8, EXPORT_PREPARE, EXPORT_RUN, EXPORT_WRITE, Tracker
from compress_core.ort.int8 import Int8Options, Int8Result, quantize_int8
from compress_core.ort.nbits import NBitsOptions, quantize_nbits
from compress_core.ort.runtime import cpu_from_record, int8_notes, runtime_line, runtime_record
from compress_core.pipeline import CompressedModel

ORIGINAL_ONNX = "original_fp32.onnx"
FP32_ONNX = "model_fp32.onnx"
INT8_ONNX = "model_int8.onnx"
NBITS_ONNX = "model_nbits.onnx"
TORCH_WEIGHTS = "model.pt"
RECIPE = "recipe.yaml"
METRICS = "metrics.json"
REPORT = "report.md"
EVAL_DATA = "eval_data.npz"
FILES = (ORIGINAL_ONNX, FP32_ONNX, INT8_ONNX, NBITS_ONNX, TORCH_WEIGHTS, RECIPE, EVAL_DATA, METRICS, REPORT)
ONNX_FILES = (ORIGINAL_ONNX, FP32_ONNX, INT8_ONNX, NBITS_ONNX)
RUN_BATCH = 256


@dataclass
class ExportResult:
    """The destination folder, the files written (by name), the content of ``metrics.json``, and
    each file's ``file_sizes`` (by name)."""

    folder: Path
    files: dict[str, Path]
    metrics: dict[str, Any]
    sizes: dict[str, dict[str, int]]


def export_artifacts(
    model: CompressedModel,
    folder: str | Path,
    int8: Int8Options | None = None,
    progress: Callable[[str], None] | None = None,
    tracker: Tracker | None = None,
    nbits: NBitsOptions | None = None,
) -> ExportResult:
    """Write the export folder of ``model`` (from ``compress(original, plan)``).

    The ONNX files, layer map, reference outputs and PyTorch metrics are the pipeline object's
    (computed once, shared with whoever asked before). ``int8`` adds ``model_int8.onnx`` made with
    those options; ``nbits`` adds ``model_nbits.onnx`` (weight-only MatMulNBits, ``ort.nbits``), made
    in the int8 step. ``progress`` receives a short description of each step (for a status line);
    ``tracker`` is told each step (its keys are ``budget.EXPORT_*``) and each ONNX file run, and
    raises ``budget.Stopped`` between steps once its ``cancel`` is true. Raises ``CompressError``
    for any bad input; the destination then holds no new file, also when stopped.
    """
    say = progress or (lambda step: None)
    track = tracker if tracker is not None else Tracker()
    original, compressed = model.original.handle, model.compressed.handle
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise CompressError(f"{folder}: exists and is not a folder")
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(
        tempfile.mkdtemp(prefix=f".{sanitize_filename(original.name)}.", suffix=".partial", dir=folder.parent)
    )
    try:
        track.begin(EXPORT_PREPARE)
        model.evaluate()  # computed once, as are the ONNX exports: the first export of a plan pays here
        _ = model.original.onnx_model, model.compressed.onnx_model
        track.begin(EXPORT_WRITE)
        say("exporting ONNX")
        onnx.save(model.original.onnx_model, staging / ORIGINAL_ONNX)
        track.check()
        onnx.save(model.compressed.onnx_model, staging / FP32_ONNX)
        track.check()
        if compressed.backend == "torch":
            torch.save(compressed.model.state_dict(), staging / TORCH_WEIGHTS)
        model.plan.save(staging / RECIPE)
        data = original.data
        arrays: dict[str, Any] = {**data.inputs.arrays, **({} if data.labels is None else {"labels": data.labels})}
        np.savez_compressed(staging / EVAL_DATA, **arrays)
        quantized = None
        if int8 is not None:
            track.begin(EXPORT_INT8)
            say(f"quantizing to int8 ({'dynamic' if int8.dynamic else f'static, {int8.method} calibration'})")
            quantized = quantize_int8(model.compressed, staging / INT8_ONNX, int8, track.check)
        weight_only = None
        if nbits is not None:
            say(f"storing weights block-wise (MatMulNBits, blocks of {nbits.block_size}, {nbits.compute} compute)")
            weight_only = quantize_nbits(model, staging / NBITS_ONNX, nbits)
        track.begin(EXPORT_RUN)
        say("running every ONNX file in ONNX Runtime")
        metrics = _metrics(model, staging, int8, quantized, track)
        metrics["weight_only"] = _weight_only_metrics(nbits, weight_only)
        (staging / METRICS).write_text(jsonio.dumps(metrics), encoding="utf-8")
        (staging / REPORT).write_text(report_markdown(metrics), encoding="utf-8")
        sizes = {
            name: {key: entry[key] for key in ("bytes", "zip_bytes")} for name, entry in metrics["artifacts"].items()
        }
        sizes.update({name: file_sizes(staging / name) for name in (METRICS, REPORT)})
        track.check()  # the last chance to stop: from here on the destination changes
        folder.mkdir(exist_ok=True)
        files = {}
        for name in FILES:
            if (staging / name).exists():
                os.replace(staging / name, folder / name)
                files[name] = folder / name
            else:
                (folder / name).unlink(missing_ok=True)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return ExportResult(folder, files, metrics, sizes)


def file_sizes(path: Path) -> dict[str, int]:
    """Bytes on disk, raw and zip-compressed (``ZIP_DEFLATED``)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.write(path, path.name)
    return {"bytes": path.stat().st_size, "zip_bytes": len(buffer.getvalue())}


def run_onnx(
    path: Path,
    inputs: Inputs,
    fixed_batch: int | None = None,
    output: int = 0,
    axis: int = 0,
    session: Any = None,
    check: Callable[[], None] | None = None,
) -> np.ndarray:
    """Output number ``output`` of the ONNX file on ``inputs``, run in ONNX Runtime in batches (of
    ``fixed_batch`` for a file with a static batch size), its batch axis (``axis`` as the file
    returns it) first. ``session``: one already open on ``path`` (else one is opened); ``check`` is
    called before each batch (to stop a long run: ``Tracker.check`` raises ``Stopped``)."""
    session = session if session is not None else make_session(path)
    try:
        results = []
        for batch in in_batches(inputs, RUN_BATCH, fixed_batch):
            if check is not None:
                check()
            results.append(session.run(None, batch.feed())[output])
        joined = np.concatenate(results, axis=axis)
        return np.moveaxis(joined, axis, 0)[: len(inputs)]
    except CompressError:  # a stop (``Stopped``) or the check's own message
        raise
    except Exception as exc:  # ORT's errors carry no common type
        first = first_line(exc, 200)
        raise CompressError(f"{path.name}: ONNX Runtime could not run the model ({first})") from exc


def headline(fidelity: dict[str, Any], task: str, metric_label: str | None = None) -> tuple[str, float | None]:
    """The one figure to show and its key, as ``quality.ranked_key`` picks it: the user metric (with
    ``metric_label``), else accuracy where labels exist, agreement, or cosine (always for embeddings).
    The value is None where ``fidelity`` has none (a file that was not run)."""
    key = quality.ranked_key(task, fidelity, metric_label)
    if key is None:
        key = quality.USER_METRIC if metric_label else ("cosine" if task == "embedding" else "agreement")
    return key, fidelity.get(key)


def _metrics(
    model: CompressedModel,
    staging: Path,
    int8: Int8Options | None,
    quantized: Int8Result | None,
    track: Tracker,
) -> dict[str, Any]:
    original = model.original.handle
    output = original.quality.output
    reference = model.original.baseline().reference
    artifacts = {}
    onnx_files = [name for name in ONNX_FILES if (staging / name).exists()]
    for name in FILES:
        path = staging / name
        if name in (METRICS, REPORT) or not path.exists():
            continue
        entry: dict[str, Any] = file_sizes(path)
        if name in ONNX_FILES:
            track.check()
            track.tick(onnx_files.index(name), len(onnx_files), f"running {name} in ONNX Runtime")
            outputs = run_onnx(
                path,
                original.data.inputs,
                original.fixed_batch,
                output,
                original.output_axis(output),
                check=track.check,
            )
            entry.update(output_quality(original, reference, outputs))
        artifacts[name] = entry
    return {
        "model": original.name,
        "task": original.task,
        "ctc_blank": original.quality.ctc_blank,
        "metric_label": user_metric_label(original),
        "data": {"origin": original.data.origin, "samples": len(original.data)},
        "inputs": [spec.to_dict() for spec in original.input_specs],
        "fixed_batch": original.fixed_batch,
        "output": original.quality.output,
        "output_axis": original.output_axis(original.quality.output),
        "pytorch": model.evaluate(),
        "artifacts": artifacts,
        "int8": None
        if quantized is None or int8 is None
        else {
            "mode": quantized.mode,
            "method": None if int8.dynamic else int8.method,
            "calibration_samples": None if int8.dynamic else min(int8.calibration_samples, len(original.data)),
            "activations": quantized.choice.activations if quantized.choice else int8.activations,
            "path": quantized.choice.to_dict() if quantized.choice else None,
            "saturation": [vars(row) for row in quantized.saturation],
            "padded_convs": [vars(conv) for conv in quantized.padded],
            "layers": [vars(row) for row in quantized.layers],
            "notes": quantized.notes,
        },
        "layer_nodes": {layer: target.node for layer, target in model.compressed.layer_targets.items()},
        "runtime": runtime_record(None),
    }


def _weight_only_metrics(nbits: NBitsOptions | None, result: Int8Result | None) -> dict[str, Any] | None:
    """``metrics.json``'s record of ``model_nbits.onnx``: block size, each layer's storage, notes."""
    if nbits is None or result is None:
        return None
    return {
        "format": "MatMulNBits",
        "block_size": nbits.block_size,
        "compute": nbits.compute,
        "layers": [vars(row) for row in result.layers],
        "notes": result.notes,
    }


def _weight_only_section(weight_only: dict[str, Any] | None) -> list[str]:
    """The report's section on ``model_nbits.onnx`` (nothing without one)."""
    if not weight_only:
        return []
    lines = [
        "",
        "## Weight-only model (MatMulNBits)",
        "",
        f"`{NBITS_ONNX}`: weights stored block-wise in {weight_only['block_size']}-value blocks, "
        f"{weight_only['compute']} compute (the notes below say what that means).",
        "",
        "| layer | node | planned bits | stored as |",
        "|---|---|---:|---|",
    ]
    lines += [
        f"| {row['layer']} | `{row['node']}` | {row['bits'] or 'float'} | {row['storage']} |"
        for row in weight_only["layers"]
    ]
    return lines + (["", *(f"- {note}" for note in weight_only["notes"])] if weight_only["notes"] else [])


def report_markdown(metrics: dict[str, Any]) -> str:
    """The export report: the task kind and its metric, each file's size and ORT-measured quality
    next to the PyTorch simulation."""
    task, label = metrics["task"], metrics.get("metric_label")
    simulated = metrics["pytorch"]
    runtime = metrics.get("runtime")
    titles = [title for title, _ in _figures(simulated["compressed"], task, label)]
    ctc = "" if metrics.get("ctc_blank") is None else f", CTC-decoded with blank {metrics['ctc_blank']}"
    lines = [
        f"# Export of {metrics['model']}",
        "",
        f"Evaluation data: {metrics['data']['origin']} ({metrics['data']['samples']} samples). "
        f"Task: {quality.describe_task(task)}{ctc}. Quality is {' and '.join(titles)}, measured with ONNX "
        "Runtime on each file; PyTorch-simulated figures follow.",
        "",
        *([f"Measured on {runtime_line(runtime)}.", ""] if runtime else []),
        "| file | bytes | zip bytes | " + " | ".join(f"{title} (ONNX Runtime)" for title in titles) + " |",
        "|---|---:|---:|" + "---:|" * len(titles),
    ]
    for name, entry in metrics["artifacts"].items():
        values = [value for _, value in _figures(entry, task, label)] if "cosine" in entry else ["n/a"] * len(titles)
        lines.append(f"| {name} | {entry['bytes']:,} | {entry['zip_bytes']:,} | " + " | ".join(values) + " |")
    original, compressed = (
        ", ".join(f"{title} {value}" for title, value in _figures(simulated[side], task, label))
        for side in ("original", "compressed")
    )
    lines += ["", f"PyTorch simulation ({task}): original {original}; compressed {compressed}."]
    quantized = metrics["int8"]
    if quantized:
        setup = (
            "dynamic (weights int8, activations quantized at run time)"
            if quantized["mode"] == "dynamic"
            else f"static QDQ, {quantized['method']} calibration on {quantized['calibration_samples']} samples"
        )
        path = quantized.get("path")
        if path:
            setup += f", {path['kernel']} (rule {path['rule']}{': set by the user' if path['overridden'] else ''})"
        lines += [
            "",
            "## Integer model",
            "",
            f"Quantization: {setup}.",
            "",
            "| layer | node | planned bits | stored as |",
            "|---|---|---:|---|",
        ]
        lines += [
            f"| {row['layer']} | `{row['node']}` | {row['bits'] or 'float'} | {row['storage']} |"
            for row in quantized["layers"]
        ]
        if quantized["notes"]:
            lines += ["", *(f"- {note}" for note in quantized["notes"])]
        if quantized.get("saturation"):
            lines += [
                "",
                "U8S8 without VNNI, against the exact integer sums (worst layers, on the evaluation data):",
                "",
                "| layer | pairs clipped | outputs changed | output change (relative L2) |",
                "|---|---:|---:|---:|",
                *(
                    f"| {row['layer'] or row['node']} | {row['saturated_pairs']:.4%} | {row['changed_outputs']:.2%} | "
                    f"{row['relative_error']:.3%} |"
                    for row in quantized["saturation"][:5]
                ),
            ]
        if runtime:
            lines += ["", "On this CPU:", "", *(f"- {note}" for note in int8_notes(cpu_from_record(runtime)))]
    lines += _weight_only_section(metrics.get("weight_only"))
    lines += [
        "",
        metrics_markdown(
            simulated, "PyTorch-simulated metrics", metrics.get("task"), metrics.get("metric_label")
        ).replace("# ", "## ", 1),
    ]
    return "\n".join(lines)


def _figures(fidelity: dict[str, Any], task: str, metric_label: str | None) -> list[tuple[str, str]]:
    """The headline figure, and exact match for sequences and ids, as (title, formatted value)."""
    key, value = headline(fidelity, task, metric_label)
    if key == quality.USER_METRIC:
        return [(str(metric_label), "n/a" if value is None else f"{value:.4g}")]
    figures = [(quality.metric_title(task, key), _percent(value))]
    if task in ("sequence", "ids"):
        figures.append((quality.metric_title(task, "exact_match"), _percent(fidelity.get("exact_match"))))
    return figures


def _percent(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.2f}%"
