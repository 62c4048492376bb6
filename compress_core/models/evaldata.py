"""Evaluation data: a user's ``.npz`` file, checked against the model's input specs, or generated inputs.

An ``.npz`` holds one array per model input, named after the input (``input_ids.npy``,
``attention_mask.npy``); a single-input model's array may also be called ``inputs``. Optional
``labels`` hold integer labels. It is read member by member: only those members, each refused from
its ``.npy`` header (shape and dtype) before any data is read when it is too large or not numeric.
"""

from __future__ import annotations

import math
import os
import zipfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import IO

import numpy as np

from compress_core.errors import CompressError, first_line
from compress_core.models.handle import EvalData
from compress_core.models.inputs import Inputs, InputSpec, generated_inputs
from compress_core.models.trust import ZIP_ERRORS

GENERATED_SAMPLES = 256
MAX_DATA_BYTES = 512 * 2**20
MAX_DATA_BYTES_ENV = "COMPRESS_EXPLORER_MAX_DATA_BYTES"
SAVE_HINT = "save with numpy.savez(path, inputs=..., labels=...), or one array per input name"
SINGLE_INPUT_KEY = "inputs"
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


def load_npz(path: str | Path, specs: Sequence[InputSpec], max_bytes: int | None = None) -> EvalData:
    """Read the model's inputs (and optional ``labels``) from an ``.npz`` file; check they fit ``specs``."""
    arrays, labels = read_npz(path, [spec.name for spec in specs], max_bytes)
    return eval_data(Path(path), specs, arrays, labels)


def read_npz(
    path: str | Path, names: Sequence[str], max_bytes: int | None = None
) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
    """The arrays named after the inputs ``names`` (``inputs`` for a single input) and the optional labels.

    Each member is refused before its data is read when it would take more than ``max_bytes`` of
    memory (default: the environment variable ``COMPRESS_EXPLORER_MAX_DATA_BYTES``, else
    ``MAX_DATA_BYTES``) or has a dtype that is not numeric (labels: not integer). Pickled object
    arrays are never unpickled. A missing input is a one-line error naming what the file holds.
    """
    path = Path(path)
    limit = data_limit(max_bytes)
    arrays: dict[str, np.ndarray] = {}
    with _open_npz(path) as archive:
        for name in names:
            keys = [name, SINGLE_INPUT_KEY] if len(names) == 1 else [name]
            array = next(
                (found for key in keys if (found := _read_member(archive, path, key, INPUT_KINDS, limit)) is not None),
                None,
            )
            if array is None:
                held = ", ".join(sorted(member.removesuffix(".npy") for member in archive.namelist())[:10]) or "nothing"
                expected = (
                    f"'{name}' (or '{SINGLE_INPUT_KEY}')"
                    if len(names) == 1
                    else f"one array per input: {', '.join(names)}"
                )
                raise CompressError(
                    f"{path}: has no array for input '{name}' (found: {held}); expected {expected} and optional 'labels'"
                )
            arrays[name] = array
        labels = _read_member(archive, path, "labels", LABEL_KINDS, limit)
    return arrays, labels


def eval_data(
    path: Path, specs: Sequence[InputSpec], arrays: dict[str, np.ndarray], labels: np.ndarray | None
) -> EvalData:
    """``EvalData`` from arrays read from ``path``, each checked against its spec and cast to its dtype."""
    for spec in specs:
        _check_input(path, spec, arrays[spec.name])
    inputs = Inputs.from_specs(
        specs, {spec.name: np.ascontiguousarray(arrays[spec.name].astype(spec.dtype)) for spec in specs}
    )
    if labels is not None and (labels.ndim < 1 or len(labels) != len(inputs)):
        raise CompressError(
            f"{path}: 'labels' has shape {labels.shape}; expected one integer label (or label row) per sample ({len(inputs)},)"
        )
    return EvalData(
        inputs=inputs, labels=None if labels is None else labels.astype(np.int64), origin=f"file {path.name}"
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


def check_inputs(where: str | Path, specs: Sequence[InputSpec], inputs: Inputs) -> None:
    """Refuse ``inputs`` (from ``where``) that lack one of ``specs``' inputs or do not fit it."""
    for spec in specs:
        if spec.name not in inputs.arrays:
            raise CompressError(
                f"{where}: has no input '{spec.name}'; the model takes {', '.join(s.name for s in specs)}"
            )
        _check_input(where, spec, inputs.arrays[spec.name])


def _check_input(path: str | Path, spec: InputSpec, array: np.ndarray) -> None:
    """Refuse an array that does not fit its input: wrong rank, no samples, or another sample shape."""
    if spec.batch_axis is None:
        if tuple(array.shape) != spec.shape:
            raise CompressError(
                f"{path}: input '{spec.name}' has shape {array.shape}, but the model takes {spec.describe()}"
            )
        return
    axis = spec.batch_axis
    if array.ndim <= axis:
        raise CompressError(f"{path}: input '{spec.name}' has shape {array.shape}; the model takes {spec.describe()}")
    sample = array.shape[:axis] + array.shape[axis + 1 :]
    if sample != spec.shape:
        raise CompressError(
            f"{path}: input '{spec.name}' has samples of shape {sample}, but the model takes {spec.describe()}"
        )
    if array.shape[axis] == 0:
        raise CompressError(f"{path}: input '{spec.name}' has no samples (shape {array.shape}); give at least one")


def generated_data(specs: Sequence[InputSpec], samples: int = GENERATED_SAMPLES) -> EvalData:
    """Inputs of the right shapes with no labels: only fidelity metrics are meaningful on them."""
    return EvalData(inputs=generated_inputs(specs, samples), labels=None, origin="generated")
