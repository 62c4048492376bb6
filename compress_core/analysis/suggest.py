"""Suggested plans: greedy per-layer allocation from a sensitivity table, then measured.

In the spirit of AIMET's greedy compression-ratio selection: every layer starts float; each step
moves one layer to a more compressed option (a bit width, optionally with pruning or a rank, all
taken from the sensitivity table), choosing the move with the smallest increase of estimated drop
per unit of saving, until the size and MACs budgets are met. A layer option's estimated drop is the
sum of its measured one-layer drops, plus a small tie-break by weight noise (from the proxies) so
that among options with no measurable drop the least distorting ones go first. The plan is then
applied and evaluated; if the measured size misses the target (the estimate ignores rounding and
coupled layers), the greedy continues with the target corrected by the error.

Without a table, ``suggest_plan`` sweeps for itself (``suggest_sweep``): a small sweep (layers x cells
up to ``FULL_SWEEP_CELLS``, 250) runs whole. A larger one runs bits first: every layer at its middle
width; pruning (and the other kinds) only on the largest layers that hold half of the weights, where it
can pay, at its middle level; the other levels are estimated from the weight noise they add, and the
cells of the greedy's plan harsher than any measured level of their layer are then measured and the
greedy run again, until none is left. On an 83-layer detector this measures about one cell in twelve of
the whole sweep.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from compress_core.analysis.metrics import model_metrics, quality_metric
from compress_core.analysis.sensitivity import Cancel, run_sensitivity
from compress_core.analysis.suggest_sweep import MAX_ROUNDS, LazyTable, whole_sweep_fits
from compress_core.analysis.sweep import Progress, SensitivityResult, SensitivityRow, Sweep, measured
from compress_core.errors import CompressError
from compress_core.models.handle import ModelHandle
from compress_core.models.inventory import LayerInfo, layer_inventory, total_params
from compress_core.ops.lowrank import resolve_rank
from compress_core.ops.quantize import ALLOWED_BITS
from compress_core.ops.storage import FLOAT_BITS, index_bits, weight_bits
from compress_core.plan import Plan
from compress_core.plan.layer_config import LayerConfig, PruneConfig, checked_bits
from compress_core.transform.apply import apply_plan, full_rank

TIE_BREAK = 0.01
"""Points of estimated drop per unit of relative weight noise (noise power / signal power)."""
SIZE_FIXUPS = 3


@dataclass(frozen=True)
class Option:
    """One layer setting the greedy can choose: ``bits`` (None = float) and at most one of pruning
    (``prune_kind`` is the table's kind, ``prune`` or ``structured``, at ``ratio``) or ``rank``."""

    bits: int | None = None
    prune_kind: str | None = None
    ratio: float = 0.0
    rank: int | float | None = None

    def config(self, sweep: Sweep) -> LayerConfig | None:
        """The plan entry, or None for the float layer."""
        if self.bits is None and self.prune_kind is None and self.rank is None:
            return None
        kind = "structured" if self.prune_kind == "structured" else "unstructured"
        prune = PruneConfig(ratio=self.ratio, kind=kind) if self.prune_kind else None
        if self.bits is None:
            return LayerConfig(prune=prune, rank=self.rank)
        return LayerConfig(
            bits=self.bits, scheme=sweep.scheme, granularity=sweep.granularity, prune=prune, rank=self.rank
        )


@dataclass
class Suggestion:
    """A suggested plan and what it measured (``metrics``: see ``measure_plan``); ``met`` says
    whether every budget holds. ``evaluations``: the sweep cells ``suggest_plan`` measured for
    itself (0 when it was given a table or found its sweeps cached)."""

    plan: Plan
    metrics: dict[str, float]
    estimated_drop: float
    met: bool
    notes: list[str] = field(default_factory=list)
    evaluations: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "plan": self.plan.to_dict()}


