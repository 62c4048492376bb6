"""How many bits a compressed weight takes to store: the one count behind the plan's size.

A weight stores its kept values at its bit width (float32 when it is not quantized), the index of its
sparsity, and its quantization grid. The grid has one group per output channel (``channel``
granularity) or one for the tensor, and each group stores:

* ``symmetric``: a float32 scale;
* ``asymmetric``: a float32 scale and an 8-bit zero point;
* ``pow2``: a float32 scale (the unit levels ``0, ±2**-k`` are the same for every weight, not stored);
* ``kmeans``: a codebook of ``2**bits`` float32 centroids (each weight stores its ``bits``-wide index).
"""

from __future__ import annotations

import math

FLOAT_BITS = 32
SCALE_BYTES = 4
ZERO_POINT_BYTES = 1
CODEBOOK_ENTRY_BYTES = 4


def grid_bytes(scheme: str, bits: int, groups: int) -> int:
    """Bytes of the quantization grid of a weight quantized with ``scheme`` at ``bits`` in ``groups`` groups."""
    if scheme == "kmeans":
        return groups * 2**bits * CODEBOOK_ENTRY_BYTES
    return groups * (SCALE_BYTES + (ZERO_POINT_BYTES if scheme == "asymmetric" else 0))


def index_bits(numel: int, kept: int, n_m: tuple[int, int] | None = None) -> int:
    """Bits of a sparsity index: one per weight for a mask, ``ceil(log2(M))`` per kept weight for N:M."""
    return kept * math.ceil(math.log2(n_m[1])) if n_m else numel


def weight_bits(kept: int, bits: int | None, scheme: str = "symmetric", groups: int = 1, index: int = 0) -> int:
    """Stored bits of one weight: ``kept`` values at ``bits`` (None: float32), plus ``index`` bits of
    sparsity index, plus the grid (``grid_bytes``) when it is quantized."""
    if bits is None:
        return kept * FLOAT_BITS + index
    return kept * bits + index + 8 * grid_bytes(scheme, bits, groups)
