"""Plain data for the Learn page's demos: quantization, pruning, low-rank and distillation.

Every demo returns dicts of numbers and lists (JSON-ready, nothing to plot with), computed on a
real layer of a real model where it makes sense. No Streamlit, no plotly: the page draws them.

* Quantization: a layer's grid and error histogram (:func:`quantization_view`, on the one view of a
  weight on its grid, :func:`grid_view`, which the Layers page draws too), SQNR against bits
  (:func:`sqnr_by_bits`, about 6 dB per bit), non-uniform schemes against uniform
  (:func:`scheme_comparison`), and the extremes, binary and ternary (:func:`extreme_quantization`).
* Pruning: the keep-mask of a layer as a 2-D grid (:func:`pruning_mask_2d`).
* Low-rank: singular values, error and parameters against rank, break-even (:func:`low_rank_profile`).
* Distillation: teacher and student probabilities softened at a temperature, over the classes of one
  position of the output (a sequence's step, a dense map's pixel) (:func:`distillation_view`).

Calibration (activation ranges) is ``compress_core.analysis.calibration``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from compress_core.analysis.recover import distillation_loss
from compress_core.errors import CompressError
from compress_core.models.handle import ModelHandle
from compress_core.models.inventory import LayerInfo, layer_inventory, layer_weight_array
from compress_core.ops.lowrank import break_even_rank, singular_values
from compress_core.ops.prune import channels_to_prune
from compress_core.ops.quantize import SCHEMES, QuantizedWeight, quantize_weight
from compress_core.ops.sqnr import sqnr_db
from compress_core.plan.layer_config import PruneConfig
from compress_core.transform.weights import prune_mask

TEACHING_BITS = (2, 3, 4, 5, 6, 7, 8)
HISTOGRAM_BINS = 60
TERNARY_THRESHOLD = 0.7
"""Ternary weight networks (Li et al. 2016): weights below 0.7 * mean|w| become zero."""


def layer_weight(handle: ModelHandle, layer_name: str) -> torch.Tensor:
    """The float32 weight of one layer of the inventory, output channels first (a copy)."""
    layer = find_layer(handle, layer_name)
    return torch.from_numpy(layer_weight_array(handle, layer)).movedim(layer.out_axis, 0).contiguous()


def find_layer(handle: ModelHandle, layer_name: str) -> LayerInfo:
    """The inventory entry of layer ``layer_name``; a ``CompressError`` listing the layers when there is none."""
    layers = {layer.name: layer for layer in layer_inventory(handle)}
    if layer_name not in layers:
        raise CompressError(
            f"layer '{layer_name}' is not a compressible layer of '{handle.name}'; layers: {', '.join(layers)}"
        )
    return layers[layer_name]


def histogram(values: np.ndarray, bins: int = HISTOGRAM_BINS) -> dict[str, list[float]]:
    """``edges`` and ``counts`` of ``values`` in ``bins`` equal bins, as lists."""
    counts, edges = np.histogram(values, bins=bins)
    return {"edges": edges.tolist(), "counts": counts.tolist()}


def _quantize(weight: torch.Tensor, bits: int, scheme: str, granularity: str, axis: int = 0) -> QuantizedWeight:
    try:
        return quantize_weight(weight, bits, scheme, granularity, axis=axis)
    except ValueError as exc:
        raise CompressError(str(exc)) from exc


# --------------------------------------------------------------------------------------------
# quantization
# --------------------------------------------------------------------------------------------


def grid_view(
    weight: np.ndarray, out_axis: int, bits: int, scheme: str, granularity: str, channel: int | None
) -> dict[str, Any]:
    """``weight`` quantized, seen through one of its grids (numpy arrays, for plots).

    ``values`` are the weights of output channel ``channel`` (all of them for None) and ``levels``
    the sorted levels of their grid: the channel's own per channel, the shared one per tensor (so
    ``channel=None`` needs ``granularity="tensor"``); ``step`` is the smallest gap between levels and
    ``scope`` names what ``values`` cover. ``errors`` (quantized - original, shaped like ``weight``)
    and ``sqnr_db`` cover the whole weight. Bad settings raise ``CompressError``.
    """
    channels = weight.shape[out_axis]
    if channel is not None and not 0 <= channel < channels:
        raise CompressError(f"channel {channel} is out of range; the weight has {channels} output channels")
    tensor = torch.from_numpy(weight)
    quantized = _quantize(tensor, bits, scheme, granularity, axis=out_axis)
    try:
        levels = quantized.levels(channel if granularity == "channel" else None).numpy()
    except ValueError as exc:
        raise CompressError(str(exc)) from exc
    return {
        "values": (weight if channel is None else np.take(weight, channel, axis=out_axis)).ravel(),
        "levels": levels,
        "step": float(np.diff(levels).min()) if len(levels) > 1 else 0.0,
        "scope": "whole tensor" if channel is None else f"output channel {channel}",
        "errors": (quantized.values - tensor).numpy(),
        "sqnr_db": sqnr_db(tensor, quantized.values),
    }


def quantization_view(
    weight: torch.Tensor, bits: int, scheme: str = "symmetric", granularity: str = "tensor", channel: int = 0
) -> dict[str, Any]:
    """One channel of ``weight`` (output channels first) on its grid: the grid, the channel's values
    before and after, and the error (``grid_view`` as histograms).

    Returns ``levels`` (the channel's representable values), ``weight_histogram`` and
    ``error_histogram`` (``edges``, ``counts`` of the channel's weights and of ``q(w) - w``),
    ``sqnr_db`` of the whole weight, ``max_error`` and ``step`` (smallest gap between levels) of
    the channel.
    """
    view = grid_view(weight.numpy(), 0, bits, scheme, granularity, channel)
    error = view["errors"][channel].ravel()
    return {
        "bits": bits,
        "scheme": scheme,
        "granularity": granularity,
        "levels": view["levels"].tolist(),
        "weight_histogram": histogram(view["values"]),
        "error_histogram": histogram(error),
        "sqnr_db": view["sqnr_db"],
        "max_error": float(np.abs(error).max()),
        "step": view["step"],
    }


def sqnr_by_bits(
    weight: torch.Tensor, scheme: str = "symmetric", granularity: str = "channel", bits: tuple[int, ...] = TEACHING_BITS
) -> dict[str, Any]:
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
    return {
        "kind": kind,
        "shape": list(mask.shape),
        "mask": mask.int().tolist(),
        "zeros": int((~mask).sum()),
        "kept": int(mask.sum()),
    }


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


DISTILLATION_TASKS = {"classification": 1, "sequence": 2, "dense": 1}
"""The tasks whose outputs are logits over classes, and the axis (batch first) that holds the classes."""
TOP_CLASSES = 20
"""The distillation demo shows this many classes (the teacher's most probable) when the output has more."""
POSITION_NAMES = {"classification": (), "sequence": ("step",), "dense": ("row", "column")}
"""What each axis of a sample's positions is called: one distribution over the classes per position."""


def _check_distillable(handle: ModelHandle) -> None:
    """A ``CompressError`` saying why the demo does not apply when ``handle``'s outputs are not logits over classes."""
    if handle.task not in DISTILLATION_TASKS:
        raise CompressError(
            f"'{handle.name}' is an {handle.task} model; the distillation demo needs class probabilities"
        )


def class_positions(task: str, shape: tuple[int, ...]) -> tuple[int, ...]:
    """The grid of positions in one sample's output (``shape``, batch axis first) that each hold a
    distribution over the classes: ``()`` for classification ``[N, C]``, ``(T,)`` for a sequence
    ``[N, T, C]``, ``(H, W)`` for a dense map ``[N, C, H, W]``."""
    if task not in DISTILLATION_TASKS:
        raise CompressError(f"a {task} output has no class probabilities")
    axis = DISTILLATION_TASKS[task]
    expected = 2 + len(POSITION_NAMES[task])
    if len(shape) != expected:
        raise CompressError(f"a {task} output has {expected} axes; this one has shape {list(shape)}")
    return tuple(size for index, size in enumerate(shape) if index not in (0, axis))


def distillation_positions(handle: ModelHandle) -> tuple[int, ...]:
    """``class_positions`` of ``handle``'s output, from a run on its first evaluation sample."""
    _check_distillable(handle)
    return class_positions(handle.task, handle.run(handle.data.inputs[0:1]).shape)


def _position(position: int | Sequence[int] | None, grid: tuple[int, ...], task: str) -> tuple[int, ...]:
    """``position`` as a tuple checked against ``grid`` (None: the first position)."""
    if position is None:
        return (0,) * len(grid)
    chosen = (position,) if isinstance(position, int) else tuple(int(index) for index in position)
    names = POSITION_NAMES[task]
    if len(chosen) != len(grid):
        wanted = " and ".join(names) if names else "no position (one distribution per sample)"
        raise CompressError(f"position {list(chosen)} does not fit a {task} output: give {wanted}")
    for name, index, size in zip(names, chosen, grid):
        if not 0 <= index < size:
            raise CompressError(f"{name} {index} is out of range; the output has {size} {name}s")
    return chosen


def _position_label(labels: np.ndarray | None, sample: int, position: tuple[int, ...]) -> int | None:
    """The label of one position: labels shaped like the positions (one per step or pixel, or one
    per sample for classification), negative values being padding; None otherwise (CTC targets)."""
    if labels is None:
        return None
    mine = np.asarray(labels[sample])
    if len(mine.shape) != len(position):
        return None
    if any(not 0 <= index < size for index, size in zip(position, mine.shape)):
        return None
    value = int(mine[position])
    return value if value >= 0 else None


def distillation_of_logits(
    teacher_logits: np.ndarray,
    student_logits: np.ndarray,
    task: str,
    temperature: float,
    position: int | Sequence[int] | None = None,
    top_k: int = TOP_CLASSES,
    label: int | None = None,
) -> dict[str, Any]:
    """The distillation demo on one sample's logits (``[1, ...]``, batch axis first) at one position.

    The distribution is over the classes of that position only (a step of a sequence, a pixel of a
    dense map), so each entropy is at most ``max_entropy``, ``ln C``. ``classes`` are the class ids
    shown: all of them in order when there are at most ``top_k``, else the ``top`` (``top_k``) most
    probable for the teacher, most probable first, plus ``label`` when it is not among them.
    ``teacher`` and ``student`` are their probabilities, ``teacher_rest`` and ``student_rest`` what
    the other classes hold; the entropies cover every class. ``loss_term`` is
    ``recover.distillation_loss`` on the position's ``[1, C]`` logits: ``T**2 * KL(teacher || student)``
    over the classes.
    """
    if top_k < 1:
        raise CompressError(f"top_k {top_k} is not allowed; show at least one class")
    grid = class_positions(task, teacher_logits.shape)
    if student_logits.shape != teacher_logits.shape:
        raise CompressError(
            f"the student's output {list(student_logits.shape)} does not match the teacher's {list(teacher_logits.shape)}"
        )
    chosen = _position(position, grid, task)
    axis = DISTILLATION_TASKS[task]

    def at_position(logits: np.ndarray) -> np.ndarray:
        per_position = np.moveaxis(np.asarray(logits[0], dtype=np.float64), axis - 1, -1)
        return per_position[chosen]

    teacher_row, student_row = at_position(teacher_logits), at_position(student_logits)
    log_p = _softened_log_probabilities(teacher_row, temperature)
    log_q = _softened_log_probabilities(student_row, temperature)
    p, q = np.exp(log_p), np.exp(log_q)
    count = len(p)
    if count <= top_k:
        shown = np.arange(count)
    else:
        shown = np.argsort(-p, kind="stable")[:top_k]
        if label is not None and 0 <= label < count and label not in shown:
            shown = np.append(shown, label)
    rest = np.ones(count, dtype=bool)
    rest[shown] = False
    loss = distillation_loss(torch.from_numpy(student_row[None]), torch.from_numpy(teacher_row[None]), temperature)
    return {
        "task": task,
        "temperature": temperature,
        "position": list(chosen),
        "positions": list(grid),
        "position_names": list(POSITION_NAMES[task]),
        "class_count": count,
        "max_entropy": float(np.log(count)),
        "label": label,
        "classes": shown.tolist(),
        "top": min(top_k, count),
        "teacher": p[shown].tolist(),
        "student": q[shown].tolist(),
        "teacher_rest": float(p[rest].sum()),
        "student_rest": float(q[rest].sum()),
        "teacher_entropy": float(-np.sum(p * log_p)),
        "student_entropy": float(-np.sum(q * log_q)),
        "loss_term": float(loss),
    }


def distillation_view(
    teacher: ModelHandle,
    student: ModelHandle,
    sample: int = 0,
    temperature: float = 4.0,
    position: int | Sequence[int] | None = None,
    top_k: int = TOP_CLASSES,
) -> dict[str, Any]:
    """Teacher and student probabilities at temperature ``T`` for evaluation sample ``sample``, at
    one ``position`` of its output (a step of a sequence, ``(row, column)`` of a dense map, nothing
    for classification; None is the first): ``distillation_of_logits``.

    For sequences, ``steps`` is also the teacher's most probable class at each step (to find the
    steps worth looking at). Tasks without class probabilities (``ids``, ``embedding``) raise
    ``CompressError``.
    """
    _check_distillable(teacher)
    if not 0 <= sample < len(teacher.data):
        raise CompressError(f"sample {sample} is out of range; the evaluation data has {len(teacher.data)} samples")
    inputs = teacher.data.inputs[sample : sample + 1]
    teacher_logits, student_logits = teacher.run(inputs), student.run(inputs)
    grid = class_positions(teacher.task, teacher_logits.shape)
    chosen = _position(position, grid, teacher.task)
    label = _position_label(teacher.data.labels, sample, chosen)
    view = distillation_of_logits(teacher_logits, student_logits, teacher.task, temperature, chosen, top_k, label)
    if teacher.task == "sequence":
        view["steps"] = teacher_logits[0].argmax(axis=-1).tolist()
    return view
