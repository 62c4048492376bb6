"""Embedding tables stored as block-wise integers: ONNX Runtime's ``GatherBlockQuantized`` contrib op.

ONNX Runtime's quantizers do not fit embedding tables well (measured with onnxruntime 1.32):
``quantize_dynamic`` quantizes a ``Gather`` table per tensor, in 8 bits only (its integer-ops path has
no per-axis option for Gather), and ``MatMulNBitsQuantizer`` writes ``GatherBlockQuantized`` in 4 bits
only and moves the whole model to opset 21, which breaks graphs exported at opset 17 (MiniLM's
``ReduceL2`` keeps its ``axes`` attribute). So the op is written here: ``data`` uint8 (two 4-bit values
per byte, low nibble first, or one 8-bit value), ``scales`` float32 [rows, blocks], ``zero_points``
uint8 packed like the data, ``gather_axis`` 0, ``quantize_axis`` 1, ``block_size`` a power of two >= 16.
A row dequantizes as ``(q - zero_point) * scale`` block by block; ONNX Runtime's CPU kernel runs it
for 4 and 8 bits at any opset.

A table on the plan's uniform grid (``symmetric`` / ``asymmetric``, per row or per tensor) is stored
exactly: one block per row (``block_size`` the next power of two >= the row length) with the plan's
scale and zero point (``grid_codes``). Any other table is quantized block-wise with min/max per block
(``block_codes``), which approximates the plan's grid.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper

from compress_core.errors import CompressError
from compress_core.ops.quantize import QuantizedWeight

MIN_BLOCK = 16
MS_DOMAIN = "com.microsoft"
UNIFORM_SCHEMES = ("symmetric", "asymmetric")


@dataclass(frozen=True)
class BlockCodes:
    """A table as block-wise integers: ``codes`` uint8 [rows, cols] (unpacked), ``scales`` float32 and
    ``zero_points`` uint8 [rows, blocks], in ``bits`` (4 or 8) with ``block_size`` columns per block;
    ``exact`` when the codes hold the table's values exactly (the plan's own grid)."""

    codes: np.ndarray
    scales: np.ndarray
    zero_points: np.ndarray
    bits: int
    block_size: int
    exact: bool

    def dequantized(self) -> np.ndarray:
        """The float32 table the codes stand for (what ``GatherBlockQuantized`` returns for each row)."""
        columns = self.codes.shape[1]
        zero = np.repeat(self.zero_points.astype(np.float32), self.block_size, axis=1)[:, :columns]
        scale = np.repeat(self.scales, self.block_size, axis=1)[:, :columns]
        return ((self.codes.astype(np.float32) - zero) * scale).astype(np.float32)


def storage_bits(bits: int, columns: int = 0) -> int:
    """The storage width of a plan's bit width: 4 for 2-4 bits, 8 above (16 is approximated in 8). A
    table with an odd number of ``columns`` is stored in 8 bits: ONNX Runtime reads a row of packed
    4-bit codes as twice its bytes."""
    return 4 if bits <= 4 and columns % 2 == 0 else 8


def check_block_size(block_size: object, what: str = "block size") -> int:
    """``block_size`` as an int, or ``CompressError``: ONNX Runtime's block-wise ops take a power of two >= 16."""
    if (
        isinstance(block_size, bool)
        or not isinstance(block_size, int)
        or block_size < MIN_BLOCK
        or block_size & (block_size - 1)
    ):
        raise CompressError(
            f"{what} {block_size!r} is not allowed; use a power of two >= {MIN_BLOCK} (16, 32, 64, 128, ...)"
        )
    return block_size


def row_block(columns: int) -> int:
    """The smallest allowed block size that covers a whole row of ``columns`` values (one block per row)."""
    return max(MIN_BLOCK, 1 << max(columns - 1, 0).bit_length())


