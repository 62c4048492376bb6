"""Evaluation data: a user's ``.npz`` file, checked against the model's input spec, or generated inputs.

An ``.npz`` is read member by member: only ``inputs.npy`` and ``labels.npy``, each refused from its
``.npy`` header (shape and dtype) before any data is read when it is too large or not numeric.
"""

from __future__ import annotations

import math
import os
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

import numpy as np

from compress_core.errors import CompressError, first_line
from compress_core.models.handle import EvalData, InputSpec
from compress_core.models.trust import ZIP_ERRORS

GENERATED_SAMPLES = 256
MAX_DATA_BYTES = 512 * 2**20
MAX_DATA_BYTES_ENV = "COMPRESS_EXPLORER_MAX_DATA_BYTES"
SAVE_HINT = "save with numpy.savez(path, inputs=..., labels=...)"
NPY_MAGIC = b"\x93NUMPY"
# numpy dtype kinds: inputs may be bool, integers or floats; labels must be integers.
INPUT_KINDS = "biuf"
LABEL_KINDS = "iu"
KIND_NAMES = {
    "U": "strings",
    "S": "bytes",
    "O": "Python objects",
    "V": "structured/void records",
    "M": "datetimes",
    "m": "timedeltas",
    "c": "complex numbers",
    "f": "floats",
    "b": "booleans",
}


def load_npz(path: str | Path, spec: InputSpec | None, max_bytes: int | None = None) -> EvalData:
    """Read ``inputs`` (and optional ``labels``) from an ``.npz`` file; check they fit ``spec``.

    Only the members ``inputs.npy`` and ``labels.npy`` are read, and each is refused before its
    data is read when it would take more than ``max_bytes`` of memory (default: the environment
    variable ``COMPRESS_EXPLORER_MAX_DATA_BYTES``, else ``MAX_DATA_BYTES``) or has a dtype that is
    not numeric (labels: not integer). Pickled object arrays are never unpickled.
    """
    path = Path(path)
    limit = data_limit(max_bytes)
    with _open_npz(path) as archive:
        inputs = _read_member(archive, path, "inputs", INPUT_KINDS, limit)
        labels = _read_member(archive, path, "labels", LABEL_KINDS, limit)
        if inputs is None:
            found = ", ".join(sorted(name.removesuffix(".npy") for name in archive.namelist())[:10]) or "nothing"
            raise CompressError(
                f"{path}: has no 'inputs' array (found: {found}); expected 'inputs' and optional 'labels'"
            )
    _check_shapes(path, inputs, labels, spec)
    dtype = spec.dtype if spec is not None else ("int64" if np.issubdtype(inputs.dtype, np.integer) else "float32")
    return EvalData(
        inputs=np.ascontiguousarray(inputs.astype(dtype)),
        labels=None if labels is None else labels.astype(np.int64),
        origin=f"file {path.name}",
    )


def data_limit(max_bytes: int | None = None) -> int:
    """The most bytes one evaluation array may take: ``max_bytes``, else the environment variable, else the default."""
    if max_bytes is not None:
        return max_bytes
    text = os.environ.get(MAX_DATA_BYTES_ENV)
    if text is None:
        return MAX_DATA_BYTES
    if not text.strip().isdecimal():
        raise CompressError(f"{MAX_DATA_BYTES_ENV}={text!r} is not a whole number of bytes (e.g. 1073741824)")
    return int(text)


def _open_npz(path: Path) -> zipfile.ZipFile:
    if path.is_dir():
        raise CompressError(f"{path}: is a folder; expected an .npz file with an 'inputs' array")
    if not path.is_file():
        raise CompressError(f"{path}: no such data file (expected an .npz with an 'inputs' array)")
    with path.open("rb") as stream:
        start = stream.read(len(NPY_MAGIC))
    if not start:
        raise CompressError(f"{path}: is empty (0 bytes); expected an .npz archive; {SAVE_HINT}")
    if start == NPY_MAGIC:
        raise CompressError(f"{path}: is a .npy array, not an .npz archive; {SAVE_HINT}")
    try:
        return zipfile.ZipFile(path)
    except ZIP_ERRORS as exc:
        raise CompressError(f"{path}: not an .npz archive ({first_line(exc)}); {SAVE_HINT}") from exc


