"""Plain data for the Learn page's demos: quantization, pruning, low-rank, calibration, distillation.

Every function returns dicts of numbers and lists (JSON-ready, nothing to plot with), computed on a
real layer of a real model where it makes sense. No Streamlit, no plotly: the page draws them.

* Quantization: a layer's grid and error histogram (:func:`quantization_view`), SQNR against bits
  (:func:`sqnr_by_bits`, about 6 dB per bit), non-uniform schemes against uniform
  (:func:`scheme_comparison`), and the extremes, binary and ternary (:func:`extreme_quantization`).
* Pruning: the keep-mask of a layer as a 2-D grid (:func:`pruning_mask_2d`).
* Low-rank: singular values, error and parameters against rank, break-even (:func:`low_rank_profile`).
* Calibration: a layer's real input activations (:func:`layer_input_activations`) and the clipping
  range that MinMax, Percentile and Entropy (KL) calibration choose (:func:`calibration_ranges`).
* Distillation: teacher and student probabilities softened at a temperature (:func:`distillation_view`).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from compress_core.errors import CompressError
from compress_core.models.handle import ModelHandle
from compress_core.models.inventory import LayerInfo, layer_inventory, layer_weight_array, torch_layer_names
from compress_core.plan import PruneConfig
from compress_core.ops.primitives import (
    SCHEMES,
    QuantizedWeight,
    break_even_rank,
    channels_to_prune,
    quantize_weight,
    singular_values,
    sqnr_db,
    sqnr_from_energies,
)
from compress_core.analysis.recover import distillation_loss
from compress_core.ops.weights import prune_mask

TEACHING_BITS = (2, 3, 4, 5, 6, 7, 8)
HISTOGRAM_BINS = 60
ENTROPY_BINS = 2048
PERCENTILES = (99.9, 99.99)
TERNARY_THRESHOLD = 0.7
"""Ternary weight networks (Li et al. 2016): weights below 0.7 * mean|w| become zero."""


def layer_weight(handle: ModelHandle, layer_name: str) -> torch.Tensor:
    """The float32 weight of one layer of the inventory, output channels first (a copy)."""
    layer = _layer(handle, layer_name)
    return torch.from_numpy(layer_weight_array(handle, layer)).movedim(layer.out_axis, 0).contiguous()


def _layer(handle: ModelHandle, layer_name: str) -> LayerInfo:
    layers = {layer.name: layer for layer in layer_inventory(handle)}
    if layer_name not in layers:
        raise CompressError(f"layer '{layer_name}' is not a compressible layer of '{handle.name}'; layers: {', '.join(layers)}")
    return layers[layer_name]


def _histogram(values: np.ndarray, bins: int = HISTOGRAM_BINS) -> dict[str, list[float]]:
    counts, edges = np.histogram(values, bins=bins)
    return {"edges": edges.tolist(), "counts": counts.tolist()}


def _quantize(weight: torch.Tensor, bits: int, scheme: str, granularity: str) -> QuantizedWeight:
    try:
        return quantize_weight(weight, bits, scheme, granularity, axis=0)
    except ValueError as exc:
        raise CompressError(str(exc)) from exc


# --------------------------------------------------------------------------------------------
# quantization
# --------------------------------------------------------------------------------------------


def quantization_view(
    weight: torch.Tensor, bits: int, scheme: str = "symmetric", granularity: str = "tensor", channel: int = 0
) -> dict[str, Any]:
    """One channel of ``weight`` quantized: its grid, its values before and after, and the error.

    Returns ``levels`` (the channel's representable values), ``weight_histogram`` and
    ``error_histogram`` (``edges``, ``counts`` of the channel's weights and of ``q(w) - w``),
    ``sqnr_db`` of the whole weight, ``max_error`` and ``step`` (smallest gap between levels) of
    the channel.
    """
    if not 0 <= channel < weight.shape[0]:
        raise CompressError(f"channel {channel} is out of range; the weight has {weight.shape[0]} output channels")
    quantized = _quantize(weight, bits, scheme, granularity)
    levels = quantized.levels(channel if granularity == "channel" else None)
    original = weight[channel].reshape(-1).numpy()
    error = quantized.values[channel].reshape(-1).numpy() - original
    return {
        "bits": bits,
        "scheme": scheme,
        "granularity": granularity,
        "levels": levels.tolist(),
        "weight_histogram": _histogram(original),
        "error_histogram": _histogram(error),
        "sqnr_db": sqnr_db(weight, quantized.values),
        "max_error": float(np.abs(error).max()),
        "step": float(levels.diff().min()) if len(levels) > 1 else 0.0,
    }


def sqnr_by_bits(weight: torch.Tensor, scheme: str = "symmetric", granularity: str = "channel", bits: tuple[int, ...] = TEACHING_BITS) -> dict[str, Any]:
    """SQNR (dB) of ``weight`` quantized at each bit width, and the fitted slope in dB per bit.

    Each extra bit halves the step, so the noise power drops 4x: about 6.02 dB per bit.
    """
    if len(bits) < 2:
        raise CompressError(f"bits {list(bits)} is not allowed; give at least two bit widths to fit a slope")
    values = [sqnr_db(weight, _quantize(weight, b, scheme, granularity).values) for b in bits]
    slope = float(np.polyfit(np.array(bits, dtype=float), np.array(values), 1)[0])
    return {"bits": list(bits), "sqnr_db": values, "db_per_bit": slope}


def scheme_comparison(weight: torch.Tensor, bits: int, granularity: str = "channel") -> list[dict[str, Any]]:
    """Every scheme at the same bit width: SQNR and how many distinct levels channel 0 uses."""
    rows = []
    for scheme in SCHEMES:
        quantized = _quantize(weight, bits, scheme, granularity)
        rows.append(
            {
                "scheme": scheme,
                "sqnr_db": sqnr_db(weight, quantized.values),
                "levels": quantized.levels(0 if granularity == "channel" else None).tolist(),
            }
        )
    return rows


def binarize(weight: torch.Tensor) -> torch.Tensor:
    """``sign(w) * mean|w|`` (BinaryConnect / XNOR-Net's scaled sign; zero counts as positive)."""
    return torch.where(weight >= 0, 1.0, -1.0) * weight.abs().mean()


def ternarize(weight: torch.Tensor) -> torch.Tensor:
    """``alpha * sign(w)`` where ``|w| > 0.7 mean|w|``, else 0; ``alpha`` is the mean ``|w|`` kept."""
    keep = weight.abs() > TERNARY_THRESHOLD * weight.abs().mean()
    alpha = weight.abs()[keep].mean() if bool(keep.any()) else torch.tensor(0.0)
    return torch.where(keep, torch.sign(weight) * alpha, torch.zeros_like(weight))


def extreme_quantization(weight: torch.Tensor) -> dict[str, dict[str, Any]]:
    """Binary and ternary weights: their levels, their SQNR and the share of zeros."""
    result = {}
    for name, values in (("binary", binarize(weight)), ("ternary", ternarize(weight))):
        result[name] = {
            "levels": torch.unique(values).tolist(),
            "sqnr_db": sqnr_db(weight, values),
            "zero_fraction": float((values == 0).float().mean()),
        }
    return result


# --------------------------------------------------------------------------------------------
# pruning and low rank
# --------------------------------------------------------------------------------------------


def pruning_mask_2d(weight: torch.Tensor, kind: str, ratio: float = 0.5) -> dict[str, Any]:
    """The keep-mask (1 kept, 0 pruned) of ``weight`` seen as a matrix [out, in * kernel].

    ``kind``: ``unstructured`` (smallest magnitudes), ``structured`` (whole output channels, the
    lowest L2 norms: zero rows) or an N:M pattern such as ``"2:4"`` (``ratio`` is then 1 - N/M).
    """
    config = PruneConfig.with_kind(kind, ratio)
    matrix = weight.reshape(weight.shape[0], -1)
    try:
        if kind == "structured":
            mask = torch.ones_like(matrix, dtype=torch.bool)
            mask[channels_to_prune(matrix, config.ratio)] = False
        else:
            mask = prune_mask(matrix, config, out_axis=0)
    except ValueError as exc:
        raise CompressError(f"{kind} pruning of a {tuple(matrix.shape)} matrix: {exc}") from exc
    return {"kind": kind, "shape": list(mask.shape), "mask": mask.int().tolist(), "zeros": int((~mask).sum()), "kept": int(mask.sum())}


def low_rank_profile(weight: torch.Tensor) -> dict[str, Any]:
    """Singular values of ``weight`` as a matrix [out, in * kernel], and for every rank ``r``:
    the relative reconstruction error ``||W - W_r|| / ||W||`` (Frobenius) and the parameters of
    the two factors ``r * (out + in)``, against ``dense_params`` and the ``break_even_rank``."""
    matrix = weight.reshape(weight.shape[0], -1)
    out_size, in_size = matrix.shape
    values = singular_values(matrix).double()
    energy = values**2
    remaining = (energy.sum() - torch.cumsum(energy, 0)).clamp(min=0)
    total = float(energy.sum()) or 1.0
    ranks = list(range(1, len(values) + 1))
    return {
        "singular_values": values.tolist(),
        "ranks": ranks,
        "relative_error": (remaining / total).sqrt().tolist(),
        "params": [r * (out_size + in_size) for r in ranks],
        "dense_params": out_size * in_size,
        "break_even_rank": break_even_rank(out_size, in_size),
    }


# --------------------------------------------------------------------------------------------
# calibration
# --------------------------------------------------------------------------------------------


def layer_input_activations(handle: ModelHandle, layer_name: str, max_samples: int = 256) -> np.ndarray:
    """Every value that reaches the input of layer ``layer_name`` on the first ``max_samples``
    evaluation inputs, flattened (float32), collected with a forward pre-hook."""
    if handle.backend != "torch" or isinstance(handle.model, torch.jit.ScriptModule):
        raise CompressError(f"'{handle.name}': activation histograms need a Python torch model (forward hooks), not {handle.kind}")
    module = handle.model.get_submodule(torch_layer_names(_layer(handle, layer_name).weight_name)[1])
    seen: list[np.ndarray] = []
    hook = module.register_forward_pre_hook(lambda _, args: seen.append(args[0].detach().float().reshape(-1).numpy().copy()))
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


def calibration_ranges(activations: np.ndarray, bits: int = 8, percentiles: tuple[float, ...] = PERCENTILES) -> dict[str, Any]:
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
    return {"bits": bits, "samples": int(len(values)), "histogram": _histogram(values, bins=100), "methods": methods}


# --------------------------------------------------------------------------------------------
# distillation
# --------------------------------------------------------------------------------------------


def softened_probabilities(logits: np.ndarray, temperature: float) -> np.ndarray:
    """``softmax(logits / T)`` along the last axis (float64); higher ``T`` flattens it."""
    return np.exp(_softened_log_probabilities(logits, temperature))


def _softened_log_probabilities(logits: np.ndarray, temperature: float) -> np.ndarray:
    if not temperature > 0:
        raise CompressError(f"temperature {temperature!r} is not allowed; use a number > 0")
    scaled = np.asarray(logits, dtype=np.float64) / temperature
    shifted = scaled - scaled.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def distillation_view(teacher: ModelHandle, student: ModelHandle, sample: int = 0, temperature: float = 4.0) -> dict[str, Any]:
    """Teacher and student probabilities at temperature ``T`` for evaluation sample ``sample``.

    Also the label (or None), the entropy of each distribution (nats) and the distillation loss
    term ``T**2 * KL(teacher || student)`` that ``compress_core.analysis.recover.finetune`` minimises.
    """
    if teacher.task != "classification":
        raise CompressError(f"'{teacher.name}' is an {teacher.task} model; the distillation demo needs class probabilities")
    if not 0 <= sample < len(teacher.data):
        raise CompressError(f"sample {sample} is out of range; the evaluation data has {len(teacher.data)} samples")
    inputs = teacher.data.inputs[sample : sample + 1]
    teacher_logits, student_logits = teacher.run(inputs), student.run(inputs)
    log_p = _softened_log_probabilities(teacher_logits[0], temperature)
    log_q = _softened_log_probabilities(student_logits[0], temperature)
    p, q = np.exp(log_p), np.exp(log_q)
    labels = teacher.data.labels
    return {
        "temperature": temperature,
        "label": None if labels is None else int(labels[sample]),
        "teacher": p.tolist(),
        "student": q.tolist(),
        "teacher_entropy": float(-np.sum(p * log_p)),
        "student_entropy": float(-np.sum(q * log_q)),
        "loss_term": float(distillation_loss(torch.from_numpy(student_logits), torch.from_numpy(teacher_logits), temperature)),
    }
