"""What one sensitivity cell does to a layer's weight, and the cell's proxy, without running the model.

``perturb_weight`` gives the weight ``apply_plan`` would leave for one (kind, level) of one layer, and
the proxy the sensitivity table shows (weight SQNR in dB; energy kept for ``rank``); ``cell_proxies``
gives the proxies of many levels at once (``rank`` from one set of singular values).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from compress_core.analysis.sweep import Sweep
from compress_core.models.inventory import LayerInfo
from compress_core.ops.lowrank import energy_kept, resolve_rank, singular_values, truncated_svd
from compress_core.ops.prune import channels_to_prune
from compress_core.ops.quantize import quantize_weight
from compress_core.ops.sqnr import sqnr_db
from compress_core.plan.layer_config import PruneConfig
from compress_core.transform.apply import full_rank
from compress_core.transform.weights import prune_mask


def perturb_weight(
    weight: torch.Tensor,
    layer: LayerInfo,
    kind: str,
    level: int | float,
    sweep: Sweep,
) -> tuple[torch.Tensor, float]:
    """The layer's weight after one cell's change (for ``structured``: its channels zeroed) and the
    cell's proxy (weight SQNR in dB, or energy kept for ``rank``)."""
    axis = layer.out_axis
    with torch.no_grad():
        if kind == "bits":
            assert isinstance(level, int), "config_for admits only integer bit widths"
            changed = quantize_weight(weight, level, sweep.scheme, sweep.granularity, axis=axis).values
        elif kind == "prune":
            changed = weight * prune_mask(weight, PruneConfig(ratio=level), axis)
        elif kind == "structured":
            changed = weight.index_fill(axis, channels_to_prune(weight, level, axis=axis), 0.0)
        else:
            moved = weight.movedim(axis, 0)
            matrix = moved.reshape(moved.shape[0], -1)
            first, second = truncated_svd(matrix, level)
            changed = (first @ second).reshape(moved.shape).movedim(0, axis).to(weight.dtype)
            return changed, energy_kept(singular_values(matrix), resolve_rank(level, full_rank(layer)))
    return changed, sqnr_db(weight, changed)


def cell_proxies(
    weight: torch.Tensor, layer: LayerInfo, kind: str, levels: Sequence[int | float], sweep: Sweep
) -> dict[int | float, float]:
    """The proxy of each level of ``kind`` on ``layer`` (as ``perturb_weight`` gives it), without a
    forward pass; for ``rank`` from one set of singular values."""
    if kind == "rank":
        moved = weight.movedim(layer.out_axis, 0)
        values = singular_values(moved.reshape(moved.shape[0], -1))
        return {level: energy_kept(values, resolve_rank(level, full_rank(layer))) for level in levels}
    return {level: perturb_weight(weight, layer, kind, level, sweep)[1] for level in levels}
