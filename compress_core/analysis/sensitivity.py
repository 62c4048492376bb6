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
layers. Results are cached on disk (``sweep_cache``), keyed by a hash of the weights, the data, the
sweep and the layers swept. The sweep and the table are ``sweep``'s; Hessian traces are ``hessian``'s;
what a cell does to a weight is ``cell_weights``'s.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from compress_core.analysis.activation_cache import StagedModel, StageState
from compress_core.analysis.cell_weights import magnitude_order, perturb_weight
from compress_core.analysis.hessian import hessian_traces
from compress_core.analysis.metrics import quality_metric, quality_ranking
from compress_core.analysis.onnx_cells import OnnxCells, ranked_output
from compress_core.analysis.sweep import Progress, SensitivityResult, SensitivityRow, SkippedCell, Sweep, config_for
from compress_core.analysis.sweep_cache import cache_file, read_cached, write_cached
from compress_core.errors import CompressError
from compress_core.models.handle import RUN_BATCH, ModelHandle, tensor_to_numpy
from compress_core.models.inventory import LayerInfo, layer_inventory, layer_weight_array
from compress_core.plan import Plan
from compress_core.transform.apply import apply_plan, check_layer_config
from compress_core.transform.torch_backend import copy_module

Cancel = Callable[[], bool] | threading.Event | None


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
) -> SensitivityResult:
    """Measure every (layer, kind, level) of ``sweep`` on the handle's data, one layer at a time.

    ``progress`` is called after every cell; ``cancel`` (a callable returning True, or a
    ``threading.Event``) is checked before every evaluation, and a cancelled run returns the rows so
    far with ``cancelled=True``. ``cache``: True for ``sweep_cache.default_cache_dir()``, a folder, or False.
    ``staged=False`` forces full passes (for comparison). ``hessian=True`` adds Hutchinson traces.
    ``layers``: the names of the layers to sweep (default: every layer), in any order; the table
    keeps the model's layer order. ``inventory`` may pass the handle's ``layer_inventory`` when the
    caller already has it.
    """
    sweep = sweep or Sweep()
    started = time.perf_counter()
    path = _restricted(cache_file(handle, sweep, hessian, cache), layers)
    cached = read_cached(path)
    if cached is not None:
        cached.seconds = time.perf_counter() - started
        return cached
    inventory = inventory if inventory is not None else layer_inventory(handle)
    swept = _swept(inventory, layers)
    runner = _Runner(handle, inventory, swept, sweep, batch_size, staged)
    result = runner.sweep_all(progress, cancel)
    if hessian and not result.cancelled:
        result.hessian = hessian_traces(handle, swept)
    result.seconds = time.perf_counter() - started
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