def suggest_plan(
    handle: ModelHandle,
    table: SensitivityResult | None = None,
    *,
    target_size: float | None = None,
    target_macs: float | None = None,
    max_drop: float | None = None,
    sweep: Sweep | None = None,
    cache: bool | str | Path = True,
    progress: Callable[[Progress], None] | None = None,
    cancel: Cancel = None,
) -> Suggestion:
    """A per-layer plan meeting ``target_size`` (plan bytes / float bytes) and ``target_macs``
    (compressed / original MACs) with the least estimated drop, without exceeding ``max_drop``
    (points). Without ``table``, the sensitivity of ``sweep`` (default: bits and pruning) is measured
    as the module's docstring says, with ``cache``, ``progress`` and ``cancel`` as ``run_sensitivity``
    takes them; a stopped sweep raises ``CompressError``."""
    for name, value in (("target size", target_size), ("target MACs", target_macs)):
        if value is not None and not 0 < value <= 1:
            raise CompressError(f"{name} {value!r} is not allowed; use a ratio in (0, 1], e.g. 0.15")
    if max_drop is not None and max_drop < 0:
        raise CompressError(f"max drop {max_drop!r} is not allowed; use points of metric >= 0, e.g. 1.0")
    if target_size is None and target_macs is None and max_drop is None:
        raise CompressError("give at least one budget: a target size, a target MACs ratio or a maximum drop")
    layers = layer_inventory(handle)
    lazy, evaluations = None, 0
    if table is None:
        sweep = sweep or Sweep(kinds=("bits", "prune"))
        if not whole_sweep_fits(layers, sweep):
            lazy = LazyTable(handle, layers, sweep, cache=cache, progress=progress, cancel=cancel)
            if lazy.first is None:
                lazy = None  # no layer takes any level of the sweep: the whole sweep only lists why
        if lazy is None:
            table = run_sensitivity(handle, sweep, cache=cache, progress=progress, cancel=cancel, inventory=layers)
            if table.cancelled:
                raise CompressError("suggest was stopped during its sensitivity sweep")
            evaluations = 0 if table.cached else table.evaluations
        else:
            table = lazy.table()
    greedy = _Greedy(handle, layers, table)
    reference = handle.run(handle.data.inputs)
    size_goal = target_size
    estimated: list[tuple[str, str, int | float]] = []
    for _ in range(SIZE_FIXUPS):
        goals = {"size": size_goal, "macs": target_macs}
        greedy.run(goals, max_drop)
        if lazy is not None:
            greedy = _measure_the_plan(handle, layers, lazy, greedy, goals, max_drop)
            estimated = lazy.unbounded(greedy.cells())
        plan = greedy.plan()
        metrics = measure_plan(handle, plan, reference, layers)
        if target_size is None or size_goal is None or metrics["size_ratio"] <= target_size:
            break  # size_goal is None exactly when target_size is
        size_goal -= metrics["size_ratio"] - greedy.ratio("size")
    met = all(
        [
            target_size is None or metrics["size_ratio"] <= target_size,
            target_macs is None or metrics["macs_ratio"] <= target_macs,
            max_drop is None or metrics["drop"] <= max_drop,
        ]
    )
    notes = (
        []
        if met
        else [
            f"budget not met: measured size {metrics['size_ratio']:.4f}, MACs {metrics['macs_ratio']:.4f}, drop {metrics['drop']:.2f}"
        ]
    )
    if estimated:
        notes.append(
            f"{len(estimated)} of the plan's sensitivity cells are estimates beyond the levels measured for their layer"
        )
    return Suggestion(
        plan=plan,
        metrics=metrics,
        estimated_drop=greedy.estimated_drop(),
        met=met,
        notes=notes,
        evaluations=lazy.evaluations if lazy else evaluations,
    )


def _measure_the_plan(
    handle: ModelHandle,
    layers: list[LayerInfo],
    lazy: LazyTable,
    greedy: _Greedy,
    goals: dict[str, float | None],
    max_drop: float | None,
) -> _Greedy:
    """Measure the cells of the greedy's plan that no measured level bounds and allocate again, until
    there are none (``suggest_sweep`` rule 5); return the last allocation."""
    for _ in range(MAX_ROUNDS):
        if not lazy.measure(lazy.unbounded(greedy.cells())):
            break
        greedy = _Greedy(handle, layers, lazy.table())
        greedy.run(goals, max_drop)
    return greedy


