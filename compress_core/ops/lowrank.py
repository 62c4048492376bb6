"""Low-rank factorisation: rank requests, singular values, truncated SVD and the conv split."""

from __future__ import annotations

import math

import torch

from compress_core.ops.checks import check_tensor, is_int, is_real


def resolve_rank(rank: int | float, full_rank: int) -> int:
    """Turn a rank request into an int in ``1..full_rank``.

    An int is used as is (must be in ``1..full_rank``); a float in (0, 1] is a fraction of
    ``full_rank``: ``max(1, round(rank * full_rank))``. Bools are rejected.
    """
    if not is_int(full_rank) or int(full_rank) < 1:
        raise ValueError(f"full_rank={full_rank!r} is not allowed; full_rank must be an int >= 1")
    full_rank = int(full_rank)
    if is_int(rank):
        r = int(rank)
        if not 1 <= r <= full_rank:
            raise ValueError(f"rank={r} is not allowed; an int rank must be in 1..{full_rank} (full rank)")
        return r
    if is_real(rank):
        frac = float(rank)
        if not (math.isfinite(frac) and 0.0 < frac <= 1.0):
            raise ValueError(f"rank={rank!r} is not allowed; a float rank is a fraction of full rank in (0, 1]")
        return max(1, int(round(frac * full_rank)))
    raise ValueError(f"rank={rank!r} is not allowed; use an int in 1..{full_rank} or a float fraction in (0, 1]")


def _check_matrix(name: str, matrix: object) -> torch.Tensor:
    matrix = check_tensor(name, matrix)
    if matrix.dim() != 2:
        raise ValueError(f"{name} must be 2-D, got shape {tuple(matrix.shape)}")
    return matrix


def singular_values(matrix: torch.Tensor) -> torch.Tensor:
    """Singular values of a 2-D ``matrix`` in descending order (float32, computed in float64)."""
    matrix = _check_matrix("matrix", matrix)
    return torch.linalg.svdvals(matrix.detach().double()).to(torch.float32)


def energy_kept(singular_values: torch.Tensor, rank: int) -> float:
    """Fraction of ``sum(s**2)`` held by the first ``rank`` singular values (1.0 for all zeros)."""
    s = check_tensor("singular_values", singular_values)
    if s.dim() != 1:
        raise ValueError(f"singular_values must be 1-D, got shape {tuple(s.shape)}")
    if not is_int(rank) or not 0 <= int(rank) <= s.numel():
        raise ValueError(f"rank={rank!r} is not allowed; rank must be an int in 0..{s.numel()}")
    sq = s.detach().double() ** 2
    total = float(sq.sum())
    if total == 0.0:
        return 1.0
    return float(sq[: int(rank)].sum()) / total


def truncated_svd(matrix: torch.Tensor, rank: int | float) -> tuple[torch.Tensor, torch.Tensor]:
    """Best rank-``r`` factorisation ``A @ B`` of ``matrix`` [m, n] (Eckart–Young).

    ``rank`` is resolved with :func:`resolve_rank` against ``min(m, n)``. Returns
    ``A = U_r sqrt(S_r)`` [m, r] and ``B = sqrt(S_r) V_r^T`` [r, n] (float32, computed in float64),
    so both factors carry the same scale.
    """
    matrix = _check_matrix("matrix", matrix)
    r = resolve_rank(rank, min(matrix.shape))
    u, s, vh = torch.linalg.svd(matrix.detach().double(), full_matrices=False)
    root = s[:r].sqrt()
    a = u[:, :r] * root[None, :]
    b = root[:, None] * vh[:r, :]
    return a.to(torch.float32), b.to(torch.float32)


def break_even_rank(out_features: int, in_features: int) -> int:
    """Largest ``r`` with ``r * (m + n) < m * n``: factorising at rank <= r saves parameters.

    Can be 0 (e.g. a 1x1 matrix), meaning no factorisation saves anything.
    """
    for name, value in (("out_features", out_features), ("in_features", in_features)):
        if not is_int(value) or int(value) < 1:
            raise ValueError(f"{name}={value!r} is not allowed; it must be an int >= 1")
    m, n = int(out_features), int(in_features)
    return (m * n - 1) // (m + n)


def conv_as_matrix(weight: torch.Tensor) -> torch.Tensor:
    """Reshape a conv weight ``[out, in, *k]`` to the float32 matrix ``[out, in * prod(k)]``."""
    weight = check_tensor("weight", weight, min_dim=2)
    return weight.detach().to(torch.float32).reshape(weight.shape[0], -1).clone()


def split_conv_weight(weight: torch.Tensor, rank: int | float) -> tuple[torch.Tensor, torch.Tensor]:
    """Split a conv ``[out, in, *k]`` into a ``*k`` conv with ``r`` filters then a 1x1 conv.

    Returns ``(first [r, in, *k], second [out, r, 1, ...])``: applying ``first`` (with the
    original stride/padding/dilation) then ``second`` (stride 1, no padding) equals the original
    conv with its weight replaced by the best rank-``r`` approximation of :func:`conv_as_matrix`.
    ``rank`` is resolved against ``min(out, in * prod(k))``. Not valid for grouped convolutions.
    """
    weight = check_tensor("weight", weight, min_dim=3)
    out_ch, in_ch, *kernel = weight.shape
    a, b = truncated_svd(conv_as_matrix(weight), rank)
    r = a.shape[1]
    first = b.reshape(r, in_ch, *kernel).contiguous()
    second = a.reshape(out_ch, r, *([1] * len(kernel))).contiguous()
    return first, second
