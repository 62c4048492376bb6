"""Calibration, for the Learn page: a layer's real input activations and the clipping ranges that
MinMax, Percentile and Entropy (KL) calibration choose for them. Plain data, JSON-ready."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from compress_core.analysis.teaching import find_layer, histogram
from compress_core.errors import CompressError
from compress_core.models.handle import ModelHandle
from compress_core.models.inventory import torch_layer_names
from compress_core.ops.sqnr import sqnr_from_energies

ENTROPY_BINS = 2048
PERCENTILES = (99.9, 99.99)
ACTIVATION_HISTOGRAM_BINS = 100


def layer_input_activations(handle: ModelHandle, layer_name: str, max_samples: int = 256) -> np.ndarray:
    """Every value that reaches the input of layer ``layer_name`` on the first ``max_samples``
    evaluation inputs, flattened (float32), collected with a forward pre-hook."""
    if handle.backend != "torch" or isinstance(handle.model, torch.jit.ScriptModule):
        raise CompressError(
            f"'{handle.name}': activation histograms need a Python torch model (forward hooks), not {handle.kind}"
        )
    module = handle.model.get_submodule(torch_layer_names(find_layer(handle, layer_name).weight_name)[1])
    seen: list[np.ndarray] = []
    hook = module.register_forward_pre_hook(
        lambda _, args: seen.append(args[0].detach().float().reshape(-1).numpy().copy())
    )
    try:
        handle.run(handle.data.inputs[:max_samples])
    finally:
        hook.remove()
    return np.concatenate(seen)


def entropy_threshold(activations: np.ndarray, bits: int = 8, bins: int = ENTROPY_BINS) -> float:
    """The clipping threshold on ``|x|`` that minimises KL(P || Q), as TensorRT's entropy calibrator does.

    ``|x|`` goes into ``bins`` histogram bins. For each candidate cut ``i`` (from ``2**(bits-1)``
    bins up), P is the histogram up to the cut with everything beyond folded into its last bin, and
    Q is the histogram up to the cut merged into ``2**(bits-1)`` levels, each level's count spread
    evenly over its non-empty bins. The chosen threshold is the upper edge of the best cut. As in
    NVIDIA's pytorch-quantization, the first bin takes the count of the second, so that the spike of
    exact zeros after a ReLU does not decide the range.
    """
    magnitudes = np.abs(activations.astype(np.float64))
    counts, edges = np.histogram(magnitudes, bins=bins, range=(0.0, float(magnitudes.max()) or 1.0))
    counts[0] = counts[1]
    levels = 2 ** (bits - 1)
    best_cut, best_kl = bins, math.inf
    for cut in range(levels, bins + 1):
        reference = counts[:cut].astype(np.float64)
        reference[-1] += counts[cut:].sum()
        group = np.arange(cut) * levels // cut
        occupied = counts[:cut] > 0
        totals = np.bincount(group, weights=counts[:cut], minlength=levels)
        filled = np.bincount(group, weights=occupied, minlength=levels)
        candidate = np.where(occupied, totals[group] / np.maximum(filled[group], 1), 0.0)
        if candidate.sum() == 0:  # nothing below this cut: no distribution to compare
            continue
        p = reference / reference.sum()
        q = candidate / candidate.sum()
        support = p > 0
        if np.any(q[support] == 0):
            continue
        kl = float(np.sum(p[support] * np.log(p[support] / q[support])))
        if kl < best_kl:
            best_cut, best_kl = cut, kl
    return float(edges[best_cut])


def calibration_ranges(
    activations: np.ndarray, bits: int = 8, percentiles: tuple[float, ...] = PERCENTILES
) -> dict[str, Any]:
    """The symmetric ranges ``[-t, t]`` that MinMax, Percentile and Entropy calibration choose.

    Each method row has the ``threshold`` t, the ``range``, the share of values ``clipped`` and the
    SQNR (dB) and MSE of the activations quantized to ``bits`` bits (signed, scale ``t / qmax``) on
    that range. MinMax never clips but has the widest steps; the others trade clipping of rare
    outliers for finer steps. Also returns the activations' histogram for the plot.
    """
    values = activations.astype(np.float64).reshape(-1)
    magnitudes = np.abs(values)
    thresholds = {"minmax": float(magnitudes.max())}
    thresholds.update({f"percentile {p:g}": float(np.percentile(magnitudes, p)) for p in percentiles})
    thresholds["entropy"] = entropy_threshold(values, bits)
    qmax = 2 ** (bits - 1) - 1
    signal = float(np.sum(values**2))
    methods = []
    for method, threshold in thresholds.items():
        scale = threshold / qmax if threshold > 0 else 1.0
        error = np.clip(np.round(values / scale), -qmax, qmax) * scale - values
        noise = float(np.sum(error**2))
        methods.append(
            {
                "method": method,
                "threshold": threshold,
                "range": [-threshold, threshold],
                "clipped": float(np.mean(magnitudes > threshold)),
                "mse": noise / len(values),
                "sqnr_db": sqnr_from_energies(signal, noise),
            }
        )
    return {
        "bits": bits,
        "samples": int(len(values)),
        "histogram": histogram(values, bins=ACTIVATION_HISTOGRAM_BINS),
        "methods": methods,
    }