def measure_plan(
    handle: ModelHandle, plan: Plan, reference: np.ndarray | None = None, layers: list[LayerInfo] | None = None
) -> dict[str, float]:
    """Apply ``plan`` and measure it against the original: metric (%), drop (points), output SQNR
    (dB, the finer measure of fidelity), size ratio (plan bytes / original float bytes), MACs
    ratio, plan bytes and float bytes."""
    layers = layers if layers is not None else layer_inventory(handle)
    reference = reference if reference is not None else handle.run(handle.data.inputs)
    compressed = apply_plan(handle, plan, layers)
    outputs = compressed.run(handle.data.inputs)
    measured = model_metrics(compressed, reference, outputs, with_zip=False)
    float_bytes = total_params(handle) * FLOAT_BITS // 8
    metric = quality_metric(handle, reference, outputs)
    return {
        "metric": metric,
        "drop": quality_metric(handle, reference, reference) - metric,
        "output_sqnr_db": measured["sqnr_db"],
        "size_ratio": measured["plan_bytes"] / float_bytes,
        "macs_ratio": measured["macs"] / max(sum(layer.macs for layer in layers), 1),
        "plan_bytes": measured["plan_bytes"],
        "float_bytes": float_bytes,
    }


def uniform_plan(handle: ModelHandle, target_size: float, sweep: Sweep | None = None) -> tuple[Plan, dict[str, float]]:
    """The widest uniform bit width whose measured size meets ``target_size``, and its metrics."""
    sweep = sweep or Sweep()
    layers = layer_inventory(handle)
    reference = handle.run(handle.data.inputs)
    for bits in sorted((b for b in ALLOWED_BITS if b <= 8), reverse=True):
        plan = Plan(default=LayerConfig(bits=bits, scheme=sweep.scheme, granularity=sweep.granularity))
        metrics = measure_plan(handle, plan, reference, layers)
        if metrics["size_ratio"] <= target_size:
            return plan, metrics
    raise CompressError(
        f"no uniform bit width reaches size ratio {target_size}; the smallest is 2 bits at {metrics['size_ratio']:.4f}"
    )


