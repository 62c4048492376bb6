"""Pure tensor primitives for quantization, pruning and low-rank factorisation.

Every function here works on plain ``torch`` tensors: no model walking, no I/O, no global state.
Inputs are never modified; results are new float32 tensors (``QuantizedWeight.values`` keeps the
input's floating dtype). Bad arguments raise ``ValueError`` with a message that names the value and
what is allowed.

Quantizers (``quantize_weight``) follow the affine formulas of torchao's ``quantize_affine``:

* ``symmetric``  – ``q = clamp(round(w / s), -qmax, qmax)``, ``s = absmax / qmax``,
  ``qmax = 2**(bits-1) - 1``; dequantized ``q * s``.
* ``asymmetric`` – ``q = clamp(round(w / s) + zp, 0, 2**bits - 1)`` with the range widened to
  include zero, ``s = (r_max - r_min) / (2**bits - 1)``, ``zp = round(-r_min / s)``;
  dequantized ``(q - zp) * s``.
* ``pow2``       – levels ``0, ±absmax * 2**-k`` for ``k = 0 .. 2**(bits-1) - 2``.
* ``kmeans``     – Deep Compression weight sharing: 1-D Lloyd's k-means, linear initialisation.

All of them map an exact zero to an exact zero, so pruned weights stay pruned. ``torch.round``
rounds half to even; ``pow2`` and ``kmeans`` break exact ties between two levels towards the level
of smaller magnitude (so ``q(-w) == -q(w)`` for ``pow2``).
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

import torch

__all__ = [
    "ALLOWED_BITS",
    "GRANULARITIES",
    "KMEANS_MAX_ITERATIONS",
    "SCHEMES",
    "QuantizedWeight",
    "break_even_rank",
    "channel_scores",
    "channels_to_prune",
    "conv_as_matrix",
    "energy_kept",
    "magnitude_mask",
    "n_m_mask",
    "quantize_weight",
    "resolve_rank",
    "singular_values",
    "split_conv_weight",
    "sqnr_db",
    "sqnr_from_energies",
    "truncated_svd",
]

ALLOWED_BITS: tuple[int, ...] = (2, 3, 4, 5, 6, 7, 8, 16)
SCHEMES: tuple[str, ...] = ("symmetric", "asymmetric", "pow2", "kmeans")
GRANULARITIES: tuple[str, ...] = ("channel", "tensor")
KMEANS_MAX_ITERATIONS: int = 25
"""Iteration cap of Lloyd's algorithm in the ``kmeans`` scheme (it stops earlier on convergence)."""


# --------------------------------------------------------------------------------------------
# validation helpers
# --------------------------------------------------------------------------------------------


