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
are cached on disk, keyed by a hash of the weights, the data and the sweep.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from compress_core.analysis.activation_cache import StagedModel, as_numpy, first_tensor
from compress_core.transform.apply import apply_plan, check_layer_config, full_rank
from compress_core.atomic import atomic_write_text
from compress_core.errors import CompressError, first_line
from compress_core.models.handle import RUN_BATCH, ModelHandle
from compress_core.models.inventory import LayerInfo, layer_inventory
from compress_core.analysis.metrics import output_fidelity, quality_metric
from compress_core.plan import ALLOWED_BITS, GRANULARITIES, SCHEMES, LayerConfig, Plan, PruneConfig
from compress_core.ops.primitives import (
    channels_to_prune,
    energy_kept,
    quantize_weight,
    resolve_rank,
    singular_values,
    sqnr_db,
    truncated_svd,
)
from compress_core.transform.torch_backend import copy_module
from compress_core.ops.weights import prune_mask

KINDS = ("bits", "prune", "structured", "rank")
CACHE_VERSION = 1
CSV_COLUMNS = ("layer", "kind", "level", "metric", "drop", "proxy")
HESSIAN_KIND = "hessian"
Cancel = Callable[[], bool] | threading.Event | None


@dataclass(frozen=True)
class Sweep:
    """The levels to try. ``prune`` ratios serve both unstructured (``prune``) and ``structured``
    pruning; ``ranks`` are fractions of full rank (floats) or ranks (ints); ``kinds`` selects which
    of ``bits``, ``prune``, ``structured`` and ``rank`` run. Bits use ``scheme`` and ``granularity``."""

    bits: tuple[int, ...] = (8, 6, 4, 3, 2)
    prune: tuple[float, ...] = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
    ranks: tuple[int | float, ...] = (0.75, 0.5, 0.25, 0.1)
    kinds: tuple[str, ...] = KINDS
    scheme: str = "symmetric"
    granularity: str = "channel"

    def __post_init__(self) -> None:
        for name in ("bits", "prune", "ranks", "kinds"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        unknown = [kind for kind in self.kinds if kind not in KINDS]
        if unknown or not self.kinds:
            raise CompressError(f"unknown sensitivity kind '{(unknown or [''])[0]}'; use one or more of {', '.join(KINDS)}")
        if self.scheme not in SCHEMES or self.granularity not in GRANULARITIES:
            raise CompressError(f"scheme '{self.scheme}' / granularity '{self.granularity}' is not allowed; use {', '.join(SCHEMES)} / {', '.join(GRANULARITIES)}")
        for kind in self.kinds:
            if not self.levels(kind):
                raise CompressError(f"sensitivity kind '{kind}' has no levels to try")
            for level in self.levels(kind):
                config_for(kind, level, self)

    def levels(self, kind: str) -> tuple[int | float, ...]:
        """The levels of one kind."""
        return {"bits": self.bits, "prune": self.prune, "structured": self.prune, "rank": self.ranks}[kind]

    def cells(self) -> list[tuple[str, int | float]]:
        """Every (kind, level) of the sweep, kinds in ``KINDS`` order."""
        return [(kind, level) for kind in KINDS if kind in self.kinds for level in self.levels(kind)]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def config_for(kind: str, level: int | float, sweep: Sweep) -> LayerConfig:
    """The one-layer config of a cell; a bad level is a one-line ``CompressError``."""
    try:
        if kind == "bits":
            return LayerConfig(bits=level, scheme=sweep.scheme, granularity=sweep.granularity)
        if kind == "rank":
            return LayerConfig(rank=level)
        if isinstance(level, bool) or not isinstance(level, (int, float)) or level <= 0:
            raise CompressError(f"prune ratio {level!r} is not allowed; use a number in (0, 1)")
        return LayerConfig(prune=PruneConfig(ratio=level, kind="structured" if kind == "structured" else "unstructured"))
    except CompressError as exc:
        raise CompressError(f"sensitivity level for '{kind}': {exc}") from exc


@dataclass(frozen=True)
class SensitivityRow:
    """One measured cell: ``metric`` in %, ``drop`` = original metric - metric (points), ``proxy``
    (dB of weight SQNR, or energy kept for rank; Hessian trace for ``kind == "hessian"``)."""

    layer: str
    kind: str
    level: int | float | None
    metric: float | None
    drop: float | None
    proxy: float | None


@dataclass(frozen=True)
class SkippedCell:
    """A cell the layer or the model cannot take, and why."""

    layer: str
    kind: str
    level: int | float
    reason: str


@dataclass(frozen=True)
class Progress:
    """Where a sweep is: layer ``layer_index`` (1-based) of ``layer_count``, cell ``cell`` of ``cell_count``."""

    layer: str
    layer_index: int
    layer_count: int
    cell: int
    cell_count: int


@dataclass
class SensitivityResult:
    """The sensitivity table of one model (rows in the model's layer order) and how it was made."""

    model: str
    metric_name: str
    baseline: float
    sweep: Sweep
    rows: list[SensitivityRow] = field(default_factory=list)
    skipped: list[SkippedCell] = field(default_factory=list)
    hessian: dict[str, float] | None = None
    seconds: float = 0.0
    strategy: str = ""
    evaluations: int = 0
    cancelled: bool = False
    cached: bool = False

    def ranking(self, kind: str = "bits", level: int | float | None = None) -> list[str]:
        """Layer names, most sensitive first (see ``ranked_rows``; ``hessian``: largest trace first)."""
        if kind == HESSIAN_KIND:
            if self.hessian is None:
                raise CompressError("this sensitivity table has no Hessian traces; run it with hessian=True")
            return sorted(self.hessian, key=lambda name: -self.hessian[name])
        return [row.layer for row in self.ranked_rows(kind, level)]

    def ranked_rows(self, kind: str = "bits", level: int | float | None = None) -> list[SensitivityRow]:
        """The rows of ``kind`` at ``level`` (default: its harshest level), largest drop first,
        ties broken by the lower proxy."""
        rows = [row for row in self.rows if row.kind == kind]
        if not rows:
            found = ", ".join(sorted({row.kind for row in self.rows})) or "none"
            raise CompressError(f"this sensitivity table has no '{kind}' rows; it has {found}")
        harshest = max if kind in ("prune", "structured") else min
        level = harshest(row.level for row in rows) if level is None else level
        return sorted((row for row in rows if row.level == level), key=lambda row: (-row.drop, row.proxy))

    def table(self) -> list[SensitivityRow]:
        """The measured rows, then one ``hessian`` row per layer when traces were computed."""
        traces = [SensitivityRow(name, HESSIAN_KIND, None, None, None, trace) for name, trace in (self.hessian or {}).items()]
        return [*self.rows, *traces]

    def to_csv(self) -> str:
        """The table as CSV text with the columns ``layer,kind,level,metric,drop,proxy``."""
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(CSV_COLUMNS)
        for row in self.table():
            writer.writerow(["" if value is None else value for value in (getattr(row, c) for c in CSV_COLUMNS)])
        return buffer.getvalue()

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready data (``from_dict`` reads it back)."""
        data = asdict(self)
        data["sweep"] = self.sweep.to_dict()
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "SensitivityResult":
        return cls(
            **{
                **data,
                "sweep": Sweep(**data["sweep"]),
                "rows": [SensitivityRow(**row) for row in data["rows"]],
                "skipped": [SkippedCell(**cell) for cell in data["skipped"]],
            }
        )


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
    far with ``cancelled=True``. ``cache``: True for ``default_cache_dir()``, a folder, or False.
    ``staged=False`` forces full passes (for comparison). ``hessian=True`` adds Hutchinson traces.
    """
    sweep = sweep or Sweep()
    started = time.perf_counter()
    cache_file = None
    if cache is not False:
        folder = default_cache_dir() if cache is True else Path(cache)
        cache_file = folder / f"{cache_key(handle, sweep, hessian)}.json"
        if cache_file.is_file():
            result = SensitivityResult.from_dict(json.loads(cache_file.read_text(encoding="utf-8")))
            result.cached, result.seconds = True, time.perf_counter() - started
            return result
    layers = layer_inventory(handle)
    runner = _Runner(handle, layers, sweep, batch_size, staged)
    result = runner.sweep_all(progress, cancel)
    if hessian and not result.cancelled:
        result.hessian = hessian_traces(handle, layers)
    result.seconds = time.perf_counter() - started
    if cache_file is not None and not result.cancelled:
        atomic_write_text(cache_file, json.dumps(result.to_dict()))
    return result


class _Runner:
    """Evaluates cells: weight swaps in a working copy where possible, ``apply_plan`` elsewhere."""

    def __init__(self, handle: ModelHandle, layers: list[LayerInfo], sweep: Sweep, batch_size: int, staged: bool) -> None:
        self.handle, self.layers, self.sweep = handle, layers, sweep
        swappable = handle.backend == "torch" and not isinstance(handle.model, torch.jit.ScriptModule)
        self.work: nn.Module | None = copy_module(handle.model) if swappable else None
        inputs = handle.data.inputs
        self.batches = [torch.from_numpy(np.array(batch)) for batch in handle.input_batches(inputs, batch_size)]
        self.staged = StagedModel.build(self.work, self.batches[0]) if self.work is not None and staged else None
        self.strategy = "staged activation cache" if self.staged else ("weight swap, full passes" if self.work else "apply_plan, full passes")
        self.reference = self._run_work(None) if self.work is not None else handle.run(inputs, batch_size)

    def sweep_all(self, progress: Callable[[Progress], None] | None, cancel: Cancel) -> SensitivityResult:
        fidelity = output_fidelity(self.reference, self.reference, self.handle.data.labels, self.handle.task)
        baseline = quality_metric(self.handle, self.reference, self.reference)
        result = SensitivityResult(
            model=self.handle.name,
            metric_name=next(key for key in ("accuracy", "agreement", "cosine") if fidelity[key] is not None),
            baseline=baseline,
            sweep=self.sweep,
            strategy=self.strategy,
        )
        cells = self.sweep.cells()
        total, done = len(cells) * len(self.layers), 0
        order = sorted(self.layers, key=self._cut) if self.staged else self.layers
        state = self.staged.start(self.batches) if self.staged else None
        for layer_index, layer in enumerate(order, start=1):
            if self.staged:
                state = self.staged.advance(state, self._cut(layer))
            for kind, level in cells:
                reason = self._skip_reason(layer, kind, level)
                if reason is None:
                    if _is_cancelled(cancel):
                        result.cancelled = True
                        break
                    outputs, proxy, reason = self._evaluate(layer, kind, level, state)
                    result.evaluations += 1
                if reason is not None:
                    result.skipped.append(SkippedCell(layer.name, kind, level, reason))
                else:
                    metric = quality_metric(self.handle, self.reference, outputs)
                    result.rows.append(SensitivityRow(layer.name, kind, level, metric, baseline - metric, proxy))
                done += 1
                if progress is not None:
                    progress(Progress(layer.name, layer_index, len(order), done, total))
            if result.cancelled:
                break
        position = {layer.name: i for i, layer in enumerate(self.layers)}
        result.rows.sort(key=lambda row: position[row.layer])
        result.skipped.sort(key=lambda cell: position[cell.layer])
        return result

    def _cut(self, layer: LayerInfo) -> int:
        return self.staged.cut_for(self._parameter(layer))

    def _parameter(self, layer: LayerInfo) -> nn.Parameter:
        return dict(self.work.named_parameters())[layer.weight_name]

    def _skip_reason(self, layer: LayerInfo, kind: str, level: int | float) -> str | None:
        if kind == "structured" and layer is self.layers[-1]:
            return "its output channels are the model's outputs"
        try:
            check_layer_config(self.handle, layer, config_for(kind, level, self.sweep))
        except CompressError as exc:
            return str(exc)
        return None

    def _evaluate(self, layer: LayerInfo, kind: str, level: int | float, state: Any) -> tuple[np.ndarray | None, float | None, str | None]:
        """(outputs, proxy, None), or (None, None, reason) when ``apply_plan`` skipped or refused the change."""
        weight = self._parameter(layer).detach() if self.work is not None else _onnx_weight(self.handle, layer)
        perturbed, proxy = perturb_weight(weight, layer, kind, level, self.sweep)
        if self.work is None or kind == "structured":
            try:
                compressed = apply_plan(self.handle, Plan(layers={layer.name: config_for(kind, level, self.sweep)}), self.layers)
            except CompressError as exc:  # e.g. structured pruning of a grouped ConvTranspose
                return None, None, str(exc)
            record = compressed.compression
            if kind == "structured" and record.layer_sqnr.get(layer.name) is not None:
                return None, None, " ".join(note for note in record.notes if note.startswith(layer.name)) or "structured pruning skipped"
            return compressed.run(self.handle.data.inputs, len(self.batches[0])), proxy, None
        parameter = self._parameter(layer)
        original = parameter.detach().clone()
        with torch.no_grad():
            parameter.copy_(perturbed)
        try:
            return self._run_work(state), proxy, None
        finally:
            with torch.no_grad():
                parameter.copy_(original)

    def _run_work(self, state: Any) -> np.ndarray:
        """The working copy's outputs: from ``state`` (or the input) when staged, else full passes
        (without the outputs of a fixed-batch program's padding)."""
        with torch.inference_mode():
            if self.staged is not None:
                outputs = self.staged.run_from(self.staged.start(self.batches) if state is None else state)
            else:
                outputs = [first_tensor(self.work(batch)) for batch in self.batches]
        return as_numpy(outputs)[: len(self.handle.data)]


def perturb_weight(weight: torch.Tensor, layer: LayerInfo, kind: str, level: int | float, sweep: Sweep) -> tuple[torch.Tensor, float]:
    """The layer's weight after one cell's change (for ``structured``: its channels zeroed) and the
    cell's proxy (weight SQNR in dB, or energy kept for ``rank``)."""
    axis = layer.out_axis
    with torch.no_grad():
        if kind == "bits":
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


def hessian_traces(handle: ModelHandle, layers: list[LayerInfo] | None = None, samples: int = 8, max_inputs: int = 256, seed: int = 0) -> dict[str, float]:
    """Hutchinson estimate of the trace of the loss Hessian for each layer's weight.

    The loss is cross-entropy to the labels for a classification model with labels, else the mean
    squared error to the original outputs; ``samples`` Rademacher probes on the first
    ``max_inputs`` inputs. A larger trace means a more sensitive layer.
    """
    if handle.backend != "torch" or isinstance(handle.model, torch.jit.ScriptModule):
        raise CompressError(f"Hessian traces need a torch nn.Module; '{handle.name}' is a {handle.kind} model")
    layers = layers if layers is not None else layer_inventory(handle)
    work = copy_module(handle.model)
    named = dict(work.named_parameters())
    for parameter in named.values():
        parameter.requires_grad_(False)
    weights = [named[layer.weight_name].requires_grad_(True) for layer in layers]
    inputs = np.array(handle.data.inputs[:max_inputs])
    labels = handle.data.labels
    generator = torch.Generator().manual_seed(seed)
    with torch.enable_grad():
        batches = handle.input_batches(inputs, len(inputs))  # one batch, or a fixed-batch program's batches
        output = torch.cat([first_tensor(work(torch.from_numpy(batch))) for batch in batches])[: len(inputs)]
        if handle.task == "classification" and labels is not None:
            loss = nn.functional.cross_entropy(output, torch.from_numpy(np.array(labels[:max_inputs])))
        else:
            loss = nn.functional.mse_loss(output, torch.from_numpy(handle.run(inputs)))
        try:
            gradients = torch.autograd.grad(loss, weights, create_graph=True)
            traces = torch.zeros(len(weights), dtype=torch.float64)
            for _ in range(samples):
                probes = [torch.randint(0, 2, w.shape, generator=generator).to(w.dtype) * 2 - 1 for w in weights]
                products = torch.autograd.grad(gradients, weights, grad_outputs=probes, retain_graph=True)
                traces += torch.stack([(p * v).sum().double() for p, v in zip(products, probes)])
        except RuntimeError as exc:
            raise CompressError(f"Hessian traces are not available for '{handle.name}': {first_line(exc)}") from exc
    return {layer.name: float(trace) / samples for layer, trace in zip(layers, traces)}


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/compress_explorer/sensitivity`` (``~/.cache/...`` by default)."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "compress_explorer" / "sensitivity"


def cache_key(handle: ModelHandle, sweep: Sweep, hessian: bool) -> str:
    """A hash of the model's weights, the evaluation data, the sweep and the options."""
    digest = hashlib.sha256()
    options = {"version": CACHE_VERSION, "backend": handle.backend, "task": handle.task, "sweep": sweep.to_dict(), "hessian": hessian}
    digest.update(json.dumps(options, sort_keys=True).encode())
    if handle.backend == "onnx":
        digest.update(handle.model.SerializeToString())
    else:
        for name, tensor in handle.model.state_dict().items():
            digest.update(name.encode())
            digest.update(tensor.detach().reshape(-1).contiguous().view(torch.uint8).numpy().tobytes())
    for array in (handle.data.inputs, handle.data.labels):
        if array is not None:
            digest.update(str((array.shape, array.dtype)).encode())
            digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()[:32]
