"""Per-weight steps shared by the torch and ONNX transforms."""

from __future__ import annotations

import math

import torch

from compress_core.errors import CompressError
from compress_core.ops.prune import magnitude_mask, n_m_mask
from compress_core.plan.layer_config import PruneConfig


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
