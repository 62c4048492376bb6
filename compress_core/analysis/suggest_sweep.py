"""The sensitivity table ``suggest_plan`` builds for itself: whole on small sweeps, lazily on large ones.

A whole sweep costs one evaluation per (layer, kind, level): 83 layers x 14 cells is 1,162 forward
passes over the evaluation data, about half an hour for a detector on two cores. The greedy needs far
fewer of them measured. The rule:

1. **Small sweeps run whole**: when layers x cells is at most ``FULL_SWEEP_CELLS``, the table is
   ``run_sensitivity``'s, as before.
2. **Bits first, everywhere**: every layer is measured at one anchor width, the middle one of the
   sweep's widths by weight noise (4 bits of 8, 6, 4, 3, 2).
3. **Pruning (and structured pruning, low rank) only where it pays**: on the largest layers that
   together hold ``PAYING_SHARE`` of the compressible weights, at their middle level (ratio 0.5 of
   0.1 ... 0.9). Pruning saves ``ratio x bits - 1`` bits per weight (the mask costs one), so on a small
   layer it cannot move the model's size; a layer left out gets no option of that kind.
4. **Estimates for the other levels**: the drop of a level that was not measured is scaled from the
   measured ones by the relative weight noise the level adds (the proxy, computed without running the
   model: 10^(-SQNR/10), or the energy a rank drops): proportional to it beyond the measured levels,
   interpolated on log noise between two of them.
5. **Measure what the plan needs**: the greedy allocates on measured and estimated cells; the cells of
   its plan that are harsher than every measured level of their layer and kind (more weight noise)
   are measured, and the greedy runs again, until no such cell is left (at most ``MAX_ROUNDS``
   rounds). A milder cell stays an estimate: a sweep's drop grows with the weight noise, so the
   measured harsher level bounds it, and the proportional estimate is close for continuous metrics
   (cosine) and above the truth for thresholded ones (agreement, accuracy). The plan itself is then
   applied and measured as a whole, as always.

Every measurement is a ``run_sensitivity`` call for one (kind, level) on a set of layers, so it keeps
the disk cache (a stopped ``suggest`` continues from the calls it finished), progress and cancel.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import replace
from pathlib import Path

import torch

from compress_core.analysis.cell_weights import cell_proxies
from compress_core.analysis.cells import skip_reason
from compress_core.analysis.sensitivity import Cancel, run_sensitivity
from compress_core.analysis.sweep import Progress, SensitivityResult, SensitivityRow, Sweep
from compress_core.errors import CompressError
from compress_core.models.handle import ModelHandle
from compress_core.models.inventory import LayerInfo, layer_weight_array

FULL_SWEEP_CELLS = 250
"""Largest layers x cells that suggest sweeps whole."""
PAYING_SHARE = 0.5
"""Share of the compressible weights held by the layers on which kinds other than bits are swept."""
MAX_ROUNDS = 6
"""Rounds of 'measure the plan's estimated cells, allocate again'."""

Cell = tuple[str, str, int | float]  # (layer, kind, level)


def whole_sweep_fits(layers: list[LayerInfo], sweep: Sweep) -> bool:
    """Whether ``suggest`` runs the whole sweep (rule 1)."""
    return len(layers) * len(sweep.cells()) <= FULL_SWEEP_CELLS


def paying_layers(layers: list[LayerInfo]) -> list[LayerInfo]:
    """The largest layers that together hold ``PAYING_SHARE`` of the weights, in the model's order (rule 3)."""
    total = sum(layer.params for layer in layers)
    chosen, held = set(), 0
    for layer in sorted(layers, key=lambda layer: -layer.params):
        if held >= PAYING_SHARE * total:
            break
        chosen.add(layer.name)
        held += layer.params
    return [layer for layer in layers if layer.name in chosen]


