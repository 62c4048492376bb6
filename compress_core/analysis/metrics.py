"""Metrics of a model and of its compressed copy: accuracy, fidelity, size and compute, in one call."""

from __future__ import annotations

import io
import math
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from compress_core.analysis import quality
from compress_core.errors import CompressError
from compress_core.models.handle import ModelHandle
from compress_core.models.inventory import LayerInfo, layer_inventory, total_params
from compress_core.models.onnx_quantized import stored_bits
from compress_core.ops.storage import FLOAT_BITS, index_bits, weight_bits

METRIC_KEYS = (
    "accuracy",
    "agreement",
    "exact_match",
    "cosine",
    "sqnr_db",
    "params",
    "nonzero_params",
    "macs",
    "float_bytes",
    "plan_bytes",
    "zip_bytes",
)


def output_fidelity(
    reference: np.ndarray,
    outputs: np.ndarray,
    labels: np.ndarray | None,
    task: str,
    ctc_blank: int | None = None,
    similarity: bool = True,
) -> dict[str, float | None]:
    """``quality.fidelity`` of ``outputs`` for ``task``: accuracy (with labels), agreement and exact
    match as the task defines them, mean cosine and SQNR (dB; ``ops.sqnr.sqnr_from_energies``:
    ``-inf`` for an all-zero reference that ``outputs`` miss; None with ``similarity=False``)."""
    return quality.fidelity(task, reference, outputs, labels, ctc_blank, similarity)


def output_quality(handle: ModelHandle, reference: np.ndarray, outputs: np.ndarray) -> dict[str, float | None]:
    """``output_fidelity`` of the handle's ranked output with its task and ``quality`` settings, plus
    ``user_metric`` (the user's function's value) when the handle has one."""
    measured = output_fidelity(reference, outputs, handle.data.labels, handle.task, handle.quality.ctc_blank)
    metric = handle.quality.metric
    if metric is not None:
        measured[quality.USER_METRIC] = quality.call_user_metric(
            metric, _metric_name(handle, metric), reference, outputs, handle.data.labels
        )
    return measured


def user_metric_label(handle: ModelHandle) -> str | None:
    """The name of the handle's user metric (``file.py:function``), None without one."""
    metric = handle.quality.metric
    return None if metric is None else _metric_name(handle, metric)


def _metric_name(handle: ModelHandle, metric: quality.UserMetric) -> str:
    return handle.quality.metric_label or str(getattr(metric, "__name__", "user metric"))


def quality_ranking(handle: ModelHandle, reference: np.ndarray, outputs: np.ndarray) -> tuple[str, float]:
    """The name and value of the one number to rank by (``quality.quality_value``): the user metric
    as it is, else accuracy in % where labels exist, else agreement or cosine in %."""
    metric = handle.quality.metric
    if metric is None:
        labels, blank = handle.data.labels, handle.quality.ctc_blank
        # cosine ranks only where nothing else is defined: compute it only then (a sweep cell's saving)
        measured = output_fidelity(reference, outputs, labels, handle.task, blank, similarity=False)
        if quality.ranked_key(handle.task, measured) is None:
            measured = output_fidelity(reference, outputs, labels, handle.task, blank)
        return quality.quality_value(handle.task, measured)
    name = _metric_name(handle, metric)
    return name, quality.call_user_metric(metric, name, reference, outputs, handle.data.labels)


def quality_metric(handle: ModelHandle, reference: np.ndarray, outputs: np.ndarray) -> float:
    """The value of ``quality_ranking``: what sensitivity and ``suggest`` rank layers and plans by."""
    return quality_ranking(handle, reference, outputs)[1]


def per_output_fidelity(
    handle: ModelHandle, references: Sequence[np.ndarray], outputs: Sequence[np.ndarray]
) -> list[dict[str, Any]]:
    """Fidelity of each of a model's outputs: ``index``, ``task``, ``ranked`` and the fidelity keys.

    The ranked output (``quality.output``) is measured as ``output_quality`` does (the handle's task,
    labels, CTC blank and user metric); every other output with its detected task and no labels. An
    other output that cannot be compared (its shape changed) gets ``error`` and no figures, instead
    of failing the whole evaluation.
    """
    measured: list[dict[str, Any]] = []
    for index, (reference, output) in enumerate(zip(references, outputs, strict=True)):
        ranked = index == handle.quality.output
        task = handle.task if ranked else quality.detect_task(reference)
        row: dict[str, Any] = {"index": index, "task": task, "ranked": ranked}
        if ranked:
            row.update(output_quality(handle, reference, output))
        else:
            try:
                row.update(output_fidelity(reference, output, None, task))
            except CompressError as exc:
                row.update({**dict.fromkeys(quality.FIDELITY_KEYS), "error": str(exc)})
        measured.append(row)
    return measured


