"""Per-weight steps shared by the torch and ONNX transforms."""

from __future__ import annotations

import torch

from .plan import PruneConfig
from .primitives import magnitude_mask, n_m_mask


def prune_mask(weight: torch.Tensor, prune: PruneConfig, out_axis: int) -> torch.Tensor:
    """The keep-mask of an unstructured or N:M prune; N:M groups run along the input axes."""
    nm = prune.n_m
    if nm is None:
        return magnitude_mask(weight, prune.ratio)
    moved = torch.movedim(weight, out_axis, 0)
    return torch.movedim(n_m_mask(moved, nm[0], nm[1], axis=1), 0, out_axis)
