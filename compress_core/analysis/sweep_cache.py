"""The disk cache of sensitivity sweeps: whole tables, keyed by a hash of the weights, the data and the
sweep; and the finished cells of a model, keyed by a hash of the weights and the data (``model_key``)
and the cell, so that a stopped sweep, a rerun on other workers or another sweep over the same cells
measures only what is missing. A failed cell is not kept: a rerun tries it again.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
from pathlib import Path

import numpy as np
import torch

from compress_core.analysis.sweep import SensitivityResult, SensitivityRow, SkippedCell, Sweep
from compress_core.atomic import atomic_write_text
from compress_core.models.handle import ModelHandle

CACHE_VERSION = 2
CELLS_FOLDER = "cells"
FLUSH_EVERY_S = 2.0
"""The cell store is written at most this often while a sweep runs (and when it ends)."""


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/compress_explorer/sensitivity`` (``~/.cache/...`` by default)."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "compress_explorer" / "sensitivity"


def model_key(handle: ModelHandle) -> str:
    """A hash of the model's weights, the evaluation data and how quality is measured."""
    digest = hashlib.sha256()
    options = {
        "version": CACHE_VERSION,
        "backend": handle.backend,
        "task": handle.task,
        "output": handle.quality.output,
        "output_axes": list(handle.output_axes),
        "ctc_blank": handle.quality.ctc_blank,
        "metric": handle.quality.metric_label,
    }
    digest.update(json.dumps(options, sort_keys=True).encode())
    code = getattr(handle.quality.metric, "__code__", None)
    if code is not None:  # a user metric whose code changed measures something else
        digest.update(code.co_code)
    if handle.backend == "onnx":
        digest.update(handle.model.SerializeToString())
    else:
        for name, tensor in handle.model.state_dict().items():
            digest.update(name.encode())
            digest.update(tensor.detach().reshape(-1).contiguous().view(torch.uint8).numpy().tobytes())
    for array in [*handle.data.inputs.arrays.values(), handle.data.labels]:
        if array is not None:
            digest.update(str((array.shape, array.dtype)).encode())
            digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()[:32]


def cache_key(handle: ModelHandle, sweep: Sweep, hessian: bool, model: str | None = None) -> str:
    """A hash of the model's weights, the evaluation data, the sweep and the options (``model``: the
    handle's ``model_key``, when the caller has it)."""
    options = {"model": model or model_key(handle), "sweep": sweep.to_dict(), "hessian": hessian}
    return hashlib.sha256(json.dumps(options, sort_keys=True).encode()).hexdigest()[:32]


def cache_folder(cache: bool | str | Path) -> Path | None:
    """The cache's folder: ``cache`` is True for ``default_cache_dir()``, a folder, or False (None)."""
    if cache is False:
        return None
    return default_cache_dir() if cache is True else Path(cache)


def cache_file(
    handle: ModelHandle, sweep: Sweep, hessian: bool, cache: bool | str | Path, model: str | None = None
) -> Path | None:
    """Where the table of this handle and sweep is cached: ``cache`` is True for ``default_cache_dir()``,
    a folder, or False for no cache (None)."""
    folder = cache_folder(cache)
    return None if folder is None else folder / f"{cache_key(handle, sweep, hessian, model)}.json"


def read_cached(path: Path | None) -> SensitivityResult | None:
    """The cached table at ``path`` (marked ``cached``), or None when there is none."""
    if path is None or not path.is_file():
        return None
    result = SensitivityResult.from_dict(json.loads(path.read_text(encoding="utf-8")))
    result.cached = True
    return result


def write_cached(path: Path | None, result: SensitivityResult) -> None:
    """Keep a complete table at ``path`` (atomically); a cancelled one, or no path, is not kept."""
    if path is not None and not result.cancelled:
        atomic_write_text(path, json.dumps(result.to_dict()))


class CellStore:
    """The finished cells of one model and data (``model_key``) in ``path`` (None: nothing is kept).

    Cells are keyed by layer, kind, level and the sweep's scheme and granularity. ``put`` keeps a cell;
    the file is rewritten atomically at most every ``FLUSH_EVERY_S`` seconds and on ``flush``, merged
    with what another sweep of the same model wrote meanwhile. ``info`` keeps the sweep's metric name,
    baseline and strategy, so that a sweep found whole in the store runs nothing.
    """

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.cells: dict[str, dict] = {}
        self.info: dict = {}
        self.written = time.monotonic()
        self.dirty = False
        if path is not None and path.is_file():
            data = json.loads(path.read_text(encoding="utf-8"))
            self.cells, self.info = data["cells"], data["info"]

    @staticmethod
    def key(cell: tuple[str, str, int | float], sweep: Sweep) -> str:
        """The store's key of a cell measured with ``sweep``'s scheme and granularity."""
        layer, kind, level = cell
        return json.dumps([layer, kind, level, sweep.scheme, sweep.granularity])

    def get(self, cell: tuple[str, str, int | float], sweep: Sweep) -> SensitivityRow | SkippedCell | None:
        """The stored row or skip of ``cell``, or None."""
        stored = self.cells.get(self.key(cell, sweep))
        if stored is None:
            return None
        return SkippedCell(**stored) if "reason" in stored else SensitivityRow(**stored)

    def put(self, cell: tuple[str, str, int | float], sweep: Sweep, outcome: SensitivityRow | SkippedCell) -> None:
        """Keep one finished cell (written with the next ``flush``, or now when the last write is old)."""
        if self.path is None:
            return
        self.cells[self.key(cell, sweep)] = dataclasses.asdict(outcome)
        self.dirty = True
        if time.monotonic() - self.written >= FLUSH_EVERY_S:
            self.flush()

    def remember(self, info: dict) -> None:
        """Keep the sweep's metric name, baseline and strategy."""
        if self.path is not None and info != self.info:
            self.info, self.dirty = dict(info), True

    def flush(self) -> None:
        """Write the kept cells, with those another sweep wrote to the file meanwhile."""
        if self.path is None or not self.dirty:
            return
        if self.path.is_file():
            self.cells = {**json.loads(self.path.read_text(encoding="utf-8"))["cells"], **self.cells}
        atomic_write_text(self.path, json.dumps({"info": self.info, "cells": self.cells}))
        self.written, self.dirty = time.monotonic(), False


def cell_store(cache: bool | str | Path, model: str) -> CellStore:
    """The cell store of the model with ``model_key`` ``model`` under the cache's folder (nothing kept
    without a cache)."""
    folder = cache_folder(cache)
    return CellStore(None if folder is None else folder / CELLS_FOLDER / f"{model}.json")