def _read_member(archive: zipfile.ZipFile, path: Path, key: str, kinds: str, limit: int) -> np.ndarray | None:
    """The array ``key`` from its ``.npy`` member, or None when absent; checked from its header first."""
    name = f"{key}.npy"
    try:
        info = archive.getinfo(name)
    except KeyError:
        return None
    with _guarded(path, name, "not readable"):
        stream = archive.open(info)
    with stream:
        with _guarded(path, name, "not a readable .npy array"):
            shape, fortran_order, dtype = _read_header(stream)
            header_bytes = stream.tell()
        _check_dtype(path, key, dtype, kinds)
        if any(size < 0 for size in shape):
            raise CompressError(f"{path}: member '{name}' declares the shape {shape}, with a negative size")
        nbytes = math.prod(shape) * dtype.itemsize
        _check_size(path, name, shape, dtype, math.prod(shape) * _loaded_itemsize(key, dtype), limit)
        if info.file_size != header_bytes + nbytes:
            raise CompressError(
                f"{path}: member '{name}' is {info.file_size:,} bytes, but its header declares "
                f"{header_bytes + nbytes:,} (shape {shape}, {dtype}); the archive is damaged"
            )
        with _guarded(path, name, "not readable"):
            raw = stream.read(nbytes)
    return np.frombuffer(raw, dtype=dtype).reshape(shape, order="F" if fortran_order else "C")


@contextmanager
def _guarded(path: Path, name: str, problem: str) -> Iterator[None]:
    """Turn a damaged archive's or header's exception into one line naming the member."""
    try:
        yield
    except ZIP_ERRORS as exc:
        raise CompressError(f"{path}: member '{name}' is {problem} ({first_line(exc)})") from exc


def _read_header(stream: IO[bytes]) -> tuple[tuple[int, ...], bool, np.dtype]:
    """Shape, Fortran order and dtype from a ``.npy`` header (numpy parses it with ``literal_eval``, never code)."""
    version = np.lib.format.read_magic(stream)
    if version == (1, 0):
        return np.lib.format.read_array_header_1_0(stream)
    if version == (2, 0):
        return np.lib.format.read_array_header_2_0(stream)
    raise ValueError(f"unsupported .npy format version {version[0]}.{version[1]}")


def _check_dtype(path: Path, key: str, dtype: np.dtype, kinds: str) -> None:
    if dtype.kind in kinds and not dtype.hasobject:
        return
    what = KIND_NAMES.get(dtype.kind, f"dtype kind '{dtype.kind}'")
    expected = "integer class labels" if key == "labels" else "numbers (bool, integer or float)"
    raise CompressError(f"{path}: '{key}' has dtype {dtype.str} ({what}); expected {expected}")


def _loaded_itemsize(key: str, dtype: np.dtype) -> int:
    """Bytes per value once loaded: labels become int64, inputs float32 or int64 (never fewer than stored)."""
    if key == "labels" or dtype.kind in "iu":
        return max(dtype.itemsize, 8)
    return max(dtype.itemsize, 4)


def _check_size(path: Path, name: str, shape: tuple[int, ...], dtype: np.dtype, nbytes: int, limit: int) -> None:
    """Refuse an array that would take more than ``limit`` bytes once loaded (``nbytes``, after conversion)."""
    if nbytes > limit:
        raise CompressError(
            f"{path}: member '{name}' takes {nbytes:,} bytes once loaded (shape {shape}, {dtype}), over the limit of "
            f"{limit:,} bytes; use less data or raise {MAX_DATA_BYTES_ENV}"
        )


def _check_shapes(path: Path, inputs: np.ndarray, labels: np.ndarray | None, spec: InputSpec | None) -> None:
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


def generated_data(spec: InputSpec, samples: int = GENERATED_SAMPLES) -> EvalData:
    """Inputs of the right shape with no labels: only fidelity metrics are meaningful on them."""
    return EvalData(inputs=spec.example(batch=samples, seed=0), labels=None, origin="generated")