class _Runner:
    """Evaluates cells: weight swaps in a torch working copy, or weights fed to one ONNX Runtime
    session, where possible; ``apply_plan`` elsewhere. ``layers`` is the model's inventory, ``swept``
    the layers the sweep measures."""

    def __init__(
        self,
        handle: ModelHandle,
        layers: list[LayerInfo],
        swept: list[LayerInfo],
        sweep: Sweep,
        batch_size: int,
        staged: bool,
    ) -> None:
        self.handle, self.layers, self.swept, self.sweep = handle, layers, swept, sweep
        swappable = handle.backend == "torch" and not isinstance(handle.model, torch.jit.ScriptModule)
        self.work: nn.Module | None = copy_module(handle.model) if swappable else None
        inputs = handle.data.inputs
        self.batches = handle.input_batches(inputs, batch_size)
        # the staged cache follows one input to the first output
        stageable = staged and len(handle.input_specs) == 1 and handle.quality.output == 0
        self.tensors = [batch.tensors()[0] for batch in self.batches] if stageable else []
        self.staged = StagedModel.build(self.work, self.tensors[0]) if self.work is not None and stageable else None
        self.cells = OnnxCells(handle, swept, self.batches) if handle.backend == "onnx" else None
        self.sorted: tuple[str, torch.Tensor] | None = None  # (layer, magnitude order) of the last pruned layer
        if self.staged:
            self.strategy = "staged activation cache"
        elif self.work is not None:
            self.strategy = "weight swap, full passes"
        elif self.cells is not None:
            self.strategy = "one ONNX Runtime session, weights fed per cell"
        else:
            self.strategy = "apply_plan, full passes"
        if self.work is not None:
            self.reference = self._run_work(None)
        elif self.cells is not None:
            self.reference = self.cells.run()
        else:
            self.reference = handle.run(inputs, batch_size)

    def sweep_all(self, progress: Callable[[Progress], None] | None, cancel: Cancel) -> SensitivityResult:
        metric_name, baseline = quality_ranking(self.handle, self.reference, self.reference)
        result = SensitivityResult(
            model=self.handle.name,
            metric_name=metric_name,
            baseline=baseline,
            sweep=self.sweep,
            strategy=self.strategy,
        )
        cells = self.sweep.cells()
        total, done = len(cells) * len(self.swept), 0
        staged = self.staged
        order = sorted(self.swept, key=lambda layer: self._cut(staged, layer)) if staged else self.swept
        state: StageState | None = None  # the values alive before the current layer's stage, when staged
        for layer_index, layer in enumerate(order, start=1):
            if staged:
                state = staged.advance(staged.start(self.tensors) if state is None else state, self._cut(staged, layer))
            for kind, level in cells:
                reason = self._skip_reason(layer, kind, level)
                if reason is None:
                    if _is_cancelled(cancel):
                        result.cancelled = True
                        break
                    evaluated = self._evaluate(layer, kind, level, state)
                    result.evaluations += 1
                    if isinstance(evaluated, str):
                        reason = evaluated
                    else:
                        outputs, proxy = evaluated
                        metric = quality_metric(self.handle, self.reference, outputs)
                        result.rows.append(SensitivityRow(layer.name, kind, level, metric, baseline - metric, proxy))
                if reason is not None:
                    result.skipped.append(SkippedCell(layer.name, kind, level, reason))
                done += 1
                if progress is not None:
                    progress(Progress(layer.name, layer_index, len(order), done, total))
            if result.cancelled:
                break
        position = {layer.name: i for i, layer in enumerate(self.swept)}
        result.rows.sort(key=lambda row: position[row.layer])
        result.skipped.sort(key=lambda cell: position[cell.layer])
        return result

    def _cut(self, staged: StagedModel, layer: LayerInfo) -> int:
        return staged.cut_for(self._parameter(layer))

    def _working_copy(self) -> nn.Module:
        """The torch copy whose weights cells swap; only the callers that have one ask for it."""
        if self.work is None:
            raise AssertionError(f"model '{self.handle.name}' has no torch working copy to swap weights in")
        return self.work

    def _parameter(self, layer: LayerInfo) -> nn.Parameter:
        return dict(self._working_copy().named_parameters())[layer.weight_name]

    def _skip_reason(self, layer: LayerInfo, kind: str, level: int | float) -> str | None:
        return skip_reason(self.handle, self.layers, layer, kind, level, self.sweep)

    def _evaluate(
        self, layer: LayerInfo, kind: str, level: int | float, state: StageState | None
    ) -> tuple[np.ndarray, float] | str:
        """(outputs, proxy), or the reason when ``apply_plan`` skipped or refused the change."""
        if self.cells is not None and self.cells.feeds(layer, kind):
            weight = self.cells.weight(layer)
            perturbed, proxy = perturb_weight(weight, layer, kind, level, self.sweep, self._order(layer, kind, weight))
            return self.cells.run({layer.weight_name: perturbed.numpy()}), proxy
        if self.work is None or kind == "structured":
            try:
                compressed = apply_plan(
                    self.handle, Plan(layers={layer.name: config_for(kind, level, self.sweep)}), self.layers
                )
            except CompressError as exc:  # e.g. structured pruning of a grouped ConvTranspose
                return str(exc)
            weight = self._parameter(layer).detach() if self.work is not None else _stored_weight(self.handle, layer)
            proxy = perturb_weight(weight, layer, kind, level, self.sweep)[1]
            record = compressed.compression
            assert record is not None, "apply_plan records what it did"
            if kind == "structured" and record.layer_sqnr.get(layer.name) is not None:
                return (
                    " ".join(note for note in record.notes if note.startswith(layer.name))
                    or "structured pruning skipped"
                )
            return compressed.run(self.handle.data.inputs, len(self.batches[0])), proxy
        parameter = self._parameter(layer)
        weight = parameter.detach()
        perturbed, proxy = perturb_weight(weight, layer, kind, level, self.sweep, self._order(layer, kind, weight))
        original = parameter.detach().clone()
        with torch.no_grad():
            parameter.copy_(perturbed)
        try:
            return self._run_work(state), proxy
        finally:
            with torch.no_grad():
                parameter.copy_(original)

    def _order(self, layer: LayerInfo, kind: str, weight: torch.Tensor) -> torch.Tensor | None:
        """The layer's ``magnitude_order`` for its ``prune`` cells, sorted once per layer."""
        if kind != "prune":
            return None
        if self.sorted is None or self.sorted[0] != layer.name:
            self.sorted = (layer.name, magnitude_order(weight))
        return self.sorted[1]

    def _run_work(self, state: StageState | None) -> np.ndarray:
        """The working copy's outputs: from ``state`` (or the input) when staged, else full passes
        (without the outputs of a fixed-batch program's padding)."""
        with torch.inference_mode():
            if self.staged is not None:
                outputs = self.staged.run_from(self.staged.start(self.tensors) if state is None else state)
            else:
                work = self._working_copy()
                outputs = [self.handle.call(work, batch) for batch in self.batches]
        return ranked_output(self.handle, [tensor_to_numpy(output) for output in outputs])


def skip_reason(
    handle: ModelHandle, layers: list[LayerInfo], layer: LayerInfo, kind: str, level: int | float, sweep: Sweep
) -> str | None:
    """Why the model (``layers``: its inventory) cannot take the cell (kind, level) on ``layer``, or None."""
    if kind == "structured" and layer is layers[-1]:
        return "its output channels are the model's outputs"
    try:
        check_layer_config(handle, layer, config_for(kind, level, sweep))
    except CompressError as exc:
        return str(exc)
    return None


def _stored_weight(handle: ModelHandle, layer: LayerInfo) -> torch.Tensor:
    return torch.from_numpy(layer_weight_array(handle, layer))


def _is_cancelled(cancel: Cancel) -> bool:
    if cancel is None:
        return False
    return cancel.is_set() if isinstance(cancel, threading.Event) else bool(cancel())