def plan_bytes(handle: ModelHandle, layers: list[LayerInfo]) -> int:
    """Bytes to store the model at the plan's bit widths.

    Compressible layers: kept weights at their bit width (the plan's, or the one an already-quantized
    file stores them at), plus a one-bit-per-weight index for unstructured sparsity (ceil(log2(M)) bits
    per kept weight for N:M), plus scales (and zero points or codebooks). Everything else (biases,
    norms) at 32 bits.
    """
    record = handle.compression
    quantized = record.quantized if record else {}
    masks = record.masks if record else {}
    nm_patterns = record.nm_patterns if record else {}
    layer_weights = sum(int(np.prod(layer.weight_shape)) for layer in layers)
    other = total_params(handle) - layer_weights
    total_bits = other * FLOAT_BITS
    for layer in layers:
        numel = int(np.prod(layer.weight_shape))
        mask = masks.get(layer.weight_name)
        kept = numel if mask is None else int(mask.sum())
        index = 0 if mask is None else index_bits(numel, kept, nm_patterns.get(layer.weight_name))
        q = quantized.get(layer.weight_name)
        if q is not None:
            total_bits += weight_bits(kept, q.bits, q.scheme, q.groups, index)
        else:  # float, or stored as integers by the file itself (an already-quantized model)
            total_bits += weight_bits(kept, stored_bits(layer.precision), "asymmetric", index=index)
    return math.ceil(total_bits / 8)


def zip_size(payload: bytes) -> int:
    """Size of a serialized ONNX model after zip (deflate) compression: sparse weights compress."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("model.onnx", payload)
    return len(buffer.getvalue())


def compression_zeros(handle: ModelHandle) -> int:
    """Weights the compression left at zero: pruned ones, and quantized ones that round to zero.

    A quantized weight's grid values are the stored weight (pruned entries stay exact zeros), so its
    zeros are counted there; a weight that is only pruned counts its mask's zeros.
    """
    record = handle.compression
    if record is None:
        return 0
    zeros = 0
    for name in record.masks.keys() | record.quantized.keys():
        quantized = record.quantized.get(name)
        zeros += int((quantized.values == 0).sum()) if quantized is not None else int((~record.masks[name]).sum())
    return zeros


def model_metrics(
    handle: ModelHandle, reference: np.ndarray, outputs: np.ndarray, with_zip: bool = True
) -> dict[str, Any]:
    """Fidelity of ``outputs`` to ``reference`` plus the handle's size and compute.

    Takes the handle's inventory, and exports it to ONNX for ``zip_bytes`` unless ``with_zip=False``;
    ``measure`` takes both from a caller that has them (``transform.pipeline``).
    """
    zipped = None
    if with_zip:
        from compress_core.ort.export import to_onnx

        zipped = zip_size(to_onnx(handle).SerializeToString())
    return measure(handle, reference, outputs, layer_inventory(handle), zipped)


def measure(
    handle: ModelHandle, reference: np.ndarray, outputs: np.ndarray, layers: list[LayerInfo], zipped: int | None
) -> dict[str, Any]:
    """``model_metrics`` from the handle's inventory ``layers`` and the zip size of its ONNX export
    (``zipped``, None to leave ``zip_bytes`` out)."""
    params = total_params(handle)
    return {
        **output_quality(handle, reference, outputs),
        "params": params,
        "nonzero_params": params - compression_zeros(handle),
        "macs": sum(layer.macs for layer in layers),
        "float_bytes": params * FLOAT_BITS // 8,
        "plan_bytes": plan_bytes(handle, layers),
        "zip_bytes": zipped,
    }


def compression_details(handle: ModelHandle) -> dict[str, Any]:
    """What a compressed model reports besides its metrics: ``layer_sqnr`` (per planned layer, dB) and ``notes``."""
    record = handle.compression
    return {"layer_sqnr": dict(record.layer_sqnr) if record else {}, "notes": list(record.notes) if record else []}


@dataclass(frozen=True)
class Baseline:
    """The original model's outputs on its evaluation data and its metrics, computed once.

    ``reference`` is the ranked output; ``outputs`` holds every output when the model has several
    (empty otherwise, or when the caller did not keep them)."""

    reference: np.ndarray
    metrics: dict[str, Any]
    outputs: tuple[np.ndarray, ...] = ()


def baseline(original: ModelHandle, with_zip: bool = True) -> Baseline:
    """Run the original once; pass the result to ``evaluate`` to compare many plans cheaply."""
    outputs = original.run_outputs(original.data.inputs)
    reference = outputs[original.quality.output]
    metrics = model_metrics(original, reference, reference, with_zip)
    if len(outputs) == 1:
        return Baseline(reference, metrics)
    metrics["outputs"] = per_output_fidelity(original, outputs, outputs)
    return Baseline(reference, metrics, tuple(outputs))


def evaluate(
    original: ModelHandle,
    compressed: ModelHandle | None = None,
    with_zip: bool = True,
    base: Baseline | None = None,
) -> dict[str, Any]:
    """``{"original": {...}, "compressed": {...}}`` (compressed only when given), with the keys of
    ``METRIC_KEYS``, plus ``layer_sqnr`` (per planned layer, dB) and ``notes`` for the compressed
    model. ``with_zip=False`` skips the ONNX export behind ``zip_bytes`` (it is then None); ``base``
    reuses the original's outputs and metrics from ``baseline``. A model with several outputs gets
    ``outputs`` on each side (``per_output_fidelity``); ``user_metric`` is there with a user metric."""
    base = base or baseline(original, with_zip)
    result = {"original": dict(base.metrics)}
    if compressed is not None:
        outputs = compressed.run_outputs(original.data.inputs)
        metrics = model_metrics(compressed, base.reference, outputs[compressed.quality.output], with_zip)
        if len(outputs) > 1:
            references = base.outputs or tuple(original.run_outputs(original.data.inputs))
            metrics["outputs"] = per_output_fidelity(compressed, references, outputs)
        result["compressed"] = {**metrics, **compression_details(compressed)}
    return result