class LazyTable:
    """Measured and estimated cells of ``sweep`` on ``handle`` (rules 2-5); ``table()`` for the greedy."""

    def __init__(
        self,
        handle: ModelHandle,
        layers: list[LayerInfo],
        sweep: Sweep,
        *,
        cache: bool | str | Path = True,
        progress: Callable[[Progress], None] | None = None,
        cancel: Cancel = None,
    ) -> None:
        self.handle, self.layers, self.sweep = handle, layers, sweep
        self.cache, self.progress, self.cancel = cache, progress, cancel
        self.rows: dict[Cell, SensitivityRow] = {}
        self.refused: set[Cell] = set()
        self.evaluations, self.cells_done = 0, 0
        self.first: SensitivityResult | None = None
        self.proxies: dict[Cell, float] = {}
        self.noise: dict[tuple[str, str], dict[int | float, float]] = {}  # per swept (layer, kind): level -> noise
        paying = {layer.name for layer in paying_layers(layers)}
        for layer in layers:
            kinds = [kind for kind in sweep.kinds if kind == "bits" or layer.name in paying]
            weight = torch.from_numpy(layer_weight_array(handle, layer)) if kinds else None
            for kind in kinds:
                levels = [
                    level
                    for level in sweep.levels(kind)
                    if skip_reason(handle, layers, layer, kind, level, sweep) is None
                ]
                if weight is None or not levels:
                    continue
                proxies = cell_proxies(weight, layer, kind, levels, sweep)
                self.noise[(layer.name, kind)] = {level: _noise(kind, proxies[level]) for level in levels}
                self.proxies.update({(layer.name, kind, level): proxies[level] for level in levels})
        self.measure(self._anchors())

    def _anchors(self) -> list[Cell]:
        """Each swept (layer, kind) at its middle level by weight noise."""
        anchors = []
        for (name, kind), noise in self.noise.items():
            ordered = sorted(noise, key=lambda level: noise[level])
            anchors.append((name, kind, ordered[len(ordered) // 2]))
        return anchors

    def measure(self, cells: Iterable[Cell]) -> int:
        """Measure the cells not measured yet; return how many were (measured or refused)."""
        todo = [cell for cell in dict.fromkeys(cells) if cell not in self.rows and cell not in self.refused]
        groups: dict[tuple[str, int | float], list[str]] = {}
        for name, kind, level in todo:
            groups.setdefault((kind, level), []).append(name)
        for (kind, level), names in groups.items():
            result = run_sensitivity(
                self.handle,
                _one_cell_sweep(self.sweep, kind, level),
                cache=self.cache,
                progress=self._offset_progress(),
                cancel=self.cancel,
                layers=names,
                inventory=self.layers,
            )
            if result.cancelled:
                raise CompressError(
                    "suggest was stopped during its sensitivity sweep; the parts it finished are cached, "
                    "so running it again continues from there"
                )
            self.first = self.first or result
            self.evaluations += 0 if result.cached else result.evaluations
            self.cells_done += len(names)
            for row in result.rows:
                self.rows[(row.layer, row.kind, level)] = row
            self.refused.update((cell.layer, cell.kind, level) for cell in result.skipped)
        return len(todo)

    def _offset_progress(self) -> Callable[[Progress], None] | None:
        """``progress`` with the cells of earlier calls counted in."""
        progress, offset = self.progress, self.cells_done
        if progress is None:
            return None
        return lambda p: progress(
            Progress(p.layer, p.layer_index, p.layer_count, offset + p.cell, offset + p.cell_count)
        )

    def unbounded(self, cells: Iterable[Cell]) -> list[Cell]:
        """The estimated cells among ``cells`` that no measured level of their layer and kind with at
        least as much weight noise bounds (rule 5)."""
        found = []
        for cell in cells:
            name, kind, level = cell
            if cell in self.rows:
                continue
            noise = self.noise[(name, kind)]
            if not any(noise[other] >= noise[level] for (n, k, other) in self.rows if n == name and k == kind):
                found.append(cell)
        return found

    def table(self) -> SensitivityResult:
        """The measured rows and, for every other allowed level of a measured (layer, kind), its estimate."""
        first = self.first
        assert first is not None, "the anchors were measured"
        rows = []
        for layer in self.layers:
            for kind in self.sweep.kinds:
                noise = self.noise.get((layer.name, kind), {})
                known = {
                    level: (noise[level], self.rows[(layer.name, kind, level)].drop or 0.0)
                    for level in noise
                    if (layer.name, kind, level) in self.rows
                }
                if not known:
                    continue
                for level in noise:
                    cell = (layer.name, kind, level)
                    if cell in self.rows:
                        rows.append(self.rows[cell])
                    elif cell not in self.refused:
                        drop = estimate(list(known.values()), noise[level])
                        rows.append(
                            SensitivityRow(layer.name, kind, level, first.baseline - drop, drop, self.proxies[cell])
                        )
        return SensitivityResult(
            model=first.model,
            metric_name=first.metric_name,
            baseline=first.baseline,
            sweep=self.sweep,
            rows=rows,
            strategy=f"{first.strategy}; suggest's lazy sweep",
            evaluations=self.evaluations,
        )


def estimate(known: list[tuple[float, float]], noise: float) -> float:
    """The drop at relative weight noise ``noise`` from measured (noise, drop) pairs of the same layer
    and kind (rule 4): proportional to the noise beyond them, log-interpolated between two of them."""
    milder = [pair for pair in known if pair[0] <= noise]
    harsher = [pair for pair in known if pair[0] >= noise]
    if milder and harsher:
        (low, low_drop), (high, high_drop) = max(milder), min(harsher)
        if high <= low:  # the noise of a measured level
            return low_drop
        if low <= 0:  # a lossless milder level: interpolate on the noise itself
            share = noise / high
        else:
            share = (math.log(noise) - math.log(low)) / (math.log(high) - math.log(low))
        return low_drop + share * (high_drop - low_drop)
    base, drop = max(milder) if milder else min(harsher)
    if base <= 0:
        return max(drop, 0.0)
    return max(drop, 0.0) * noise / base


def _noise(kind: str, proxy: float) -> float:
    """Relative weight noise power of a cell from its proxy (SQNR dB, or energy kept for rank)."""
    if kind == "rank":
        return max(1.0 - proxy, 0.0)
    return 0.0 if math.isinf(proxy) else 10 ** (-proxy / 10)


def _one_cell_sweep(sweep: Sweep, kind: str, level: int | float) -> Sweep:
    """``sweep`` reduced to one (kind, level), keeping its scheme and granularity."""
    if kind == "bits":
        assert isinstance(level, int), "bit widths are ints"
        return replace(sweep, kinds=(kind,), bits=(level,))
    if kind == "rank":
        return replace(sweep, kinds=(kind,), ranks=(level,))
    return replace(sweep, kinds=(kind,), prune=(level,))
