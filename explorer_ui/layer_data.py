"""What the Layers page draws, computed from one layer's weight with ``compress_core.ops.primitives``.

Plain functions of arrays and ``LayerInfo``: no Streamlit (``cache`` wraps them). Bad settings
(for example 2:4 pruning of a weight whose input size is 9) raise ``CompressError``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from compress_core import CompressError, LayerInfo, ModelHandle
from compress_core.models.inventory import layer_weight_array
from compress_core.plan import PruneConfig
from compress_core.ops.primitives import (
    break_even_rank,
    conv_as_matrix,
    energy_kept,
    quantize_weight,
    singular_values,
    sqnr_db,
)
from compress_core.ops.weights import prune_mask

OUTLIER_FACTOR = 3.0
"""A channel whose range exceeds this many times the median channel range is an outlier (as AIMET marks them)."""


def layer_weight(handle: ModelHandle, layer: LayerInfo) -> np.ndarray:
    """The layer's weight as a float32 array (a copy; the handle is not touched)."""
    return layer_weight_array(handle, layer)


def quantization_view(weight: np.ndarray, out_axis: int, bits: int, scheme: str, granularity: str, channel: int) -> dict[str, Any]:
    """The weights to histogram, the quantization levels over them, and the rounding errors.

    With per-channel granularity each output channel has its own grid, so the histogram and the
    levels are those of output channel ``channel``; per tensor they cover the whole weight.
    ``errors`` (quantized - original) and ``sqnr_db`` always cover the whole weight.
    """
    tensor = torch.from_numpy(weight)
    try:
        quantized = quantize_weight(tensor, bits, scheme, granularity, axis=out_axis)
        per_channel = granularity == "channel"
        levels = quantized.levels(channel if per_channel else None)
    except ValueError as exc:
        raise CompressError(str(exc)) from exc
    shown = np.take(weight, channel, axis=out_axis) if per_channel else weight
    return {
        "values": shown.ravel(),
        "levels": levels.numpy(),
        "errors": (quantized.values - tensor).numpy().ravel(),
        "sqnr_db": sqnr_db(tensor, quantized.values),
        "scope": f"output channel {channel}" if per_channel else "whole tensor",
    }


def channel_view(layer: LayerInfo) -> dict[str, Any]:
    """Per-output-channel min / max, the range of each, and which channels are outliers."""
    low = np.asarray(layer.channel_min)
    high = np.asarray(layer.channel_max)
    spread = high - low
    median = float(np.median(spread))
    outliers = spread > OUTLIER_FACTOR * median
    return {"min": low, "max": high, "range": spread, "median": median, "outliers": outliers}


def weight_matrix(weight: np.ndarray, out_axis: int) -> torch.Tensor:
    """The weight as a matrix [out, in * kernel] (output channels first)."""
    return conv_as_matrix(torch.from_numpy(np.moveaxis(weight, out_axis, 0).copy()))


def spectrum_view(weight: np.ndarray, out_axis: int) -> dict[str, Any]:
    """Singular values, the energy kept at each rank, and the break-even rank (fewer params below it)."""
    matrix = weight_matrix(weight, out_axis)
    values = singular_values(matrix)
    energy = [energy_kept(values, rank) for rank in range(1, values.numel() + 1)]
    return {
        "singular_values": values.numpy(),
        "energy": np.asarray(energy),
        "break_even": break_even_rank(*matrix.shape),
        "shape": tuple(matrix.shape),
    }


def mask_view(weight: np.ndarray, out_axis: int, ratio: float, kind: str) -> dict[str, Any]:
    """The keep-mask of unstructured or N:M pruning (which ignores ``ratio``), as a matrix [out, in * kernel] of 0/1."""
    try:
        mask = prune_mask(torch.from_numpy(weight), PruneConfig.with_kind(kind, ratio), out_axis)
    except ValueError as exc:  # CompressError is a ValueError too: keep its text either way
        raise CompressError(str(exc)) from exc
    matrix = weight_matrix(mask.float().numpy(), out_axis).numpy()
    return {"mask": matrix, "kept": float(matrix.mean())}


def layers_by_type(layers: list[LayerInfo]) -> list[dict[str, Any]]:
    """One row per layer type: how many layers, their parameters and MACs."""
    rows: dict[str, dict[str, Any]] = {}
    for layer in layers:
        row = rows.setdefault(layer.type, {"type": layer.type, "layers": 0, "params": 0, "macs": 0})
        row["layers"] += 1
        row["params"] += layer.params
        row["macs"] += layer.macs
    return list(rows.values())


def filter_layers(layers: list[LayerInfo], text: str, types: list[str]) -> list[LayerInfo]:
    """Layers whose name contains ``text`` (case-insensitive) and whose type is in ``types`` (all if empty)."""
    needle = text.strip().lower()
    return [layer for layer in layers if needle in layer.name.lower() and (not types or layer.type in types)]


def factor_params(shape: tuple[int, int], rank: int) -> tuple[int, int]:
    """(parameters of the two rank-``rank`` factors, parameters of the full matrix)."""
    rows, columns = shape
    return rank * (rows + columns), rows * columns
