"""Metrics of a model and of its compressed copy: accuracy, fidelity, size and compute, in one call."""

from __future__ import annotations

import io
import math
import zipfile
from dataclasses import dataclass
from typing import Any

import numpy as np

from compress_core.models.handle import ModelHandle
from compress_core.models.inventory import LayerInfo, layer_inventory, total_params
from compress_core.ops.sqnr import sqnr_from_energies
from compress_core.ops.storage import FLOAT_BITS, index_bits, weight_bits

METRIC_KEYS = (
    "accuracy",
    "agreement",
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
    reference: np.ndarray, outputs: np.ndarray, labels: np.ndarray | None, task: str
) -> dict[str, float | None]:
    """Accuracy (labels and class outputs), top-1 agreement, mean cosine and SQNR (dB) of ``outputs``
    (``ops.sqnr.sqnr_from_energies``: ``-inf`` for an all-zero reference that ``outputs`` miss)."""
    reference = reference.reshape(len(reference), -1).astype(np.float64)
    outputs = outputs.reshape(len(outputs), -1).astype(np.float64)
    classes = task == "classification" and outputs.shape[1] > 1
    accuracy = float((outputs.argmax(1) == labels).mean()) if classes and labels is not None else None
    agreement = float((outputs.argmax(1) == reference.argmax(1)).mean()) if classes else None
    norms = np.linalg.norm(reference, axis=1) * np.linalg.norm(outputs, axis=1)
    cosine = float(np.mean(np.sum(reference * outputs, axis=1) / np.maximum(norms, 1e-12)))
    sqnr = sqnr_from_energies(float(np.sum(reference**2)), float(np.sum((reference - outputs) ** 2)))
    return {"accuracy": accuracy, "agreement": agreement, "cosine": cosine, "sqnr_db": sqnr}


def quality_metric(handle: ModelHandle, reference: np.ndarray, outputs: np.ndarray) -> float:
    """The one number to rank by: accuracy in % where labels exist, else agreement or cosine in %."""
    fidelity = output_fidelity(reference, outputs, handle.data.labels, handle.task)
    for key in ("accuracy", "agreement", "cosine"):
        value = fidelity[key]
        if value is not None:
            return 100.0 * value
    raise AssertionError("cosine is always defined")


def plan_bytes(handle: ModelHandle, layers: list[LayerInfo]) -> int:
    """Bytes to store the model at the plan's bit widths.

    Compressible layers: kept weights at their bit width, plus a one-bit-per-weight index for
    unstructured sparsity (ceil(log2(M)) bits per kept weight for N:M), plus scales (and zero points
    or codebooks). Everything else (biases, norms, embeddings) at 32 bits.
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
        total_bits += (
            weight_bits(kept, None, index=index) if q is None else weight_bits(kept, q.bits, q.scheme, q.groups, index)
        )
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
        **output_fidelity(reference, outputs, handle.data.labels, handle.task),
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
    """The original model's outputs on its evaluation data and its metrics, computed once."""

    reference: np.ndarray
    metrics: dict[str, Any]


def baseline(original: ModelHandle, with_zip: bool = True) -> Baseline:
    """Run the original once; pass the result to ``evaluate`` to compare many plans cheaply."""
    reference = original.run(original.data.inputs)
    return Baseline(reference, model_metrics(original, reference, reference, with_zip))


def evaluate(
    original: ModelHandle,
    compressed: ModelHandle | None = None,
    with_zip: bool = True,
    base: Baseline | None = None,
) -> dict[str, Any]:
    """``{"original": {...}, "compressed": {...}}`` (compressed only when given), with the keys of
    ``METRIC_KEYS``, plus ``layer_sqnr`` (per planned layer, dB) and ``notes`` for the compressed
    model. ``with_zip=False`` skips the ONNX export behind ``zip_bytes`` (it is then None); ``base``
    reuses the original's outputs and metrics from ``baseline``."""
    base = base or baseline(original, with_zip)
    result = {"original": dict(base.metrics)}
    if compressed is not None:
        metrics = model_metrics(compressed, base.reference, compressed.run(original.data.inputs), with_zip)
        result["compressed"] = {**metrics, **compression_details(compressed)}
    return result
