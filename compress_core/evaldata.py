"""Evaluation data: a user's ``.npz`` file, checked against the model's input spec, or generated inputs."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from .errors import CompressError
from .handle import EvalData, InputSpec

GENERATED_SAMPLES = 256


def load_npz(path: str | Path, spec: InputSpec | None) -> EvalData:
    """Read ``inputs`` (and optional ``labels``) from an ``.npz`` file; check they fit ``spec``.

    Pickled object arrays are refused: the file is opened with ``allow_pickle=False``.
    """
    path = Path(path)
    if not path.is_file():
        raise CompressError(f"{path}: no such data file (expected an .npz with an 'inputs' array)")
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {key: archive[key] for key in archive.files}
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as exc:
        raise CompressError(f"{path}: not a readable .npz file ({exc})") from exc
    if "inputs" not in arrays:
        found = ", ".join(sorted(arrays)) or "nothing"
        raise CompressError(f"{path}: has no 'inputs' array (found: {found}); expected 'inputs' and optional 'labels'")
    inputs = arrays["inputs"]
    labels = arrays.get("labels")
    if inputs.ndim < 2 or len(inputs) == 0:
        raise CompressError(f"{path}: 'inputs' has shape {inputs.shape}; expected (N, *sample_shape) with N >= 1")
    if spec is not None and tuple(inputs.shape[1:]) != tuple(spec.shape):
        raise CompressError(
            f"{path}: 'inputs' has samples of shape {tuple(inputs.shape[1:])}, "
            f"but the model takes {tuple(spec.shape)} (after the batch axis)"
        )
    if labels is not None and (labels.ndim != 1 or len(labels) != len(inputs)):
        raise CompressError(
            f"{path}: 'labels' has shape {labels.shape}; expected one integer label per input ({len(inputs)},)"
        )
    dtype = spec.dtype if spec is not None else ("int64" if np.issubdtype(inputs.dtype, np.integer) else "float32")
    return EvalData(
        inputs=np.ascontiguousarray(inputs.astype(dtype)),
        labels=None if labels is None else labels.astype(np.int64),
        origin=f"file {path.name}",
    )


def generated_data(spec: InputSpec, samples: int = GENERATED_SAMPLES) -> EvalData:
    """Inputs of the right shape with no labels: only fidelity metrics are meaningful on them."""
    return EvalData(inputs=spec.example(batch=samples, seed=0), labels=None, origin="generated")
