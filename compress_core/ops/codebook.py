"""Codebooks of the non-uniform schemes: the nearest level of a sorted codebook, and 1-D k-means.

Exact ties between two levels go to the level of smaller magnitude (so ``q(-w) == -q(w)`` for a
codebook symmetric about zero, as ``pow2``'s is).
"""

from __future__ import annotations

import torch

KMEANS_MAX_ITERATIONS: int = 25
"""Iteration cap of Lloyd's algorithm in the ``kmeans`` scheme (it stops earlier on convergence)."""


def nearest_level(x: torch.Tensor, book: torch.Tensor) -> torch.Tensor:
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


def kmeans_codebook(rows: torch.Tensor, n_centroids: int) -> torch.Tensor:
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
