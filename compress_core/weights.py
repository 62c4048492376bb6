"""Per-weight steps shared by the torch and ONNX transforms."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from .plan import PruneConfig
from .primitives import magnitude_mask, n_m_mask

if TYPE_CHECKING:  # the inventory may use this module, so no import at run time
    from .inventory import LayerInfo

TRANSPOSED_CONV_PREFIX = "ConvTranspose"


def output_axis(layer: LayerInfo) -> int:
    """The axis of the layer's weight that holds its output channels.

    A torch ``ConvTranspose*`` weight is ``[in, out / groups, *kernel]``: axis 1. Every other layer
    takes ``layer.out_axis`` (0 for torch weights; 0 or 1 for an ONNX Gemm / MatMul).
    """
    return 1 if layer.type.startswith(TRANSPOSED_CONV_PREFIX) else layer.out_axis


def prune_mask(weight: torch.Tensor, prune: PruneConfig, out_axis: int) -> torch.Tensor:
    """The keep-mask of an unstructured or N:M prune; N:M groups run along the input axes."""
    nm = prune.n_m
    if nm is None:
        return magnitude_mask(weight, prune.ratio)
    moved = torch.movedim(weight, out_axis, 0)
    return torch.movedim(n_m_mask(moved, nm[0], nm[1], axis=1), 0, out_axis)
