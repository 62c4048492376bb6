"""One sensitivity cell: change one layer at one (kind, level), run the model on the evaluation data, measure.

``evaluate_cell(context, cell, sweep)`` is the one cell function every runner calls (in this process, in a
local process pool, on Ray): given the model, its evaluation data (both in the ``CellContext``) and the
cell, it returns the cell's ``SensitivityRow``, a ``SkippedCell`` when ``apply_plan`` refuses the change,
or a ``FailedCell`` when the evaluation raised twice (it is tried once more first). A context is built once
per model and runner (a worker keeps it across cells and sweeps); it holds the reference outputs, the
torch working copy whose weights cells swap, or the one ONNX Runtime session whose weights cells feed
(``onnx_cells``). ``state`` (the staged activation cache's values before the layer) is the in-process
runner's: a worker runs full passes.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from compress_core.analysis.activation_cache import StagedModel, StageState
from compress_core.analysis.cell_weights import perturb_weight
from compress_core.analysis.metrics import quality_metric, quality_ranking
from compress_core.analysis.onnx_cells import OnnxCells, ranked_output
from compress_core.analysis.sweep import FailedCell, SensitivityRow, SkippedCell, Sweep, config_for
from compress_core.errors import CompressError, first_line
from compress_core.models.handle import RUN_BATCH, ModelHandle, tensor_to_numpy
from compress_core.models.inventory import LayerInfo, layer_weight_array
from compress_core.plan import Plan
from compress_core.transform.apply import apply_plan, check_layer_config
from compress_core.transform.torch_backend import copy_module

Cell = tuple[str, str, int | float]
"""(layer name, kind, level)."""
Outcome = SensitivityRow | SkippedCell | FailedCell
ATTEMPTS = 2
"""A cell that raises is tried this many times before it is reported as failed."""


def evaluate_cell(context: CellContext, cell: Cell, sweep: Sweep, state: StageState | None = None) -> Outcome:
    """The outcome of one cell (see the module's docstring); never raises for an error of the cell's own."""
    name, kind, level = cell
    layer = context.layer(name)
    error = ""
    for _ in range(ATTEMPTS):
        try:
            evaluated = context.evaluate(layer, kind, level, sweep, state)
            if isinstance(evaluated, str):
                return SkippedCell(name, kind, level, evaluated)
            outputs, proxy = evaluated
            metric = quality_metric(context.handle, context.reference, outputs)
        except Exception as exc:  # noqa: BLE001 - any failure of one cell is that cell's, the sweep goes on
            error = f"{type(exc).__name__}: {first_line(exc)}"
            continue
        return SensitivityRow(name, kind, level, metric, context.baseline - metric, proxy)
    return FailedCell(name, kind, level, error)


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


class CellContext:
    """What every cell of one model needs: weight swaps in a torch working copy, or weights fed to one
    ONNX Runtime session, where possible; ``apply_plan`` elsewhere. ``layers`` is the model's inventory,
    ``swept`` the layers whose cells may run (their ONNX weights become feedable). ``staged`` builds the
    activation cache where the model traces into stages; ``threads`` limits ONNX Runtime's intra-op
    threads (None: its default)."""

    def __init__(
        self,
        handle: ModelHandle,
        layers: list[LayerInfo],
        swept: list[LayerInfo],
        *,
        batch_size: int = RUN_BATCH,
        staged: bool = True,
        threads: int | None = None,
    ) -> None:
        self.handle, self.layers = handle, layers
        self.by_name = {layer.name: layer for layer in layers}
        swappable = handle.backend == "torch" and not isinstance(handle.model, torch.jit.ScriptModule)
        self.work: nn.Module | None = copy_module(handle.model) if swappable else None
        self.batches = handle.input_batches(handle.data.inputs, batch_size)
        # the staged cache follows one input to the first output
        stageable = staged and len(handle.input_specs) == 1 and handle.quality.output == 0
        self.tensors = [batch.tensors()[0] for batch in self.batches] if stageable else []
        self.staged = StagedModel.build(self.work, self.tensors[0]) if self.work is not None and stageable else None
        self.cells = OnnxCells(handle, swept, batch_size, threads) if handle.backend == "onnx" else None
        if self.staged:
            self.strategy = "staged activation cache"
        elif self.work is not None:
            self.strategy = "weight swap, full passes"
        elif self.cells is not None:
            note = self.cells.batch_note
            self.strategy = "one ONNX Runtime session, weights fed per cell" + (f"; {note}" if note else "")
        else:
            self.strategy = "apply_plan, full passes"
        if self.work is not None:
            self.reference = self._run_work(None)
        elif self.cells is not None:
            self.reference = self.cells.run()
        else:
            self.reference = handle.run(handle.data.inputs, batch_size)
        self.metric_name, self.baseline = quality_ranking(handle, self.reference, self.reference)

    def layer(self, name: str) -> LayerInfo:
        """The inventory's layer of that name."""
        return self.by_name[name]

    def stage_order(self, layers: list[LayerInfo]) -> list[LayerInfo]:
        """``layers`` in the order the staged cache reaches them (unchanged without the cache)."""
        staged = self.staged
        return sorted(layers, key=lambda layer: staged.cut_for(self._parameter(layer))) if staged else layers

    def advance(self, state: StageState | None, layer: LayerInfo) -> StageState | None:
        """The staged cache's values before ``layer``'s stage, from ``state`` (None: from the input);
        None without the cache."""
        staged = self.staged
        if staged is None:
            return None
        return staged.advance(
            staged.start(self.tensors) if state is None else state, staged.cut_for(self._parameter(layer))
        )

    def _working_copy(self) -> nn.Module:
        """The torch copy whose weights cells swap; only the callers that have one ask for it."""
        if self.work is None:
            raise AssertionError(f"model '{self.handle.name}' has no torch working copy to swap weights in")
        return self.work

    def _parameter(self, layer: LayerInfo) -> nn.Parameter:
        return dict(self._working_copy().named_parameters())[layer.weight_name]

    def evaluate(
        self, layer: LayerInfo, kind: str, level: int | float, sweep: Sweep, state: StageState | None = None
    ) -> tuple[np.ndarray, float] | str:
        """(outputs, proxy), or the reason when ``apply_plan`` skipped or refused the change."""
        if self.cells is not None and self.cells.feeds(layer, kind):
            weight = self.cells.weight(layer)
            perturbed, proxy = perturb_weight(weight, layer, kind, level, sweep)
            return self.cells.run({layer.weight_name: perturbed.numpy()}), proxy
        if self.work is None or kind == "structured":
            try:
                compressed = apply_plan(
                    self.handle, Plan(layers={layer.name: config_for(kind, level, sweep)}), self.layers
                )
            except CompressError as exc:  # e.g. structured pruning of a grouped ConvTranspose
                return str(exc)
            weight = self._parameter(layer).detach() if self.work is not None else _stored_weight(self.handle, layer)
            proxy = perturb_weight(weight, layer, kind, level, sweep)[1]
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
        perturbed, proxy = perturb_weight(weight, layer, kind, level, sweep)
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
        return ranked_output(self.handle, [tensor_to_numpy(output) for output in outputs])


def _stored_weight(handle: ModelHandle, layer: LayerInfo) -> torch.Tensor:
    return torch.from_numpy(layer_weight_array(handle, layer))