def block_codes(table: np.ndarray, bits: int, block_size: int) -> BlockCodes:
    """Asymmetric min/max codes per block of ``block_size`` columns (each range widened to hold zero,
    so an exact zero stays zero), in ``bits`` (4 or 8)."""
    rows, columns = table.shape
    blocks = -(-columns // block_size)
    padded = np.zeros((rows, blocks * block_size), dtype=np.float64)
    padded[:, :columns] = table
    grouped = padded.reshape(rows, blocks, block_size)
    low = np.minimum(grouped.min(axis=2), 0.0)
    high = np.maximum(grouped.max(axis=2), 0.0)
    top = 2**bits - 1
    scales = np.where(high > low, (high - low) / top, 1.0)
    zero = np.clip(np.round(-low / scales), 0, top)
    codes = np.clip(np.round(grouped / scales[..., None]) + zero[..., None], 0, top)
    return BlockCodes(
        codes.reshape(rows, -1)[:, :columns].astype(np.uint8),
        scales.astype(np.float32),
        zero.astype(np.uint8),
        bits,
        block_size,
        exact=False,
    )


def grid_codes(table: np.ndarray, grid: QuantizedWeight, bits: int) -> BlockCodes | None:
    """The table's codes on the plan's own uniform grid (rows on axis 0: per tensor, per row, or per
    block of a row as ``transform.weights.TableQuantizedWeight``), stored in ``bits`` (4 or 8); None
    when the grid is not uniform, is wider than the storage, or the table does not lie on it (then
    ``block_codes`` approximates it)."""
    if grid.scheme not in UNIFORM_SCHEMES or grid.bits > bits or grid.axis != 0 or grid.scale is None:
        return None
    rows, columns = table.shape
    block = getattr(grid, "block", None)
    if block is None or block < MIN_BLOCK or block & (block - 1):
        block = row_block(columns)
    blocks = -(-columns // block)
    scale = _per_block(grid.scale.double().numpy(), rows, blocks)
    scale = np.where(scale > 0, scale, 1.0)
    if grid.scheme == "asymmetric" and grid.zero_point is not None:
        zero = _per_block(grid.zero_point.numpy().astype(np.int64), rows, blocks)
    else:
        zero = np.full((rows, blocks), 2 ** (bits - 1), dtype=np.int64)
    wide_scale = np.repeat(scale, block, axis=1)[:, :columns]
    wide_zero = np.repeat(zero, block, axis=1)[:, :columns]
    codes = np.round(table.astype(np.float64) / wide_scale) + wide_zero
    if codes.min() < 0 or codes.max() > 2**bits - 1:
        return None
    result = BlockCodes(
        codes.astype(np.uint8), scale.astype(np.float32), zero.astype(np.uint8), bits, block, exact=True
    )
    tolerance = 1e-5 * float(np.abs(table).max() or 1.0)
    return result if np.abs(result.dequantized() - table).max() <= tolerance else None


def _per_block(values: np.ndarray, rows: int, blocks: int) -> np.ndarray:
    """A grid's scales or zero points (one for the tensor, or one per row or per block) as [rows, blocks]."""
    if values.size == 1:
        return np.full((rows, blocks), values.reshape(()).item(), dtype=values.dtype)
    return np.broadcast_to(values.reshape(rows, -1), (rows, blocks)).copy()


def pack_nibbles(values: np.ndarray) -> np.ndarray:
    """uint8 values < 16, [rows, cols] -> [rows, ceil(cols / 2)] with two per byte, low nibble first."""
    if values.shape[1] % 2:
        values = np.pad(values, ((0, 0), (0, 1)))
    return (values[:, 0::2] | (values[:, 1::2] << 4)).astype(np.uint8)


def replace_gather(model: onnx.ModelProto, node_name: str, codes: BlockCodes) -> None:
    """Replace ``Gather`` node ``node_name`` (axis 0 on a constant table) by ``GatherBlockQuantized``
    reading ``codes``, in place; the float table is removed once nothing else reads it."""
    index, node = next((i, n) for i, n in enumerate(model.graph.node) if n.name == node_name)
    table = node.input[0]
    pack = pack_nibbles if codes.bits == 4 else (lambda array: array)
    stored = {
        f"{table}_q{codes.bits}": pack(codes.codes),
        f"{table}_scales": codes.scales,
        f"{table}_zero_points": pack(codes.zero_points),
    }
    model.graph.initializer.extend(numpy_helper.from_array(array, name) for name, array in stored.items())
    names = list(stored)
    replacement = helper.make_node(
        "GatherBlockQuantized",
        [names[0], node.input[1], names[1], names[2]],
        list(node.output),
        name=node.name,
        domain=MS_DOMAIN,
        gather_axis=0,
        quantize_axis=1,
        block_size=codes.block_size,
        bits=codes.bits,
    )
    del model.graph.node[index]
    model.graph.node.insert(index, replacement)
    if not any(table in n.input for n in model.graph.node):
        kept = [init for init in model.graph.initializer if init.name != table]
        del model.graph.initializer[:]
        model.graph.initializer.extend(kept)
    if not any(entry.domain == MS_DOMAIN for entry in model.opset_import):
        model.opset_import.append(helper.make_opsetid(MS_DOMAIN, 1))


def table_codes(table: np.ndarray, grid: QuantizedWeight, block_size: int) -> BlockCodes:
    """The codes of an embedding table the plan quantized (``grid``: its ``QuantizedWeight``): exact on
    the plan's grid where it is uniform and fits the storage, else min/max per block of ``block_size``."""
    bits = storage_bits(grid.bits, table.shape[1])
    return grid_codes(table, grid, bits) or block_codes(table, bits, block_size)
