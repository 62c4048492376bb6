"""Per-layer sensitivity: compress one layer at a time, every other layer unchanged, and measure.

``run_sensitivity(handle, sweep)`` returns a table with one row per (layer, kind, level): the model's
quality metric (accuracy % where labels exist, else agreement or cosine %), its drop versus the
original, and a cheap proxy (weight SQNR in dB for ``bits``, ``prune`` and ``structured``; the
fraction of singular-value energy kept for ``rank``). Settings a layer or a model cannot take are
listed in ``skipped``, with the reason ``apply_plan`` would give.

Speed: for torch ``nn.Module`` models, weight-only changes (bits, unstructured pruning, rank as the
low-rank weight in place) are swapped into one working copy and restored afterwards; where the model
traces into stages (``activation_cache.StagedModel``) the unchanged prefix runs once per layer.
Structured pruning, ONNX models and TorchScript go through ``apply_plan`` and full passes. Results
are cached on disk (``sweep_cache``), keyed by a hash of the weights, the data and the sweep. The
sweep and the table are ``sweep``'s; Hessian traces are ``hessian``'s.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn

from compress_core.analysis.activation_cache import StagedModel, StageState
from compress_core.analysis.hessian import hessian_traces
from compress_core.analysis.metrics import quality_metric, quality_ranking
from compress_core.analysis.sweep import Progress, SensitivityResult, SensitivityRow, SkippedCell, Sweep, config_for
from compress_core.analysis.sweep_cache import cache_file, read_cached, write_cached
from compress_core.errors import CompressError
from compress_core.models.handle import RUN_BATCH, ModelHandle, as_numpy
from compress_core.models.inventory import LayerInfo, layer_inventory
from compress_core.ops.lowrank import energy_kept, resolve_rank, singular_values, truncated_svd
from compress_core.ops.prune import channels_to_prune
from compress_core.ops.quantize import quantize_weight
from compress_core.ops.sqnr import sqnr_db
from compress_core.plan import Plan
from compress_core.plan.layer_config import PruneConfig
from compress_core.transform.apply import apply_plan, check_layer_config, full_rank
from compress_core.transform.torch_backend import copy_module
from compress_core.transform.weights import prune_mask

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
) -> SensitivityResult:
    """Measure every (layer, kind, level) of ``sweep`` on the handle's data, one layer at a time.

    ``progress`` is called after every cell; ``cancel`` (a callable returning True, or a
    ``threading.Event``) is checked before every evaluation, and a cancelled run returns the rows so
    far with ``cancelled=True``. ``cache``: True for ``sweep_cache.default_cache_dir()``, a folder, or False.
    ``staged=False`` forces full passes (for comparison). ``hessian=True`` adds Hutchinson traces.
    """
    sweep = sweep or Sweep()
    started = time.perf_counter()
    path = cache_file(handle, sweep, hessian, cache)
    cached = read_cached(path)
    if cached is not None:
        cached.seconds = time.perf_counter() - started
        return cached
    layers = layer_inventory(handle)
    runner = _Runner(handle, layers, sweep, batch_size, staged)
    result = runner.sweep_all(progress, cancel)
    if hessian and not result.cancelled:
        result.hessian = hessian_traces(handle, layers)
    result.seconds = time.perf_counter() - started
    write_cached(path, result)
    return result


class _Runner:
    """Evaluates cells: weight swaps in a working copy where possible, ``apply_plan`` elsewhere."""

    def __init__(
        self, handle: ModelHandle, layers: list[LayerInfo], sweep: Sweep, batch_size: int, staged: bool
    ) -> None:
        self.handle, self.layers, self.sweep = handle, layers, sweep
        swappable = handle.backend == "torch" and not isinstance(handle.model, torch.jit.ScriptModule)
        self.work: nn.Module | None = copy_module(handle.model) if swappable else None
        inputs = handle.data.inputs
        self.batches = handle.input_batches(inputs, batch_size)
        # the staged cache follows one input to the first output
        stageable = staged and len(handle.input_specs) == 1 and handle.quality.output == 0
        self.tensors = [batch.tensors()[0] for batch in self.batches] if stageable else []
        self.staged = StagedModel.build(self.work, self.tensors[0]) if self.work is not None and stageable else None
        self.strategy = (
            "staged activation cache"
            if self.staged
            else ("weight swap, full passes" if self.work else "apply_plan, full passes")
        )
        self.reference = self._run_work(None) if self.work is not None else handle.run(inputs, batch_size)

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
        total, done = len(cells) * len(self.layers), 0
        staged = self.staged
        order = sorted(self.layers, key=lambda layer: self._cut(staged, layer)) if staged else self.layers
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
        position = {layer.name: i for i, layer in enumerate(self.layers)}
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
        if kind == "structured" and layer is self.layers[-1]:
            return "its output channels are the model's outputs"
        try:
            check_layer_config(self.handle, layer, config_for(kind, level, self.sweep))
        except CompressError as exc:
            return str(exc)
        return None

    def _evaluate(
        self, layer: LayerInfo, kind: str, level: int | float, state: StageState | None
    ) -> tuple[np.ndarray, float] | str:
        """(outputs, proxy), or the reason when ``apply_plan`` skipped or refused the change."""
        weight = self._parameter(layer).detach() if self.work is not None else _onnx_weight(self.handle, layer)
        perturbed, proxy = perturb_weight(weight, layer, kind, level, self.sweep)
        if self.work is None or kind == "structured":
            try:
                compressed = apply_plan(
                    self.handle, Plan(layers={layer.name: config_for(kind, level, self.sweep)}), self.layers
                )
            except CompressError as exc:  # e.g. structured pruning of a grouped ConvTranspose
                return str(exc)
            record = compressed.compression
            assert record is not None, "apply_plan records what it did"
            if kind == "structured" and record.layer_sqnr.get(layer.name) is not None:
                return (
                    " ".join(note for note in record.notes if note.startswith(layer.name))
                    or "structured pruning skipped"
                )
            return compressed.run(self.handle.data.inputs, len(self.batches[0])), proxy
        parameter = self._parameter(layer)
        original = parameter.detach().clone()
        with torch.no_grad():
            parameter.copy_(perturbed)
        try:
            return self._run_work(state), proxy
        finally:
            with torch.no_grad():
                parameter.copy_(original)

    def _run_work(self, state: StageState | None) -> np.ndarray:
        """The working copy's outputs: from ``state`` (or the input) when staged, else full passes
        (without the outputs of a fixed-batch program's padding)."""
        with torch.inference_mode():
            if self.staged is not None:
                outputs = self.staged.run_from(self.staged.start(self.tensors) if state is None else state)
            else:
                work = self._working_copy()
                outputs = [self.handle.call(work, batch) for batch in self.batches]
        return as_numpy(outputs)[: len(self.handle.data)]


def perturb_weight(
    weight: torch.Tensor, layer: LayerInfo, kind: str, level: int | float, sweep: Sweep
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


def _onnx_weight(handle: ModelHandle, layer: LayerInfo) -> torch.Tensor:
    from compress_core.models.onnx_graph import constant_tensors

    return torch.from_numpy(np.array(constant_tensors(handle.model)[layer.weight_name][0], dtype=np.float32))


def _is_cancelled(cancel: Cancel) -> bool:
    if cancel is None:
        return False
    return cancel.is_set() if isinstance(cancel, threading.Event) else bool(cancel())
