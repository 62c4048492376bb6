"""Per-layer sensitivity: compress one layer at a time, every other layer unchanged, and measure.

``run_sensitivity(handle, sweep)`` returns a table with one row per (layer, kind, level): the model's
quality metric (accuracy % where labels exist, else agreement or cosine %), its drop versus the
original, and a cheap proxy (weight SQNR in dB for ``bits``, ``prune`` and ``structured``; the
fraction of singular-value energy kept for ``rank``). Settings a layer or a model cannot take are
listed in ``skipped``, with the reason ``apply_plan`` would give.

Speed: for torch ``nn.Module`` models, weight-only changes (bits, unstructured pruning, rank as the
low-rank weight in place) are swapped into one working copy and restored afterwards; where the model
traces into stages (``activation_cache.StagedModel``) the unchanged prefix runs once per layer. ONNX
models run every weight-only cell in one ONNX Runtime session for the whole sweep, the cell's weight
fed as an input (``onnx_cells``). Structured pruning, the few ONNX cells a weight swap cannot stand
for, and TorchScript go through ``apply_plan`` and full passes. ``layers`` restricts a sweep to some
layers. Results are cached on disk (``sweep_cache``): whole tables keyed by a hash of the weights, the
data, the sweep and the layers swept, and every finished cell keyed by the weights, the data and the
cell, so that a stopped sweep continues where it stopped. ``runner`` says where cells run
(``runners``: this process, local worker processes, Ray); the cell itself is ``cells.evaluate_cell``.
The sweep and the table are ``sweep``'s; Hessian traces are ``hessian``'s; what a cell does to a weight
is ``cell_weights``'s.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from compress_core.analysis.cell_weights import perturb_weight
from compress_core.analysis.cells import Cell, Outcome, skip_reason
from compress_core.analysis.hessian import hessian_traces
from compress_core.analysis.runners import Cancel, CellRunner, SweepJob, current_runner
from compress_core.analysis.sweep import FailedCell, Progress, SensitivityResult, SensitivityRow, SkippedCell, Sweep
from compress_core.analysis.sweep_cache import cache_file, cell_store, model_key, read_cached, write_cached
from compress_core.errors import CompressError
from compress_core.models.handle import RUN_BATCH, ModelHandle
from compress_core.models.inventory import LayerInfo, layer_inventory

__all__ = ["Cancel", "perturb_weight", "run_sensitivity", "skip_reason"]


def run_sensitivity(
    handle: ModelHandle,
    sweep: Sweep | None = None,
    *,
    hessian: bool = False,
    progress: Callable[[Progress], None] | None = None,
    cancel: Cancel = None,
    cache: bool | str | Path = True,
    batch_size: int = RUN_BATCH,
    staged: bool = True,
    layers: Sequence[str] | None = None,
    inventory: list[LayerInfo] | None = None,
    runner: CellRunner | None = None,
) -> SensitivityResult:
    """Measure every (layer, kind, level) of ``sweep`` on the handle's data, one layer at a time.

    ``progress`` is called after every cell; ``cancel`` (a callable returning True, or a
    ``threading.Event``) is checked before every evaluation, and a cancelled run returns the rows so
    far with ``cancelled=True``. ``cache``: True for ``sweep_cache.default_cache_dir()``, a folder, or False.
    ``staged=False`` forces full passes (for comparison). ``hessian=True`` adds Hutchinson traces.
    ``layers``: the names of the layers to sweep (default: every layer), in any order; the table
    keeps the model's layer order. ``inventory`` may pass the handle's ``layer_inventory`` when the
    caller already has it. ``runner``: where cells run (default: ``runners.current_runner()``, this
    process unless ``runners.using`` says otherwise). A cell that fails twice is listed in ``failed``.
    """
    sweep = sweep or Sweep()
    started = time.perf_counter()
    key = model_key(handle)  # also names the model in the workers' memory, cache or not
    path = _restricted(cache_file(handle, sweep, hessian, cache, key), layers)
    cached = read_cached(path)
    if cached is not None:
        cached.seconds = time.perf_counter() - started
        return cached
    inventory = inventory if inventory is not None else layer_inventory(handle)
    swept = _swept(inventory, layers)
    position = {layer.name: index for index, layer in enumerate(swept, start=1)}
    store = cell_store(cache, key)
    cells = [(layer.name, kind, level) for layer in swept for kind, level in sweep.cells()]
    outcomes: dict[Cell, Outcome] = {}
    for layer in swept:
        for kind, level in sweep.cells():
            cell = (layer.name, kind, level)
            reason = skip_reason(handle, inventory, layer, kind, level, sweep)
            known = SkippedCell(*cell, reason) if reason is not None else store.get(cell, sweep)
            if known is not None:
                outcomes[cell] = known

    def report(cell: Cell) -> None:
        if progress is not None:
            progress(Progress(cell[0], position[cell[0]], len(swept), len(outcomes), len(cells)))

    def on_outcome(cell: Cell, outcome: Outcome) -> None:
        outcomes[cell] = outcome
        if not isinstance(outcome, FailedCell):
            store.put(cell, sweep, outcome)
        report(cell)

    for cell in [cell for cell in cells if cell in outcomes]:
        report(cell)
    todo = [cell for cell in cells if cell not in outcomes]
    if todo or not store.info:
        job = SweepJob(handle, inventory, swept, sweep, batch_size, staged, f"{key}-{batch_size}")
        try:
            info = (runner or current_runner()).run(job, todo, on_outcome, cancel)
        finally:
            store.flush()
        metric_name, baseline, strategy, cancelled = info.metric_name, info.baseline, info.strategy, info.cancelled
        from_cache = False
        store.remember({"metric_name": metric_name, "baseline": baseline, "strategy": strategy})
        store.flush()
    else:
        metric_name, baseline, cancelled, from_cache = store.info["metric_name"], store.info["baseline"], False, True
        strategy = f"{store.info['strategy']}; every cell from the cache"
    result = SensitivityResult(
        model=handle.name,
        metric_name=metric_name,
        baseline=baseline,
        sweep=sweep,
        strategy=strategy,
        evaluations=sum(cell in outcomes for cell in todo),
        cancelled=cancelled,
        cached=from_cache,
    )
    for cell in cells:
        outcome = outcomes.get(cell)
        if isinstance(outcome, SensitivityRow):
            result.rows.append(outcome)
        elif isinstance(outcome, SkippedCell):
            result.skipped.append(outcome)
        elif isinstance(outcome, FailedCell):
            result.failed.append(outcome)
    if hessian and not result.cancelled:
        result.hessian = hessian_traces(handle, swept)
    result.seconds = time.perf_counter() - started
    if not result.failed:
        write_cached(path, result)
    return result


def _swept(inventory: list[LayerInfo], names: Sequence[str] | None) -> list[LayerInfo]:
    """The layers of ``inventory`` named in ``names`` (all for None), in the model's order."""
    if names is None:
        return inventory
    known = {layer.name for layer in inventory}
    unknown = [name for name in names if name not in known]
    if unknown or not names:
        shown = ", ".join(layer.name for layer in inventory[:5]) + (", ..." if len(inventory) > 5 else "")
        raise CompressError(
            f"no layer '{unknown[0]}' in the model to sweep; its layers are {shown}"
            if unknown
            else "no layers to sweep: name at least one, or leave the layers out to sweep them all"
        )
    wanted = set(names)
    return [layer for layer in inventory if layer.name in wanted]


def _restricted(path: Path | None, names: Sequence[str] | None) -> Path | None:
    """The cache file of a sweep restricted to ``names``: the full sweep's name with a hash of the set."""
    if path is None or names is None:
        return path
    digest = hashlib.sha256("\n".join(sorted(set(names))).encode()).hexdigest()[:12]
    return path.with_name(f"{path.stem}-layers-{digest}{path.suffix}")
