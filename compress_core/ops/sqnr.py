"""The one SQNR definition of the project, for weights and for outputs."""

from __future__ import annotations

import math

import torch

from compress_core.ops.checks import check_tensor


def sqnr_db(reference: torch.Tensor, approximation: torch.Tensor) -> float:
    """Signal-to-quantization-noise ratio ``10*log10(sum(ref**2) / sum((ref - approx)**2))`` in dB.

    ``inf`` when the tensors are identical, ``-inf`` when the reference is all zeros but the
    approximation is not (see :func:`sqnr_from_energies`). Computed in float64.
    """
    reference = check_tensor("reference", reference)
    approximation = check_tensor("approximation", approximation)
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
