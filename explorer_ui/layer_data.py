"""What the Layers page draws, computed from one layer's weight with ``compress_core.ops`` and ``analysis.teaching``.

Plain functions of arrays and ``LayerInfo``: no Streamlit (``cache`` wraps them). Bad settings
(for example 2:4 pruning of a weight whose input size is 9) raise ``CompressError``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from threadpoolctl import threadpool_limits

from compress_core import CompressError, LayerInfo, ModelHandle
from compress_core.analysis.teaching import grid_view
from compress_core.models.inventory import layer_weight_array
from compress_core.ops.lowrank import break_even_rank, conv_as_matrix
from compress_core.plan.layer_config import PruneConfig
from compress_core.transform.weights import prune_mask

MAX_MASK_ROWS = 128
MAX_MASK_COLUMNS = 512
"""The most cells the Layers page draws of a pruning mask: a larger one is drawn as block means."""
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
    values = gram_singular_values(matrix)
    squares = values.astype(np.float64) ** 2
    total = float(squares.sum())
    energy = np.cumsum(squares) / total if total > 0 else np.ones_like(squares)
    return {
        "singular_values": values,
        "energy": energy,
        "break_even": break_even_rank(*matrix.shape),
        "shape": tuple(matrix.shape),
    }


def gram_singular_values(matrix: torch.Tensor) -> np.ndarray:
    """The singular values of ``matrix`` [m, n], largest first (min(m, n) of them, float32), from the
    eigenvalues of its smaller Gram matrix in float64, on one BLAS thread.

    Several times faster than an SVD for the wide matrices of convolutions (a 384 x 1728 weight: about
    25 ms against 1 s), and as exact as a chart needs: a value is off by about ``1e-8 * largest`` at
    most, so only values that small lose their relative precision. One thread, because a 2-core
    machine busy with other work makes a multi-threaded LAPACK call of this size take seconds
    (threads waiting on each other) where one thread takes milliseconds.
    """
    double = matrix.detach().double().numpy()
    with threadpool_limits(1, user_api="blas"):
        gram = double @ double.T if double.shape[0] <= double.shape[1] else double.T @ double
        eigenvalues = np.linalg.eigvalsh(gram)[::-1].clip(min=0.0)
    return np.sqrt(eigenvalues).astype(np.float32)


def mask_view(weight: np.ndarray, out_axis: int, ratio: float, kind: str) -> dict[str, Any]:
    """The keep-mask of unstructured or N:M pruning (which ignores ``ratio``), as a matrix [out, in * kernel]
    of 0/1; a matrix larger than ``MAX_MASK_ROWS`` x ``MAX_MASK_COLUMNS`` comes as blocks (``block_mean``)."""
    try:
        mask = prune_mask(torch.from_numpy(weight), PruneConfig.with_kind(kind, ratio), out_axis)
    except ValueError as exc:  # CompressError is a ValueError too: keep its text either way
        raise CompressError(str(exc)) from exc
    matrix = weight_matrix(mask.float().numpy(), out_axis).numpy()
    shown, block = block_mean(matrix, MAX_MASK_ROWS, MAX_MASK_COLUMNS)
    return {"mask": shown, "kept": float(matrix.mean()), "block": block, "shape": matrix.shape}


def block_mean(matrix: np.ndarray, max_rows: int, max_columns: int) -> tuple[np.ndarray, tuple[int, int]]:
    """``matrix`` shrunk to at most ``max_rows`` x ``max_columns`` cells, each the mean of a block of
    (rows, columns) entries (the last blocks may be smaller), and that block size; as is when it fits."""
    rows, columns = matrix.shape
    block = (-(-rows // max_rows), -(-columns // max_columns))
    if block == (1, 1):
        return matrix, block
    height, width = -(-rows // block[0]), -(-columns // block[1])
    padded = np.full((height * block[0], width * block[1]), np.nan, dtype=np.float64)
    padded[:rows, :columns] = matrix
    blocks = padded.reshape(height, block[0], width, block[1])
    return np.nanmean(blocks, axis=(1, 3)), block


def layers_by_type(layers: list[LayerInfo]) -> list[dict[str, Any]]:
    """One row per layer type: how many layers, their parameters and MACs."""
    rows: dict[str, dict[str, Any]] = {}
    for layer in layers:
        row = rows.setdefault(layer.type, {"type": layer.type, "layers": 0, "params": 0, "macs": 0})
        row["layers"] += 1
        row["params"] += layer.params
        row["macs"] += layer.macs
    return list(rows.values())


def table_rows(layers: list[LayerInfo]) -> list[dict[str, Any]]:
    """The layer table's rows (``LayerInfo.to_dict`` without the per-channel lists)."""
    return [layer.to_dict(channels=False) for layer in layers]


def pattern_ratio(kind: str) -> float:
    """The fraction of weights an N:M pattern prunes (``2:4``: 0.5; ``1:4``: 0.75)."""
    return PruneConfig.with_kind(kind, 0.0).ratio


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