class _Greedy:
    """The allocation state: one chosen ``Option`` per layer, estimated size, MACs and drop."""

    def __init__(self, handle: ModelHandle, layers: list[LayerInfo], table: SensitivityResult) -> None:
        self.layers, self.sweep = layers, table.sweep
        self.rows = {(row.layer, row.kind, measured(row)[0]): row for row in table.rows}
        self.options = {layer.name: self._options(layer) for layer in layers}
        self.float_bits = total_params(handle) * FLOAT_BITS
        self.fixed_bits = self.float_bits - sum(math.prod(layer.weight_shape) for layer in layers) * FLOAT_BITS
        self.total_macs = max(sum(layer.macs for layer in layers), 1)
        self.choice = {layer.name: Option() for layer in layers}

    def _options(self, layer: LayerInfo) -> list[Option]:
        """Every combination of a measured bit width (or float) with one measured prune or rank level."""
        levels = {
            kind: [lvl for (name, k, lvl) in self.rows if name == layer.name and k == kind]
            for kind in ("bits", "prune", "structured", "rank")
        }
        widths = [None, *(checked_bits(bits) for bits in levels["bits"])]
        shapes: list[tuple[str | None, float, int | float | None]] = [(None, 0.0, None)]
        shapes += [(kind, ratio, None) for kind in ("prune", "structured") for ratio in levels[kind]]
        shapes += [(None, 0.0, rank) for rank in levels["rank"]]
        return [Option(bits, kind, ratio, rank) for bits in widths for kind, ratio, rank in shapes]

    def _rows(self, layer: LayerInfo, option: Option) -> list[SensitivityRow]:
        keys: list[tuple[str, int | float]] = [("bits", option.bits)] if option.bits else []
        if option.prune_kind:
            keys.append((option.prune_kind, option.ratio))
        if option.rank is not None:
            keys.append(("rank", option.rank))
        return [self.rows[(layer.name, kind, level)] for kind, level in keys]

    def _drop(self, layer: LayerInfo, option: Option) -> float:
        return sum(max(measured(row)[1], 0.0) for row in self._rows(layer, option))

    def _cost(self, layer: LayerInfo, option: Option) -> float:
        noise = sum(
            1 - _proxy(row) if row.kind == "rank" else 10 ** (-_proxy(row) / 10) for row in self._rows(layer, option)
        )
        return self._drop(layer, option) + TIE_BREAK * noise

    def _bits(self, layer: LayerInfo, option: Option) -> float:
        """Stored bits of the layer's weight (two factors after low-rank), by ``ops.storage`` as
        ``metrics.plan_bytes`` counts them."""
        numel = math.prod(layer.weight_shape)
        channels = layer.weight_shape[layer.out_axis]
        weights, channel_groups, index = 1, channels, 0
        if option.rank is not None:
            rank = resolve_rank(option.rank, full_rank(layer))
            numel, weights, channel_groups = rank * (channels + numel // channels), 2, rank + channels
        if option.prune_kind == "structured":
            kept_channels = channels - round(option.ratio * channels)
            numel, channel_groups = numel * kept_channels // channels, kept_channels
        elif option.prune_kind == "prune":
            kept = numel - round(option.ratio * numel)
            numel, index = kept, index_bits(numel, kept)
        groups = channel_groups if self.sweep.granularity == "channel" else weights
        return weight_bits(numel, option.bits, self.sweep.scheme, groups, index)

    def _macs(self, layer: LayerInfo, option: Option) -> float:
        if option.prune_kind == "structured":
            return layer.macs * (1 - option.ratio)
        if option.rank is not None:
            numel = math.prod(layer.weight_shape)
            channels = layer.weight_shape[layer.out_axis]
            return layer.macs * resolve_rank(option.rank, full_rank(layer)) * (channels + numel // channels) / numel
        return layer.macs

    def ratio(self, budget: str) -> float:
        """Estimated ``size`` (plan bits / float bits) or ``macs`` ratio of the current allocation."""
        if budget == "size":
            return (
                self.fixed_bits + sum(self._bits(layer, self.choice[layer.name]) for layer in self.layers)
            ) / self.float_bits
        return sum(self._macs(layer, self.choice[layer.name]) for layer in self.layers) / self.total_macs

    def estimated_drop(self) -> float:
        return sum(self._drop(layer, self.choice[layer.name]) for layer in self.layers)

    def run(self, targets: dict[str, float | None], max_drop: float | None) -> None:
        """Take greedy steps until every target holds, or no step is left within ``max_drop``.

        With no target, compress as far as ``max_drop`` allows. A step's saving counts each unmet
        target relative to what is left of it; no step may make the size or the MACs worse.
        """
        while True:
            left = {budget: self.ratio(budget) - goal for budget, goal in targets.items() if goal is not None}
            if left and max(left.values()) <= 0:
                return
            weights = {budget: 1 / value for budget, value in left.items() if value > 0} or {"size": 1.0, "macs": 1.0}
            step = self._best_step(weights, max_drop)
            if step is None:
                return
            self.choice[step[0]] = step[1]

    def _best_step(self, weights: dict[str, float], max_drop: float | None) -> tuple[str, Option] | None:
        best, best_key = None, None
        drop_now = self.estimated_drop()
        for layer in self.layers:
            current = self.choice[layer.name]
            now = {
                "size": self._bits(layer, current) / self.float_bits,
                "macs": self._macs(layer, current) / self.total_macs,
            }
            cost_now = self._cost(layer, current)
            for option in self.options[layer.name]:
                gains = {
                    "size": now["size"] - self._bits(layer, option) / self.float_bits,
                    "macs": now["macs"] - self._macs(layer, option) / self.total_macs,
                }
                gain = sum(weight * gains[budget] for budget, weight in weights.items())
                if min(gains.values()) < 0 or gain <= 0:
                    continue
                if (
                    max_drop is not None
                    and drop_now - self._drop(layer, current) + self._drop(layer, option) > max_drop
                ):
                    continue
                key = (max(self._cost(layer, option) - cost_now, 0.0) / gain, -gain)
                if best_key is None or key < best_key:
                    best, best_key = (layer.name, option), key
        return best

    def cells(self) -> list[tuple[str, str, int | float]]:
        """The sensitivity cells (layer, kind, level) the current allocation's estimate stands on."""
        return [
            (row.layer, row.kind, measured(row)[0])
            for layer in self.layers
            for row in self._rows(layer, self.choice[layer.name])
        ]

    def plan(self) -> Plan:
        """The current allocation as a ``Plan`` (float layers left out)."""
        entries = {name: option.config(self.sweep) for name, option in self.choice.items()}
        return Plan(layers={name: config for name, config in entries.items() if config is not None})


def _proxy(row: SensitivityRow) -> float:
    """The proxy of a measured row: weight SQNR (dB) or, for ``rank``, energy kept."""
    if row.proxy is None:
        raise CompressError(f"sensitivity row ({row.layer}, {row.kind}, {row.level}) has no proxy; run the sweep again")
    return row.proxy
