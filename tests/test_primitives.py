"""Exact-reference tests for the tensor primitives of compress_core.ops (quantize, prune, lowrank, sqnr)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from compress_core.ops.lowrank import (
    break_even_rank,
    conv_as_matrix,
    energy_kept,
    resolve_rank,
    singular_values,
    split_conv_weight,
    truncated_svd,
)
from compress_core.ops.prune import channel_scores, channels_to_prune, magnitude_mask, n_m_mask
from compress_core.ops.quantize import SCHEMES, QuantizedWeight, quantize_weight
from compress_core.ops.sqnr import sqnr_db


def _gaussian(*shape: int, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=gen)


def _t(rows: list) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float32)


# ------------------------------------------------------------------------------------------
# uniform quantization: hand-computed grids
# ------------------------------------------------------------------------------------------


def test_symmetric_4bit_per_channel_hand_computed() -> None:
    # qmax = 2**3 - 1 = 7.
    # row 0: absmax 3.5 -> scale 0.5; w/scale = [7, -2, 0.4, 0, 1.5, 2.5]
    #        round (half to even) = [7, -2, 0, 0, 2, 2] -> [3.5, -1.0, 0, 0, 1.0, 1.0]
    # row 1: absmax 0.875 -> scale 0.125; w/scale = [-7, 2.4, 4, 1, 0, -3]
    #        -> [-7, 2, 4, 1, 0, -3] * 0.125 = [-0.875, 0.25, 0.5, 0.125, 0, -0.375]
    w = _t([[3.5, -1.0, 0.2, 0.0, 0.75, 1.25], [-0.875, 0.3, 0.5, 0.125, 0.0, -0.375]])
    q = quantize_weight(w, 4, "symmetric", "channel", axis=0)
    assert torch.equal(q.scale, _t([0.5, 0.125]))
    assert q.zero_point is None and q.codebook is None
    expected = _t([[3.5, -1.0, 0.0, 0.0, 1.0, 1.0], [-0.875, 0.25, 0.5, 0.125, 0.0, -0.375]])
    assert torch.equal(q.values, expected)
    assert torch.equal(q.levels(0), torch.arange(-7, 8, dtype=torch.float32) * 0.5)
    assert torch.equal(q.levels(1), torch.arange(-7, 8, dtype=torch.float32) * 0.125)


def test_symmetric_4bit_per_tensor_hand_computed() -> None:
    # one scale for the tensor: absmax 3.5 -> 0.5.
    # row 1 / 0.5 = [-1.75, 0.6, 1.0, 0.25, 0, -0.75] -> [-2, 1, 1, 0, 0, -1]
    w = _t([[3.5, -1.0, 0.2, 0.0, 0.75, 1.25], [-0.875, 0.3, 0.5, 0.125, 0.0, -0.375]])
    q = quantize_weight(w, 4, "symmetric", "tensor")
    assert q.scale.shape == () and float(q.scale) == 0.5
    expected = _t([[3.5, -1.0, 0.0, 0.0, 1.0, 1.0], [-1.0, 0.5, 0.5, 0.0, 0.0, -0.5]])
    assert torch.equal(q.values, expected)
    assert torch.equal(q.levels(), torch.arange(-7, 8, dtype=torch.float32) * 0.5)


def test_symmetric_2bit_is_ternary() -> None:
    w = _t([[-2.0, -0.9, -0.5, 0.0, 0.4, 1.1, 2.0]])
    q = quantize_weight(w, 2, "symmetric", "tensor")
    # qmax = 1, scale = 2; w/2 = [-1, -0.45, -0.25, 0, 0.2, 0.55, 1]
    assert torch.equal(q.values, _t([[-2.0, 0.0, 0.0, 0.0, 0.0, 2.0, 2.0]]))
    assert torch.equal(q.levels(), _t([-2.0, 0.0, 2.0]))


def test_asymmetric_4bit_per_channel_hand_computed() -> None:
    # Qmax = 15.
    # row 0: r_min = -1, r_max = 2.75 -> scale 3.75/15 = 0.25, zero_point = round(1/0.25) = 4
    #        round(w/0.25) + 4 = [-4, 0, 1.2->1, 11, -1] + 4 = [0, 4, 5, 15, 3]
    #        (q - 4) * 0.25 = [-1.0, 0.0, 0.25, 2.75, -0.25]
    # row 1: all >= 0 so r_min = 0, r_max = 3.75 -> scale 0.25, zero_point 0
    #        w/0.25 = [2, 4, 15, 8, 1.8] -> [2, 4, 15, 8, 2] -> [0.5, 1.0, 3.75, 2.0, 0.5]
    w = _t([[-1.0, 0.0, 0.3, 2.75, -0.25], [0.5, 1.0, 3.75, 2.0, 0.45]])
    q = quantize_weight(w, 4, "asymmetric", "channel")
    assert torch.equal(q.scale, _t([0.25, 0.25]))
    assert q.zero_point.dtype == torch.int32
    assert torch.equal(q.zero_point, torch.tensor([4, 0], dtype=torch.int32))
    expected = _t([[-1.0, 0.0, 0.25, 2.75, -0.25], [0.5, 1.0, 3.75, 2.0, 0.5]])
    assert torch.equal(q.values, expected)
    assert torch.equal(q.levels(0), (torch.arange(16, dtype=torch.float32) - 4) * 0.25)
    assert torch.equal(q.levels(1), torch.arange(16, dtype=torch.float32) * 0.25)


def test_asymmetric_matches_affine_formula_per_tensor() -> None:
    # q = round((r - r_min) / (r_max - r_min) * Qmax) with r_min = -1, r_max = 2.75, Qmax = 15
    w = _t([[-1.0, 0.0, 0.3, 2.75], [1.1, -0.6, 2.0, 0.05]])
    q = quantize_weight(w, 4, "asymmetric", "tensor")
    assert float(q.scale) == 0.25 and int(q.zero_point) == 4
    q_int = torch.round((w + 1.0) / 3.75 * 15)
    assert torch.equal(q.values, (q_int - 4) * 0.25)


def test_asymmetric_all_negative_keeps_zero_representable() -> None:
    w = _t([[-3.75, -1.0, -0.5]])
    q = quantize_weight(w, 4, "asymmetric", "tensor")
    # r_max is widened to 0 -> scale 0.25, zero_point 15
    assert float(q.scale) == 0.25 and int(q.zero_point) == 15
    assert torch.equal(q.values, w)
    assert 0.0 in q.levels().tolist()


def test_per_channel_and_per_tensor_scales_differ() -> None:
    w = _gaussian(4, 32) * torch.tensor([[1.0], [0.1], [10.0], [0.01]])
    qc = quantize_weight(w, 8, "symmetric", "channel")
    qt = quantize_weight(w, 8, "symmetric", "tensor")
    assert qc.scale.shape == (4,)
    assert torch.allclose(qc.scale, w.abs().amax(dim=1) / 127)
    assert qt.scale.shape == ()
    assert torch.allclose(qt.scale, w.abs().max() / 127)
    assert sqnr_db(w, qc.values) > sqnr_db(w, qt.values)


def test_channel_axis_one_uses_columns() -> None:
    w = _gaussian(6, 3)
    q1 = quantize_weight(w, 4, "symmetric", "channel", axis=1)
    q0 = quantize_weight(w.T.contiguous(), 4, "symmetric", "channel", axis=0)
    assert q1.axis == 1 and q1.scale.shape == (3,)
    assert torch.equal(q1.values, q0.values.T)
    assert quantize_weight(w, 4, "symmetric", "channel", axis=-1).axis == 1


def test_zero_channel_gets_scale_one_and_stays_zero() -> None:
    w = _t([[0.0, 0.0, 0.0], [1.0, -0.5, 0.25]])
    for scheme in ("symmetric", "asymmetric", "pow2"):
        q = quantize_weight(w, 4, scheme, "channel")
        assert float(q.scale[0]) == 1.0
        assert torch.equal(q.values[0], torch.zeros(3))
    q = quantize_weight(w, 4, "kmeans", "channel")
    assert torch.equal(q.values[0], torch.zeros(3))


# ------------------------------------------------------------------------------------------
# properties over all schemes
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_number_of_distinct_values(scheme: str, bits: int) -> None:
    w = _gaussian(8, 256, seed=bits)
    limit = 2**bits - 1 if scheme in ("symmetric", "pow2") else 2**bits
    qt = quantize_weight(w, bits, scheme, "tensor")
    assert qt.values.unique().numel() <= limit
    assert qt.levels().numel() <= limit
    assert set(qt.values.unique().tolist()) <= set(qt.levels().tolist())
    qc = quantize_weight(w, bits, scheme, "channel")
    for c in range(w.shape[0]):
        assert qc.values[c].unique().numel() <= limit
        assert set(qc.values[c].unique().tolist()) <= set(qc.levels(c).tolist())


@pytest.mark.parametrize(
    ("scheme", "bits"),
    [(s, b) for s in SCHEMES for b in (2, 4, 8, 16) if not (s == "kmeans" and b == 16)],
)
@pytest.mark.parametrize("granularity", ["channel", "tensor"])
def test_zeros_are_preserved(scheme: str, granularity: str, bits: int) -> None:
    w = _gaussian(16, 64, seed=3) + 0.5  # mostly positive: the asymmetric range is skewed
    w = w * magnitude_mask(w, 0.5)
    w[3] = 0.0  # a fully pruned channel
    before = w.clone()
    q = quantize_weight(w, bits, scheme, granularity)
    assert torch.equal(w, before)  # input not mutated
    assert q.values.shape == w.shape and q.values.dtype == w.dtype
    assert torch.equal(q.values[w == 0], torch.zeros(int((w == 0).sum())))


def test_output_keeps_input_dtype() -> None:
    w = _gaussian(4, 8).double()
    q = quantize_weight(w, 8, "symmetric", "tensor")
    assert q.values.dtype == torch.float64
    assert q.scale.dtype == torch.float32


def test_quantized_weight_is_frozen() -> None:
    q = quantize_weight(_gaussian(2, 4), 4)
    assert isinstance(q, QuantizedWeight)
    with pytest.raises(AttributeError):
        q.bits = 8  # type: ignore[misc]


@pytest.mark.parametrize("scheme", ["symmetric", "asymmetric"])
@pytest.mark.parametrize("granularity", ["channel", "tensor"])
def test_sqnr_rises_about_6db_per_bit(scheme: str, granularity: str) -> None:
    w = _gaussian(64, 512, seed=1)
    sqnr = [sqnr_db(w, quantize_weight(w, b, scheme, granularity).values) for b in range(4, 9)]
    steps = [b - a for a, b in zip(sqnr, sqnr[1:])]
    assert all(5.0 < s < 7.0 for s in steps), steps
    assert 5.0 < (sqnr[-1] - sqnr[0]) / 4 < 7.0


def test_sqnr_reference_values() -> None:
    ref = _t([3.0, 4.0])
    assert sqnr_db(ref, ref.clone()) == float("inf")
    # signal 25, noise 0.25 -> 10*log10(100) = 20 dB
    assert sqnr_db(ref, _t([3.5, 4.0])) == pytest.approx(20.0)


# ------------------------------------------------------------------------------------------
# pow2 and kmeans
# ------------------------------------------------------------------------------------------


def test_pow2_levels_are_powers_of_two_times_scale() -> None:
    w = _gaussian(4, 200, seed=5)
    for bits in (2, 3, 4):
        q = quantize_weight(w, bits, "pow2", "channel")
        n = 2 ** (bits - 1) - 1
        unit = [2.0**-k for k in range(n)]
        assert torch.equal(q.codebook, _t(sorted([-u for u in unit] + [0.0] + unit)))
        for c in range(4):
            s = q.scale[c]
            assert float(s) == float(w[c].abs().max())
            assert torch.equal(q.levels(c), q.codebook * s)
            ratios = q.values[c][q.values[c] != 0].abs() / s
            mantissa, exponent = torch.frexp(ratios)
            assert torch.all(mantissa == 0.5)  # exact powers of two
            assert torch.all((exponent - 1 <= 0) & (exponent - 1 >= -(n - 1)))


def test_pow2_hand_computed_nearest_level() -> None:
    # 3 bits: levels 0, ±{1, 0.5, 0.25} * scale, scale = absmax = 4 -> {0, ±1, ±2, ±4}
    w = _t([[4.0, 2.9, 3.1, 1.4, 0.6, 0.4, 0.0, -1.6, -4.0]])
    q = quantize_weight(w, 3, "pow2", "tensor")
    assert float(q.scale) == 4.0
    assert torch.equal(q.values, _t([[4.0, 2.0, 4.0, 1.0, 1.0, 0.0, 0.0, -2.0, -4.0]]))
    assert torch.equal(q.levels(), _t([-4.0, -2.0, -1.0, 0.0, 1.0, 2.0, 4.0]))
    # exact tie between 2 and 4 (3.0) goes to the smaller magnitude, symmetrically
    t = quantize_weight(_t([[4.0, 3.0, -3.0, -4.0]]), 3, "pow2", "tensor")
    assert torch.equal(t.values, _t([[4.0, 2.0, -2.0, -4.0]]))


def test_kmeans_recovers_four_clusters_exactly() -> None:
    gen = torch.Generator().manual_seed(7)
    centres = _t([-3.0, -1.0, 1.0, 3.0])
    labels = torch.arange(400) % 4
    w = (centres[labels] + (torch.rand(400, generator=gen) - 0.5) * 0.2).reshape(20, 20)
    q = quantize_weight(w, 2, "kmeans", "tensor")
    flat = w.reshape(-1)
    means = torch.stack([flat[labels == i].double().mean() for i in range(4)]).float()
    assert q.codebook.shape == (4,)
    assert torch.allclose(q.codebook, means, atol=1e-6)
    assert torch.equal(q.values.reshape(-1), q.codebook[labels])
    assert q.scale is None and q.zero_point is None


def test_kmeans_with_zeros_pins_a_zero_centroid() -> None:
    # 2 bits: 3 free centroids + the pinned 0 for the pruned weights
    w = _t([[-2.0, -2.0, 0.0, 0.0, 1.0, 1.0, 5.0, 5.0]])
    q = quantize_weight(w, 2, "kmeans", "tensor")
    assert torch.equal(q.codebook, _t([-2.0, 0.0, 1.0, 5.0]))
    assert torch.equal(q.values, w)


def test_kmeans_is_deterministic_and_per_channel() -> None:
    w = _gaussian(6, 300, seed=11)
    a = quantize_weight(w, 3, "kmeans", "channel")
    b = quantize_weight(w, 3, "kmeans", "channel")
    assert torch.equal(a.values, b.values) and torch.equal(a.codebook, b.codebook)
    assert a.codebook.shape == (6, 8)
    assert torch.all(a.codebook[:, 1:] >= a.codebook[:, :-1])
    # weight sharing beats uniform symmetric at the same bit width on Gaussian weights
    assert sqnr_db(w, a.values) > sqnr_db(w, quantize_weight(w, 3, "symmetric").values)


def test_kmeans_large_tensor_runs() -> None:
    w = _gaussian(256, 1024, seed=2)
    q = quantize_weight(w, 8, "kmeans", "tensor")
    assert q.codebook.shape == (256,)
    assert sqnr_db(w, q.values) > 35.0


# ------------------------------------------------------------------------------------------
# pruning
# ------------------------------------------------------------------------------------------


def test_magnitude_mask_exact_count() -> None:
    w = _gaussian(10, 100)
    before = w.clone()
    for ratio, pruned in ((0.0, 0), (0.3, 300), (0.5, 500), (0.999, 999), (0.0004, 0), (0.0006, 1)):
        mask = magnitude_mask(w, ratio)
        assert mask.dtype == torch.bool and mask.shape == w.shape
        assert int((~mask).sum()) == pruned
        if 0 < pruned:
            assert w[~mask].abs().max() <= w[mask].abs().min()
    assert torch.equal(w, before)


def test_magnitude_mask_is_a_stable_sorts_choice_with_many_ties() -> None:
    generator = torch.Generator().manual_seed(0)
    for _ in range(200):
        rows, columns = (int(size) for size in torch.randint(1, 9, (2,), generator=generator))
        w = torch.randint(-3, 4, (rows, columns), generator=generator).float()  # few distinct magnitudes
        for ratio in (0.1, 0.3, 0.5, 0.77, 0.99):
            pruned = int(round(ratio * w.numel()))
            expected = torch.ones(w.numel(), dtype=torch.bool)
            expected[torch.sort(w.reshape(-1).abs(), stable=True).indices[:pruned]] = False
            assert torch.equal(magnitude_mask(w, ratio), expected.reshape(w.shape)), (w, ratio)


def test_magnitude_mask_ties_by_index() -> None:
    w = torch.ones(2, 5)
    mask = magnitude_mask(w, 0.3)
    expected = torch.tensor([[False, False, False, True, True], [True, True, True, True, True]])
    assert torch.equal(mask, expected)
    w2 = _t([3.0, -1.0, 2.0, 1.0, -0.5])
    assert torch.equal(magnitude_mask(w2, 0.4), torch.tensor([True, False, True, True, False]))


def test_n_m_mask_linear_pattern() -> None:
    w = _t([[0.1, -0.9, 0.5, 0.2, 3.0, 2.0, -1.0, 0.0]])
    assert torch.equal(n_m_mask(w, 2, 4), torch.tensor([[False, True, True, False, True, True, False, False]]))
    big = _gaussian(16, 64)
    mask = n_m_mask(big, 2, 4)
    groups = mask.reshape(16, 16, 4)
    assert torch.equal(groups.sum(dim=-1), torch.full((16, 16), 2))
    a = big.abs().reshape(16, 16, 4)
    kept_min = torch.where(groups, a, torch.inf).amin(-1)
    dropped_max = torch.where(groups, -torch.inf, a).amax(-1)
    assert torch.all(kept_min >= dropped_max)


def test_n_m_mask_conv_groups_along_flattened_input() -> None:
    w = _gaussian(4, 8, 3, 3)  # in*kh*kw = 72
    mask = n_m_mask(w, 1, 4, axis=1)
    assert mask.shape == w.shape
    groups = mask.reshape(4, 18, 4)
    assert torch.equal(groups.sum(-1), torch.ones(4, 18, dtype=torch.long))
    assert torch.equal(groups.reshape(4, 72), mask.reshape(4, 72))
    keep_idx = w.abs().reshape(4, 18, 4).argmax(-1)
    assert torch.equal(groups.float().argmax(-1), keep_idx)


def test_channel_scores_and_channels_to_prune() -> None:
    w = torch.ones(6, 4) * _t([[3.0], [0.5], [2.0], [0.1], [1.0], [0.2]])
    assert torch.allclose(channel_scores(w), _t([6.0, 1.0, 4.0, 0.2, 2.0, 0.4]))
    idx = channels_to_prune(w, 0.5)
    assert idx.dtype == torch.int64
    assert torch.equal(idx, torch.tensor([1, 3, 5]))
    assert torch.equal(channels_to_prune(w, 0.0), torch.tensor([], dtype=torch.int64))
    # along axis 1 of a conv weight (input channels)
    conv = torch.ones(2, 3, 2, 2) * _t([1.0, 0.1, 2.0]).reshape(1, 3, 1, 1)
    assert torch.equal(channels_to_prune(conv, 0.34, axis=1), torch.tensor([1]))
    assert torch.allclose(channel_scores(conv, axis=1), _t([8.0, 0.08, 32.0]).sqrt())


# ------------------------------------------------------------------------------------------
# low rank
# ------------------------------------------------------------------------------------------


def test_resolve_rank() -> None:
    assert resolve_rank(5, 10) == 5
    assert resolve_rank(10, 10) == 10
    assert resolve_rank(0.5, 10) == 5
    assert resolve_rank(1.0, 10) == 10
    assert resolve_rank(0.01, 10) == 1
    assert resolve_rank(0.26, 10) == 3


def test_singular_values_and_energy() -> None:
    m = torch.diag(_t([1.0, 3.0, 2.0]))
    s = singular_values(m)
    assert torch.allclose(s, _t([3.0, 2.0, 1.0]))
    assert energy_kept(s, 1) == pytest.approx(9 / 14)
    assert energy_kept(s, 3) == pytest.approx(1.0)
    assert energy_kept(s, 0) == 0.0


def test_truncated_svd_error_is_discarded_energy() -> None:
    m = _gaussian(20, 12, seed=4)
    s = singular_values(m).double()
    for r in (1, 5, 12):
        a, b = truncated_svd(m, r)
        assert a.shape == (20, r) and b.shape == (r, 12)
        assert a.dtype == b.dtype == torch.float32
        err = float(((m.double() - a.double() @ b.double()) ** 2).sum())
        assert err == pytest.approx(float((s[r:] ** 2).sum()), rel=1e-4, abs=1e-4)
        # balanced: A^T A == B B^T == diag(S_r)
        assert torch.allclose(a.T @ a, b @ b.T, atol=1e-4)
        assert torch.allclose(torch.diagonal(a.T @ a), s[:r].float(), atol=1e-4)
    a, b = truncated_svd(m, 0.5)
    assert a.shape == (20, 6)


def test_break_even_rank() -> None:
    assert break_even_rank(100, 100) == 49  # 49*200 = 9800 < 10000, 50*200 = 10000 is not
    assert break_even_rank(512, 256) == 170  # 170*768 = 130560 < 131072 <= 171*768
    assert break_even_rank(10, 1) == 0
    assert break_even_rank(1, 1) == 0
    for m, n in ((64, 27), (3, 7), (1000, 10)):
        r = break_even_rank(m, n)
        assert r * (m + n) < m * n <= (r + 1) * (m + n)


def test_conv_as_matrix_and_split_conv_equivalence() -> None:
    w = _gaussian(8, 3, 3, 3, seed=9)
    mat = conv_as_matrix(w)
    assert mat.shape == (8, 27)
    assert torch.equal(mat, w.reshape(8, 27))
    first, second = split_conv_weight(w, 4)
    assert first.shape == (4, 3, 3, 3) and second.shape == (8, 4, 1, 1)
    a, b = truncated_svd(mat, 4)
    w_r = (a @ b).reshape(w.shape)
    x = _gaussian(2, 3, 9, 9, seed=10)
    for stride, padding in ((1, 1), (2, 0)):
        two_step = F.conv2d(F.conv2d(x, first, stride=stride, padding=padding), second)
        one_step = F.conv2d(x, w_r, stride=stride, padding=padding)
        assert torch.allclose(two_step, one_step, atol=1e-5)
    # full rank reproduces the original conv
    first, second = split_conv_weight(w, 8)
    assert torch.allclose(F.conv2d(F.conv2d(x, first, padding=1), second), F.conv2d(x, w, padding=1), atol=1e-4)


def test_split_conv1d_shapes() -> None:
    first, second = split_conv_weight(_gaussian(6, 4, 5), 0.5)
    assert first.shape == (3, 4, 5) and second.shape == (6, 3, 1)


# ------------------------------------------------------------------------------------------
# errors
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"bits": 1}, r"bits=1 is not allowed; bits must be an int in 2\.\.8 or 16"),
        ({"bits": 12}, r"bits=12 is not allowed"),
        ({"bits": True}, r"bits=True is not allowed"),
        ({"bits": 4.0}, r"bits=4\.0 is not allowed"),
        ({"bits": 16, "scheme": "kmeans"}, r"bits=16 is not allowed with scheme='kmeans'.*2\.\.8"),
        (
            {"bits": 4, "scheme": "log"},
            r"scheme='log' is not allowed; choose one of symmetric, asymmetric, pow2, kmeans",
        ),
        ({"bits": 4, "granularity": "group"}, r"granularity='group' is not allowed; choose one of channel, tensor"),
        ({"bits": 4, "axis": 2}, r"axis=2 is out of range for a 2-D tensor \(allowed -2\.\.1\)"),
    ],
)
def test_quantize_errors(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        quantize_weight(_gaussian(3, 4), **kwargs)


def test_tensor_input_errors() -> None:
    with pytest.raises(ValueError, match=r"weight must be a floating-point tensor, got dtype torch\.int64"):
        quantize_weight(torch.arange(4), 4)
    with pytest.raises(ValueError, match=r"weight must be a torch\.Tensor, got list"):
        quantize_weight([1.0, 2.0], 4)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"weight contains NaN or infinite values"):
        quantize_weight(_t([1.0, float("nan")]), 4)
    with pytest.raises(ValueError, match=r"weight must not be empty"):
        magnitude_mask(torch.zeros(0), 0.5)
    with pytest.raises(ValueError, match=r"approximation shape \(3,\) does not match reference shape \(2,\)"):
        sqnr_db(torch.zeros(2), torch.zeros(3))


def test_levels_errors() -> None:
    q = quantize_weight(_gaussian(3, 4), 4, "symmetric", "channel")
    with pytest.raises(ValueError, match=r"levels\(\) needs a channel index .*allowed 0\.\.2"):
        q.levels()
    with pytest.raises(ValueError, match=r"channel=3 is out of range; allowed 0\.\.2"):
        q.levels(3)


def test_pruning_errors() -> None:
    w = _gaussian(4, 6)
    for bad in (1.0, -0.1, 1.5):
        with pytest.raises(ValueError, match=rf"ratio={bad!r} is not allowed; ratio must be a number in \[0, 1\)"):
            magnitude_mask(w, bad)
    with pytest.raises(ValueError, match=r"ratio=True is not allowed"):
        magnitude_mask(w, True)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"size 6 .* is not divisible by m=4"):
        n_m_mask(w, 2, 4)
    with pytest.raises(ValueError, match=r"n=4 is not allowed; n must be an int with 0 < n < m=4"):
        n_m_mask(_gaussian(4, 8), 4, 4)
    with pytest.raises(ValueError, match=r"n=0 is not allowed"):
        n_m_mask(_gaussian(4, 8), 0, 4)
    with pytest.raises(ValueError, match=r"m=1 is not allowed; m must be an int >= 2"):
        n_m_mask(_gaussian(4, 8), 1, 1)
    with pytest.raises(ValueError, match=r"ratio=0\.9 would prune all 4 channels; at least one channel must remain"):
        channels_to_prune(w, 0.9)


@pytest.mark.parametrize(
    ("rank", "match"),
    [
        (0, r"rank=0 is not allowed; an int rank must be in 1\.\.10 \(full rank\)"),
        (-3, r"rank=-3 is not allowed; an int rank must be in 1\.\.10"),
        (11, r"rank=11 is not allowed; an int rank must be in 1\.\.10"),
        (0.0, r"rank=0\.0 is not allowed; a float rank is a fraction of full rank in \(0, 1\]"),
        (1.5, r"rank=1\.5 is not allowed; a float rank is a fraction of full rank in \(0, 1\]"),
        (-0.5, r"rank=-0\.5 is not allowed"),
        (True, r"rank=True is not allowed; use an int in 1\.\.10 or a float fraction in \(0, 1\]"),
        ("3", r"rank='3' is not allowed"),
    ],
)
def test_resolve_rank_errors(rank: object, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        resolve_rank(rank, 10)  # type: ignore[arg-type]


def test_low_rank_errors() -> None:
    with pytest.raises(ValueError, match=r"full_rank=0 is not allowed; full_rank must be an int >= 1"):
        resolve_rank(1, 0)
    with pytest.raises(ValueError, match=r"matrix must be 2-D, got shape \(2, 2, 2\)"):
        singular_values(torch.zeros(2, 2, 2))
    with pytest.raises(ValueError, match=r"rank=4 is not allowed; rank must be an int in 0\.\.3"):
        energy_kept(_t([3.0, 2.0, 1.0]), 4)
    with pytest.raises(ValueError, match=r"rank=13 is not allowed; an int rank must be in 1\.\.12"):
        truncated_svd(_gaussian(20, 12), 13)
    with pytest.raises(ValueError, match=r"out_features=0 is not allowed; it must be an int >= 1"):
        break_even_rank(0, 5)
    with pytest.raises(ValueError, match=r"weight must have at least 3 dimension\(s\), got shape \(4, 4\)"):
        split_conv_weight(torch.zeros(4, 4), 2)
    with pytest.raises(ValueError, match=r"weight must have at least 2 dimension\(s\)"):
        conv_as_matrix(torch.zeros(4))


def test_functions_do_not_mutate_inputs() -> None:
    w = _gaussian(8, 3, 3, 3, seed=12)
    before = w.clone()
    for scheme in SCHEMES:
        quantize_weight(w, 4, scheme)
    magnitude_mask(w, 0.5)
    n_m_mask(w, 1, 3)
    channels_to_prune(w, 0.25)
    split_conv_weight(w, 3)
    conv_as_matrix(w).fill_(0.0)  # the returned matrix must not alias the weight
    truncated_svd(w.reshape(8, 27), 3)
    assert torch.equal(w, before)
    assert not math.isnan(sqnr_db(w, w * 0.5))
