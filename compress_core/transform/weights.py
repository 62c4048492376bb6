"""Per-weight steps shared by the torch and ONNX transforms."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from compress_core.errors import CompressError
from compress_core.ops.prune import magnitude_mask, n_m_mask
from compress_core.ops.quantize import QuantizedWeight, quantize_weight
from compress_core.plan.layer_config import LayerConfig, PruneConfig

TABLE_BLOCK = 16
"""Values per grid of an embedding table quantized per row (``granularity: channel``) in 4 bits or fewer:
each row is cut into blocks of 16 columns, each with its own grid, as ONNX Runtime's
``GatherBlockQuantized`` stores a table (``ort.block_quant``): 4 bits per value plus a float32 scale and
a 4-bit zero point per block, 6.25 bits per value in all. At 5 bits and more, and for a row whose length
is not a multiple of 16, each row has one grid (blocks would add a scale per 16 values, a quarter of an
8-bit table, for little gain). Measured on MiniLM's word embeddings in 4 bits (asymmetric), the rest of
its int8 recipe unchanged, min embedding cosine on the built-in sentences: 0.9878 per row, 0.9889 per
block of 32, 0.9915 per block of 16, the same as the float table."""
BLOCKED_MAX_BITS = 4


@dataclass(frozen=True, eq=False)
class TableQuantizedWeight(QuantizedWeight):
    """An embedding table quantized per block of ``block`` columns of each row: ``scale`` (and
    ``zero_point``, ``codebook``) hold one entry per block, row by row ([rows * columns / block])."""

    block: int = TABLE_BLOCK

    @property
    def groups(self) -> int:
        """How many grids the table has: one per block of every row."""
        return self.values.numel() // self.block

    def requantize(self, weight: torch.Tensor) -> QuantizedWeight:
        """``weight`` quantized per block of ``block`` columns of each row, as this table is."""
        return blocked_table(weight.detach(), self.bits, self.scheme, self.block)


def quantize_table(table: torch.Tensor, config: LayerConfig) -> QuantizedWeight:
    """Quantize an embedding table [rows, columns] as the plan says: per tensor, or per row (in blocks of
    ``TABLE_BLOCK`` columns at ``BLOCKED_MAX_BITS`` bits or fewer)."""
    assert config.bits is not None
    columns = table.shape[1]
    blocked = config.bits <= BLOCKED_MAX_BITS and columns % TABLE_BLOCK == 0 and columns > TABLE_BLOCK
    if config.granularity == "tensor" or not blocked:
        return quantize_weight(table, config.bits, config.scheme, config.granularity, axis=0)
    return blocked_table(table, config.bits, config.scheme, TABLE_BLOCK)


def blocked_table(table: torch.Tensor, bits: int, scheme: str, block: int) -> TableQuantizedWeight:
    """``table`` [rows, columns] quantized with one grid per ``block`` consecutive columns of each row."""
    grids = quantize_weight(table.reshape(-1, block), bits, scheme, "channel", axis=0)
    return TableQuantizedWeight(
        grids.values.reshape(table.shape),
        grids.bits,
        grids.scheme,
        "channel",
        0,
        grids.scale,
        grids.zero_point,
        grids.codebook,
        block,
    )


def prune_mask(weight: torch.Tensor, prune: PruneConfig, out_axis: int) -> torch.Tensor:
    """The keep-mask of an unstructured or N:M prune; N:M groups run along the input axes."""
    nm = prune.n_m
    if nm is None:
        return magnitude_mask(weight, prune.ratio)
    moved = torch.movedim(weight, out_axis, 0)
    return torch.movedim(n_m_mask(moved, nm[0], nm[1], axis=1), 0, out_axis)


def check_n_m_fits(where: str, prune: PruneConfig, shape: tuple[int, ...], out_axis: int) -> None:
    """Refuse an N:M prune of a weight whose input size (all but the output axis) is not a multiple of M.

    ``where`` names the layer (and the weight, when low-rank or structured pruning changed its shape).
    """
    nm = prune.n_m
    if nm is None:
        return
    in_size = math.prod(shape) // shape[out_axis]
    if in_size % nm[1]:
        raise CompressError(
            f"{where}: {prune.kind} pruning needs the input size ({in_size}) to be a multiple of {nm[1]}"
        )
