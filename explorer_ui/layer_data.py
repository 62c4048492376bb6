"""What the Layers page draws, computed from one layer's weight with ``compress_core.ops`` and ``analysis.teaching``.

Plain functions of arrays and ``LayerInfo``: no Streamlit (``cache`` wraps them). Bad settings
(for example 2:4 pruning of a weight whose input size is 9) raise ``CompressError``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from compress_core import CompressError, LayerInfo, ModelHandle
from compress_core.analysis.teaching import grid_view
from compress_core.models.inventory import layer_weight_array
from compress_core.ops.lowrank import break_even_rank, conv_as_matrix, energy_kept, singular_values
from compress_core.plan.layer_config import PruneConfig
from compress_core.transform.weights import prune_mask

OUTLIER_FACTOR = 3.0
"""A channel whose range exceeds this many times the median channel range is an outlier (as AIMET marks them)."""


def layer_weight(handle: ModelHandle, layer: LayerInfo) -> np.ndarray:
    """The layer's weight as a float32 array (a copy; the handle is not touched)."""
    return layer_weight_array(handle, layer)


def quantization_view(
    weight: np.ndarray, out_axis: int, bits: int, scheme: str, granularity: str, channel: int
) -> dict[str, Any]:
    """``teaching.grid_view`` as the Layers page shows it: the weights and levels of output channel
    ``channel`` with per-channel granularity (each channel has its own grid), of the whole weight per
    tensor; ``errors`` (quantized - original, flat) and ``sqnr_db`` always cover the whole weight.
    """
    view = grid_view(weight, out_axis, bits, scheme, granularity, channel if granularity == "channel" else None)
    return {**view, "errors": view["errors"].ravel()}


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


def precision_summary(layers: list[LayerInfo]) -> str | None:
    """A sentence for a model whose file already stores layers as integers (None for a float model)."""
    quantized = [layer for layer in layers if layer.quantized]
    if not quantized:
        return None
    kinds = sorted({layer.precision for layer in quantized})
    return (
        f"This model is already quantized: {len(quantized)} of {len(layers)} layers are stored as integers "
        f"({', '.join(kinds)}). Their statistics and views are of the dequantized weights; a plan cannot change them."
    )


def precision_note(layer: LayerInfo) -> str | None:
    """What the Layers page says about a layer the file already stores as integers (None for a float one)."""
    if not layer.quantized:
        return None
    return (
        f"`{layer.name}` is already {layer.precision} in this file: the views below show its dequantized weights. "
        "A plan cannot change it; compress the float original instead, or leave the layer out of the plan."
    )
