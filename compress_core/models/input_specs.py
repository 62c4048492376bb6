"""From what a model file declares about its inputs, plus what the user gives, to one spec per input.

A file declares each input's name, dtype and dims; a dim may be fixed (an int), named (``"batch"``,
``"seq"``) or unknown (None). The batch axis is the one that carries the first input's batch
dim; a scalar input is unbatched. What the file leaves open (a dynamic length, a sample rate's
value) comes from the user (``--input NAME=SHAPE`` or ``--input NAME=VALUE``) or from evaluation
data; otherwise the error names the input and asks for it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from compress_core.errors import CompressError
from compress_core.models.inputs import InputSpec

Dim = int | str | None
SUPPORTED_DTYPES = ("float32", "float64", "float16", "int64", "int32", "int8", "uint8", "bool")


@dataclass(frozen=True)
class DeclaredInput:
    """An input as the file declares it: ``dims`` includes the batch axis (None: rank unknown)."""

    name: str
    dtype: str
    dims: tuple[Dim, ...] | None
    high: int | None = None  # the row count of the embedding table an integer input indexes


def batch_axes(declared: Sequence[DeclaredInput]) -> list[int | None]:
    """Each input's batch axis: the axis carrying the first input's batch dim, else 0; None for scalars."""
    first = declared[0].dims
    symbol = first[0] if first and isinstance(first[0], str) else None
    axes: list[int | None] = []
    for item in declared:
        if item.dims is not None and len(item.dims) == 0:
            axes.append(None)
        elif symbol is not None and item.dims is not None and symbol in item.dims:
            axes.append(item.dims.index(symbol))
        else:
            axes.append(0)
    return axes


def fixed_batch(declared: Sequence[DeclaredInput], axes: Sequence[int | None]) -> int | None:
    """The static batch size the first batched input declares, or None when it is free."""
    for item, axis in zip(declared, axes):
        if axis is not None and item.dims is not None:
            dim = item.dims[axis]
            return dim if isinstance(dim, int) and dim > 0 else None
    return None


def resolve_specs(
    path: Path,
    declared: Sequence[DeclaredInput],
    given: Mapping[str, Sequence[float]],
    data: Mapping[str, np.ndarray] | None = None,
    data_source: str = "the evaluation data",
) -> list[InputSpec]:
    """One ``InputSpec`` per declared input, its open dims and values filled from ``given`` or ``data``.

    ``given`` maps an input name to one sample's shape (without the batch axis) or, for a scalar
    input, to its value. ``data`` holds evaluation arrays by input name; their shapes fill what the
    file leaves open.
    """
    names = [item.name for item in declared]
    unknown = sorted(set(given) - set(names))
    if unknown:
        raise CompressError(
            f"{path}: --input names {', '.join(unknown)}, but the model's inputs are {', '.join(names)}"
        )
    axes = batch_axes(declared)
    single = len(declared) == 1
    return [
        _resolve_one(path, item, axis, given.get(item.name), (data or {}).get(item.name), single, data_source)
        for item, axis in zip(declared, axes)
    ]


def _resolve_one(
    path: Path,
    item: DeclaredInput,
    axis: int | None,
    given: Sequence[float] | None,
    array: np.ndarray | None,
    single: bool,
    data_source: str,
) -> InputSpec:
    if item.dtype not in SUPPORTED_DTYPES:
        raise CompressError(
            f"{path}: input '{item.name}' has element type {item.dtype}; supported: {', '.join(SUPPORTED_DTYPES)}"
        )
    if axis is None:
        return _scalar_spec(path, item, given, array)
    if array is not None:
        shape = tuple(int(d) for i, d in enumerate(array.shape) if i != axis)
    elif given is not None:
        shape = _shape_from(path, item, given)
    else:
        dims = item.dims
        sample = None if dims is None else [d for i, d in enumerate(dims) if i != axis]
        if sample is None or not all(isinstance(d, int) and d > 0 for d in sample):
            raise CompressError(
                f"{path}: input '{item.name}' (shape {_dims_text(dims, axis)}) is open; give one sample's shape "
                f"without the batch axis (CLI: {_shape_option(item, axis, single)}; app: the inputs field on the Model "
                "page) or evaluation data (--data)"
            )
        shape = tuple(int(d) for d in sample)  # type: ignore[arg-type]
    _check_declared(path, item, axis, shape, data_source if array is not None else "--input")
    return InputSpec(shape, item.dtype, item.name, axis, high=item.high)


def _scalar_spec(path: Path, item: DeclaredInput, given: Sequence[float] | None, array: np.ndarray | None) -> InputSpec:
    """A scalar input's spec: its value from the data or from ``--input NAME=VALUE``, which is required."""
    if array is not None:
        value = tuple(float(v) for v in np.asarray(array).reshape(-1))
    elif given is not None:
        value = tuple(float(v) for v in given)
    else:
        raise CompressError(
            f"{path}: input '{item.name}' is a scalar {item.dtype} whose value matters (e.g. a sample rate); "
            f"give it (CLI: --input {item.name}=16000; app: the input's form on the Model page) or put it in --data"
        )
    if len(value) != 1:
        raise CompressError(f"{path}: input '{item.name}' is a scalar; give one value, not {len(value)}")
    return InputSpec((), item.dtype, item.name, None, value=value)


def _shape_from(path: Path, item: DeclaredInput, given: Sequence[float]) -> tuple[int, ...]:
    shape = tuple(int(d) for d in given)
    if any(d <= 0 or d != g for d, g in zip(shape, given)):
        raise CompressError(
            f"{path}: --input {item.name}={','.join(str(g) for g in given)}: a shape takes positive whole numbers"
        )
    return shape


def _check_declared(path: Path, item: DeclaredInput, axis: int, shape: tuple[int, ...], origin: str) -> None:
    """Refuse a shape (from ``origin``) whose rank or fixed dims contradict what the file declares."""
    if item.dims is None:
        return
    sample = [d for i, d in enumerate(item.dims) if i != axis]
    conflict = len(sample) != len(shape) or any(isinstance(d, int) and d > 0 and d != s for d, s in zip(sample, shape))
    if conflict:
        raise CompressError(
            f"{path}: input '{item.name}' is declared {_dims_text(item.dims, axis)}; samples of shape {shape} "
            f"(from {origin}) do not fit it"
        )


def _shape_option(item: DeclaredInput, axis: int, single: bool) -> str:
    """The option that fills an open input: ``--input-shape 1,64,<image_width>`` or ``--input NAME=...``."""
    dims = item.dims or ()
    sample = ",".join(
        str(d) if isinstance(d, int) and d > 0 else f"<{d or '?'}>" for i, d in enumerate(dims) if i != axis
    )
    sample = sample or "1,8,8"
    return f"--input-shape {sample}" if single else f"--input {item.name}={sample}"


def _dims_text(dims: tuple[Dim, ...] | None, axis: int) -> str:
    """``[N, 1, 64, image_width]``: declared dims with the batch axis shown as N and unknown ones as ?."""
    if dims is None:
        return "unknown"
    return "[" + ", ".join("N" if i == axis else ("?" if d is None else str(d)) for i, d in enumerate(dims)) + "]"