def _is_int(value: object) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_real(value: object) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _check_tensor(name: str, value: object, *, min_dim: int = 0) -> torch.Tensor:
    """Return ``value`` if it is a finite, non-empty floating tensor with ``>= min_dim`` dims."""
    if not isinstance(value, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    if not value.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got dtype {value.dtype}")
    if value.dim() < min_dim:
        raise ValueError(
            f"{name} must have at least {min_dim} dimension(s), got shape {tuple(value.shape)}"
        )
    if value.numel() == 0:
        raise ValueError(f"{name} must not be empty, got shape {tuple(value.shape)}")
    if not bool(torch.isfinite(value).all()):
        raise ValueError(f"{name} contains NaN or infinite values; only finite values are allowed")
    return value


def _check_axis(axis: object, ndim: int, name: str = "axis") -> int:
    if not _is_int(axis):
        raise ValueError(f"{name} must be an int, got {axis!r}")
    axis = int(axis)  # type: ignore[arg-type]
    if not -ndim <= axis < ndim:
        raise ValueError(
            f"{name}={axis} is out of range for a {ndim}-D tensor (allowed {-ndim}..{ndim - 1})"
        )
    return axis % ndim


def _check_ratio(ratio: object) -> float:
    if not _is_real(ratio) or not 0.0 <= float(ratio) < 1.0:  # type: ignore[arg-type]
        raise ValueError(f"ratio={ratio!r} is not allowed; ratio must be a number in [0, 1)")
    return float(ratio)  # type: ignore[arg-type]


def _rows(weight: torch.Tensor, granularity: str, axis: int) -> torch.Tensor:
    """View ``weight`` as [groups, elements]: one row per channel along ``axis``, or one row."""
    if granularity == "tensor":
        return weight.reshape(1, -1)
    return weight.movedim(axis, 0).reshape(weight.shape[axis], -1)


def _unrows(rows: torch.Tensor, like: torch.Tensor, granularity: str, axis: int) -> torch.Tensor:
    """Inverse of :func:`_rows`."""
    if granularity == "tensor":
        return rows.reshape(like.shape)
    moved_shape = like.movedim(axis, 0).shape
    return rows.reshape(moved_shape).movedim(0, axis).contiguous()


# --------------------------------------------------------------------------------------------
# quantization
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class QuantizedWeight:
    """The result of :func:`quantize_weight`.

    Attributes:
        values: dequantized weight, same shape and dtype as the input.
        bits, scheme, granularity, axis: the arguments used (``axis`` normalised to >= 0).
        scale: float32; shape ``[C]`` (one per channel along ``axis``) for ``"channel"``, a 0-d
            tensor for ``"tensor"``. ``symmetric``/``asymmetric``: the step size; ``pow2``: the
            absmax (largest level). ``None`` for ``kmeans``.
        zero_point: int32 tensor shaped like ``scale`` for ``asymmetric``, else ``None``.
        codebook: sorted levels. ``pow2``: the unit levels ``0, ±2**-k`` shared by every channel
            (multiply by ``scale`` to get real values), shape ``[2**bits - 1]``. ``kmeans``: the
            centroids, shape ``[2**bits]`` (``"tensor"``) or ``[C, 2**bits]`` (``"channel"``);
            may hold duplicates when there are fewer distinct weights than centroids. ``None``
            for the uniform schemes.
    """

    values: torch.Tensor
    bits: int
    scheme: str
    granularity: str
    axis: int
    scale: torch.Tensor | None
    zero_point: torch.Tensor | None
    codebook: torch.Tensor | None

    def levels(self, channel: int | None = None) -> torch.Tensor:
        """Sorted, distinct representable values (float32) of the tensor or of one channel.

        ``channel`` is required for ``"channel"`` granularity; for ``"tensor"`` granularity it
        may be omitted (all channels share the same grid).
        """
        n_channels = self.values.shape[self.axis] if self.values.dim() > 0 else 1
        if channel is None:
            if self.granularity == "channel":
                raise ValueError(
                    "levels() needs a channel index for per-channel quantization "
                    f"(allowed 0..{n_channels - 1})"
                )
            row = 0
        else:
            if not _is_int(channel) or not 0 <= int(channel) < n_channels:
                raise ValueError(
                    f"channel={channel!r} is out of range; allowed 0..{n_channels - 1}"
                )
            row = int(channel) if self.granularity == "channel" else 0

        def pick(t: torch.Tensor) -> torch.Tensor:
            return t.reshape(-1)[row] if self.granularity == "channel" else t.reshape(())

        if self.scheme == "symmetric":
            assert self.scale is not None
            qmax = 2 ** (self.bits - 1) - 1
            q = torch.arange(-qmax, qmax + 1, dtype=torch.float32)
            return torch.unique(q * pick(self.scale))
        if self.scheme == "asymmetric":
            assert self.scale is not None and self.zero_point is not None
            q = torch.arange(0, 2**self.bits, dtype=torch.float32)
            return torch.unique((q - pick(self.zero_point).to(torch.float32)) * pick(self.scale))
        if self.scheme == "pow2":
            assert self.scale is not None and self.codebook is not None
            return torch.unique(self.codebook * pick(self.scale))
        assert self.codebook is not None
        book = self.codebook[row] if self.granularity == "channel" else self.codebook
        return torch.unique(book)


def _nearest(x: torch.Tensor, book: torch.Tensor) -> torch.Tensor:
    """Index of the nearest entry of the sorted ``book`` for every element of ``x``.

    ``x`` is [G, N]; ``book`` is [K] (shared) or [G, K] (one sorted codebook per row). Uses a
    binary search plus a comparison of the two neighbours, so memory is O(N), not O(N*K).
    Exact ties go to the neighbour of smaller magnitude.
    """
    k = book.shape[-1]
    if book.dim() == 2 and book.shape[0] == 1:
        book = book[0]
    if book.dim() == 1:
        pos = torch.bucketize(x, book)
        hi = pos.clamp(max=k - 1)
        lo = (pos - 1).clamp(min=0)
        v_hi, v_lo = book[hi], book[lo]
    else:
        pos = torch.searchsorted(book, x)
        hi = pos.clamp(max=k - 1)
        lo = (pos - 1).clamp(min=0)
        v_hi, v_lo = book.gather(1, hi), book.gather(1, lo)
    d_hi, d_lo = (x - v_hi).abs(), (x - v_lo).abs()
    take_hi = (d_hi < d_lo) | ((d_hi == d_lo) & (v_hi.abs() < v_lo.abs()))
    return torch.where(take_hi, hi, lo)


def _kmeans_codebook(rows: torch.Tensor, n_centroids: int) -> torch.Tensor:
    """Sorted centroids [G, K] of 1-D Lloyd's k-means run independently on each row of ``rows``.

    Only non-zero entries are clustered. A row that contains zeros gets ``K - 1`` free centroids
    plus one centroid pinned at exactly 0 (so the row still uses at most ``K`` distinct values and
    its zeros stay zero); other rows get ``K`` free centroids. Free centroids start linearly spaced
    between the row's smallest and largest non-zero weight. Deterministic.
    """
    g, _ = rows.shape
    k = n_centroids
    nonzero = rows != 0
    has_zero = (~nonzero).any(dim=1)
    any_nonzero = nonzero.any(dim=1)
    inf = torch.tensor(float("inf"), dtype=rows.dtype)
    lo = torch.where(nonzero, rows, inf).amin(dim=1)
    hi = torch.where(nonzero, rows, -inf).amax(dim=1)
    lo = torch.where(any_nonzero, lo, torch.zeros_like(lo)).double()
    hi = torch.where(any_nonzero, hi, torch.zeros_like(hi)).double()

    n_free = (k - has_zero.long()).double()  # [G]
    j = torch.arange(k, dtype=torch.float64)  # [K]
    t = j[None, :] / (n_free[:, None] - 1)
    init = lo[:, None] + (hi - lo)[:, None] * t
    init = torch.where(t >= 1, hi[:, None].expand_as(init), init)  # exact endpoint
    pinned = has_zero[:, None] & (j[None, :] == k - 1)
    centroids = torch.where(pinned, torch.zeros_like(init), init)
    centroids, order = torch.sort(centroids, dim=1, stable=True)
    pinned = pinned.gather(1, order)

    # 1-D Lloyd on sorted data: a cluster is a contiguous run of the sorted row, found by
    # binary-searching the midpoints between centroids; its sum and count come from prefix sums.
    # Each iteration is O(G * K * log N) after one O(N log N) sort.
    sorted_rows = torch.sort(rows.double(), dim=1).values
    mask = (sorted_rows != 0).double()
    zeros_col = torch.zeros(g, 1, dtype=torch.float64)
    csum = torch.cat([zeros_col, torch.cumsum(sorted_rows * mask, dim=1)], dim=1)  # [G, N+1]
    ccount = torch.cat([zeros_col, torch.cumsum(mask, dim=1)], dim=1)
    n = rows.shape[1]
    ends = torch.full((g, 1), n, dtype=torch.long)
    starts = torch.zeros((g, 1), dtype=torch.long)
    for _ in range(KMEANS_MAX_ITERATIONS):
        mids = (centroids[:, 1:] + centroids[:, :-1]) / 2
        cuts = torch.searchsorted(sorted_rows, mids.contiguous())  # [G, K-1]
        bounds = torch.cat([starts, cuts, ends], dim=1)  # [G, K+1]
        sums = csum.gather(1, bounds[:, 1:]) - csum.gather(1, bounds[:, :-1])
        counts = ccount.gather(1, bounds[:, 1:]) - ccount.gather(1, bounds[:, :-1])
        updated = torch.where(counts > 0, sums / counts.clamp(min=1), centroids)
        updated = torch.where(pinned, torch.zeros_like(updated), updated)
        updated, order = torch.sort(updated, dim=1, stable=True)
        pinned = pinned.gather(1, order)
        if torch.equal(updated, centroids):
            break
        centroids = updated
    return centroids.to(torch.float32)


def quantize_weight(
    weight: torch.Tensor,
    bits: int,
    scheme: str = "symmetric",
    granularity: str = "channel",
    axis: int = 0,
) -> QuantizedWeight:
    """Quantize ``weight`` to ``bits`` bits and return the dequantized result with its grid.

    Args:
        weight: floating tensor (not modified). Computation is done in float32.
        bits: 2..8 or 16 (``kmeans``: 2..8 only).
        scheme: ``"symmetric"``, ``"asymmetric"``, ``"pow2"`` or ``"kmeans"`` (see module doc).
        granularity: ``"channel"`` (one range / codebook per slice along ``axis``) or ``"tensor"``.
            ``kmeans`` supports both (per channel: one codebook of ``2**bits`` centroids per
            channel, all channels clustered in one batched Lloyd's run).
        axis: the output-channel axis used by ``"channel"`` granularity.

    Returns:
        :class:`QuantizedWeight`. Exact zeros of ``weight`` are exact zeros of ``values``.
    """
    weight = _check_tensor("weight", weight)
    if not _is_int(bits) or int(bits) not in ALLOWED_BITS:
        raise ValueError(f"bits={bits!r} is not allowed; bits must be an int in 2..8 or 16")
    bits = int(bits)
    if not isinstance(scheme, str) or scheme not in SCHEMES:
        raise ValueError(f"scheme={scheme!r} is not allowed; choose one of {', '.join(SCHEMES)}")
    if scheme == "kmeans" and bits > 8:
        raise ValueError(
            f"bits={bits} is not allowed with scheme='kmeans'; kmeans supports bits 2..8 "
            "(a 65536-entry codebook is no longer weight sharing)"
        )
    if not isinstance(granularity, str) or granularity not in GRANULARITIES:
        raise ValueError(
            f"granularity={granularity!r} is not allowed; choose one of {', '.join(GRANULARITIES)}"
        )
    if granularity == "channel":
        if weight.dim() == 0:
            raise ValueError(
                "granularity='channel' needs a weight with at least 1 dimension, got a 0-d tensor"
            )
        axis = _check_axis(axis, weight.dim())
    else:
        axis = _check_axis(axis, weight.dim()) if weight.dim() > 0 else 0

    w = weight.detach().to(torch.float32)
    rows = _rows(w, granularity, axis)  # [G, N]; a view or copy, never written to
    absmax = rows.abs().amax(dim=1)  # [G]
    scale: torch.Tensor | None = None
    zero_point: torch.Tensor | None = None
    codebook: torch.Tensor | None = None

    if scheme == "symmetric":
        qmax = 2 ** (bits - 1) - 1
        scale = torch.where(absmax > 0, absmax / qmax, torch.ones_like(absmax))
        q = torch.clamp(torch.round(rows / scale[:, None]), -qmax, qmax)
        out = q * scale[:, None]
    elif scheme == "asymmetric":
        qmax = 2**bits - 1
        r_min = rows.amin(dim=1).clamp(max=0.0)
        r_max = rows.amax(dim=1).clamp(min=0.0)
        span = r_max - r_min
        scale = torch.where(span > 0, span / qmax, torch.ones_like(span))
        zp = torch.round(-r_min / scale).clamp(0, qmax)
        q = torch.clamp(torch.round(rows / scale[:, None]) + zp[:, None], 0, qmax)
        out = (q - zp[:, None]) * scale[:, None]
        zero_point = zp.to(torch.int32)
    elif scheme == "pow2":
        n_mag = 2 ** (bits - 1) - 1  # magnitudes 2**-0 .. 2**-(n_mag-1)
        exps = -torch.arange(n_mag, dtype=torch.float32)
        mags = torch.unique(torch.pow(2.0, exps))  # float32 underflow merges tiny ones into 0
        mags = mags[mags > 0]
        codebook = torch.cat([-mags.flip(0), torch.zeros(1), mags])
        scale = torch.where(absmax > 0, absmax, torch.ones_like(absmax))
        book = codebook[None, :] * scale[:, None]  # [G, K], sorted because scale > 0
        out = book.gather(1, _nearest(rows, book.contiguous()))
    else:  # kmeans
        book = _kmeans_codebook(rows, 2**bits)
        out = book.gather(1, _nearest(rows, book))
        codebook = book[0] if granularity == "tensor" else book

    if scale is not None and granularity == "tensor":
        scale = scale.reshape(())
        if zero_point is not None:
            zero_point = zero_point.reshape(())
    values = _unrows(out, w, granularity, axis).to(weight.dtype)
    return QuantizedWeight(
        values=values,
        bits=bits,
        scheme=scheme,
        granularity=granularity,
        axis=axis,
        scale=scale,
        zero_point=zero_point,
        codebook=codebook,
    )


def sqnr_db(reference: torch.Tensor, approximation: torch.Tensor) -> float:
    """Signal-to-quantization-noise ratio ``10*log10(sum(ref**2) / sum((ref - approx)**2))`` in dB.

    ``inf`` when the tensors are identical, ``-inf`` when the reference is all zeros but the
    approximation is not (see :func:`sqnr_from_energies`). Computed in float64.
    """
    reference = _check_tensor("reference", reference)
    approximation = _check_tensor("approximation", approximation)
    if reference.shape != approximation.shape:
        raise ValueError(
            f"approximation shape {tuple(approximation.shape)} does not match reference shape "
            f"{tuple(reference.shape)}; they must be equal"
        )
    ref = reference.detach().double()
    noise = float(((ref - approximation.detach().double()) ** 2).sum())
    return sqnr_from_energies(float((ref**2).sum()), noise)


def sqnr_from_energies(signal: float, noise: float) -> float:
    """``10*log10(signal / noise)`` in dB, the one SQNR definition of the project (weights and outputs).

    Defined everywhere: ``inf`` when the noise is zero (an exact copy, even of all zeros), ``-inf``
    when the signal is zero but the noise is not (an all-zero reference approximated by anything
    else), NaN when either energy is NaN.
    """
    if math.isnan(signal) or math.isnan(noise):
        return math.nan
    if noise == 0.0:
        return math.inf
    if signal == 0.0:
        return -math.inf
    return 10.0 * math.log10(signal / noise)


# --------------------------------------------------------------------------------------------
# pruning
# --------------------------------------------------------------------------------------------


def magnitude_mask(weight: torch.Tensor, ratio: float) -> torch.Tensor:
    """Unstructured magnitude pruning mask (bool, same shape, ``True`` = keep).

    Exactly ``round(ratio * numel)`` entries with the smallest ``|w|`` are pruned; among equal
    magnitudes the lower flat (row-major) index is pruned first. ``ratio`` in [0, 1).
    """
    weight = _check_tensor("weight", weight)
    ratio = _check_ratio(ratio)
    flat = weight.detach().reshape(-1).abs()
    n_prune = int(round(ratio * flat.numel()))
    keep = torch.ones(flat.numel(), dtype=torch.bool)
    if n_prune > 0:
        order = torch.sort(flat, stable=True).indices
        keep[order[:n_prune]] = False
    return keep.reshape(weight.shape)


def n_m_mask(weight: torch.Tensor, n: int, m: int, axis: int = 1) -> torch.Tensor:
    """N:M semi-structured sparsity mask (bool, same shape, ``True`` = keep).

    The dimensions from ``axis`` to the end are flattened into one "input" dimension (for a conv
    weight ``[out, in, kh, kw]`` and ``axis=1`` that is ``in*kh*kw``, row-major), which is cut into
    groups of ``m`` consecutive entries; in each group the ``n`` largest ``|w|`` are kept (ties:
    lower index kept). That flattened size must be divisible by ``m``, and ``0 < n < m``.
    """
    weight = _check_tensor("weight", weight, min_dim=1)
    axis = _check_axis(axis, weight.dim())
    if not _is_int(m) or int(m) < 2:
        raise ValueError(f"m={m!r} is not allowed; m must be an int >= 2")
    if not _is_int(n) or not 0 < int(n) < int(m):
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
    weight = _check_tensor("weight", weight, min_dim=1)
    axis = _check_axis(axis, weight.dim())
    rows = weight.detach().double().movedim(axis, 0).reshape(weight.shape[axis], -1)
    return torch.linalg.vector_norm(rows, dim=1).to(torch.float32)


def channels_to_prune(weight: torch.Tensor, ratio: float, axis: int = 0) -> torch.Tensor:
    """Sorted int64 indices of the ``round(ratio * C)`` channels with the lowest L2 norm.

    ``C`` is ``weight.shape[axis]``; ties are broken by the lower index. It is an error if that
    would remove every channel.
    """
    scores = channel_scores(weight, axis)
    ratio = _check_ratio(ratio)
    n_channels = scores.numel()
    n_prune = int(round(ratio * n_channels))
    if n_prune >= n_channels:
        raise ValueError(
            f"ratio={ratio} would prune all {n_channels} channels; at least one channel must remain"
        )
    order = torch.sort(scores, stable=True).indices[:n_prune]
    return torch.sort(order).values.to(torch.int64)


# --------------------------------------------------------------------------------------------
# low rank
# --------------------------------------------------------------------------------------------


def resolve_rank(rank: int | float, full_rank: int) -> int:
    """Turn a rank request into an int in ``1..full_rank``.

    An int is used as is (must be in ``1..full_rank``); a float in (0, 1] is a fraction of
    ``full_rank``: ``max(1, round(rank * full_rank))``. Bools are rejected.
    """
    if not _is_int(full_rank) or int(full_rank) < 1:
        raise ValueError(f"full_rank={full_rank!r} is not allowed; full_rank must be an int >= 1")
    full_rank = int(full_rank)
    if _is_int(rank):
        r = int(rank)  # type: ignore[arg-type]
        if not 1 <= r <= full_rank:
            raise ValueError(
                f"rank={r} is not allowed; an int rank must be in 1..{full_rank} (full rank)"
            )
        return r
    if _is_real(rank):
        frac = float(rank)  # type: ignore[arg-type]
        if not (math.isfinite(frac) and 0.0 < frac <= 1.0):
            raise ValueError(
                f"rank={rank!r} is not allowed; a float rank is a fraction of full rank in (0, 1]"
            )
        return max(1, int(round(frac * full_rank)))
    raise ValueError(
        f"rank={rank!r} is not allowed; use an int in 1..{full_rank} or a float fraction in (0, 1]"
    )


def _check_matrix(name: str, matrix: object) -> torch.Tensor:
    matrix = _check_tensor(name, matrix)
    if matrix.dim() != 2:
        raise ValueError(f"{name} must be 2-D, got shape {tuple(matrix.shape)}")
    return matrix


def singular_values(matrix: torch.Tensor) -> torch.Tensor:
    """Singular values of a 2-D ``matrix`` in descending order (float32, computed in float64)."""
    matrix = _check_matrix("matrix", matrix)
    return torch.linalg.svdvals(matrix.detach().double()).to(torch.float32)


def energy_kept(singular_values: torch.Tensor, rank: int) -> float:
    """Fraction of ``sum(s**2)`` held by the first ``rank`` singular values (1.0 for all zeros)."""
    s = _check_tensor("singular_values", singular_values)
    if s.dim() != 1:
        raise ValueError(f"singular_values must be 1-D, got shape {tuple(s.shape)}")
    if not _is_int(rank) or not 0 <= int(rank) <= s.numel():
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
        if not _is_int(value) or int(value) < 1:
            raise ValueError(f"{name}={value!r} is not allowed; it must be an int >= 1")
    m, n = int(out_features), int(in_features)
    return (m * n - 1) // (m + n)


def conv_as_matrix(weight: torch.Tensor) -> torch.Tensor:
    """Reshape a conv weight ``[out, in, *k]`` to the float32 matrix ``[out, in * prod(k)]``."""
    weight = _check_tensor("weight", weight, min_dim=2)
    return weight.detach().to(torch.float32).reshape(weight.shape[0], -1).clone()


def split_conv_weight(weight: torch.Tensor, rank: int | float) -> tuple[torch.Tensor, torch.Tensor]:
    """Split a conv ``[out, in, *k]`` into a ``*k`` conv with ``r`` filters then a 1x1 conv.

    Returns ``(first [r, in, *k], second [out, r, 1, ...])``: applying ``first`` (with the
    original stride/padding/dilation) then ``second`` (stride 1, no padding) equals the original
    conv with its weight replaced by the best rank-``r`` approximation of :func:`conv_as_matrix`.
    ``rank`` is resolved against ``min(out, in * prod(k))``. Not valid for grouped convolutions.
    """
    weight = _check_tensor("weight", weight, min_dim=3)
    out_ch, in_ch, *kernel = weight.shape
    a, b = truncated_svd(conv_as_matrix(weight), rank)
    r = a.shape[1]
    first = b.reshape(r, in_ch, *kernel).contiguous()
    second = a.reshape(out_ch, r, *([1] * len(kernel))).contiguous()
    return first, second
