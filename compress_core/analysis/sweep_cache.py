"""The disk cache of sensitivity tables, keyed by a hash of the weights, the data and the sweep."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import torch

from compress_core.analysis.sweep import SensitivityResult, Sweep
from compress_core.atomic import atomic_write_text
from compress_core.models.handle import ModelHandle

CACHE_VERSION = 1


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/compress_explorer/sensitivity`` (``~/.cache/...`` by default)."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "compress_explorer" / "sensitivity"


def cache_key(handle: ModelHandle, sweep: Sweep, hessian: bool) -> str:
    """A hash of the model's weights, the evaluation data, the sweep and the options."""
    digest = hashlib.sha256()
    options = {
        "version": CACHE_VERSION,
        "backend": handle.backend,
        "task": handle.task,
        "output": handle.quality.output,
        "output_axes": list(handle.output_axes),
        "ctc_blank": handle.quality.ctc_blank,
        "metric": handle.quality.metric_label,
        "sweep": sweep.to_dict(),
        "hessian": hessian,
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


def cache_file(handle: ModelHandle, sweep: Sweep, hessian: bool, cache: bool | str | Path) -> Path | None:
    """Where the table of this handle and sweep is cached: ``cache`` is True for ``default_cache_dir()``,
    a folder, or False for no cache (None)."""
    if cache is False:
        return None
    folder = default_cache_dir() if cache is True else Path(cache)
    return folder / f"{cache_key(handle, sweep, hessian)}.json"


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
