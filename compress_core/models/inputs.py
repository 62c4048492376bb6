"""A model's inputs: one spec per named input, and ``Inputs``, the named arrays of N samples.

A model may take several inputs (token ids and an attention mask, audio and a recurrent state and a
sample rate). Each has a batch axis (usually 0; a recurrent state may keep it at 1), or none: an
unbatched input (a sample rate, a fixed table) holds one value that every batch shares.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

SINGLE_INPUT_NAME = "input"
ZERO_NAMES = re.compile(r"state|hidden|^h0$|^c0$|^h$|^c$|cache|past|token_type", re.IGNORECASE)
ONE_NAMES = re.compile(r"mask", re.IGNORECASE)
GENERATED_INT_HIGH = 100


@dataclass(frozen=True)
class InputSpec:
    """One input: its name, the shape of one sample (without the batch axis; for an unbatched input,
    the whole value's shape), its dtype, and where its batch axis sits (None: unbatched).

    ``value`` is a fixed value for an unbatched input (a sample rate); ``high`` bounds generated
    integers (the row count of the embedding table the input indexes, when known).
    """

    shape: tuple[int, ...]
    dtype: str = "float32"
    name: str = SINGLE_INPUT_NAME
    batch_axis: int | None = 0
    value: tuple[float, ...] | None = None
    high: int | None = None

    @property
    def batched(self) -> bool:
        return self.batch_axis is not None

    def full_shape(self, batch: int) -> tuple[int, ...]:
        """The array shape for ``batch`` samples (the shape itself for an unbatched input)."""
        if self.batch_axis is None:
            return self.shape
        shape = list(self.shape)
        shape.insert(self.batch_axis, batch)
        return tuple(shape)

    def example(self, batch: int = 1, seed: int = 0) -> np.ndarray:
        """A deterministic example of this input for ``batch`` samples.

        A given ``value`` is used as it is. Otherwise: zeros for a recurrent state or token types, ones
        for a mask, integers below ``high`` (or 1..99) for other integer inputs, normal floats else.
        """
        shape = self.full_shape(batch)
        if self.value is not None:
            return np.asarray(self.value, dtype=self.dtype).reshape(shape)
        if ZERO_NAMES.search(self.name):
            return np.zeros(shape, dtype=self.dtype)
        if ONE_NAMES.search(self.name):
            return np.ones(shape, dtype=self.dtype)
        rng = np.random.default_rng(seed)
        if np.issubdtype(np.dtype(self.dtype), np.integer):
            low, high = (0, self.high) if self.high else (1, GENERATED_INT_HIGH)
            return rng.integers(low, high, size=shape).astype(self.dtype)
        if self.dtype == "bool":
            return np.ones(shape, dtype=bool)
        return rng.standard_normal(shape).astype(self.dtype)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready data (``from_dict`` reads it back)."""
        return {
            "name": self.name,
            "shape": list(self.shape),
            "dtype": self.dtype,
            "batch_axis": self.batch_axis,
            "value": None if self.value is None else list(self.value),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> InputSpec:
        value = data.get("value")
        return cls(
            tuple(int(d) for d in data["shape"]),
            str(data["dtype"]),
            str(data["name"]),
            data.get("batch_axis", 0),
            None if value is None else tuple(float(v) for v in value),
        )

    def describe(self) -> str:
        """``input_ids int64[N, 16]``: name, dtype and shape with the batch axis shown as N."""
        if self.batch_axis is None:
            return f"{self.name} {self.dtype}{list(self.shape)} (unbatched)"
        dims = [str(d) for d in self.shape]
        dims.insert(self.batch_axis, "N")
        return f"{self.name} {self.dtype}[{', '.join(dims)}]"


class Inputs:
    """The named input arrays of N samples, in the model's input order.

    Indexing (an int, a slice or an index array) selects samples along each batched input's batch
    axis and keeps unbatched inputs whole, so ``inputs[:8]`` is the first 8 samples of every input.
    """

    def __init__(self, arrays: Mapping[str, np.ndarray], batch_axes: Mapping[str, int | None] | None = None) -> None:
        if not arrays:
            raise ValueError("a model takes at least one input")
        self.arrays: dict[str, np.ndarray] = dict(arrays)
        axes = dict(batch_axes or {})
        self.batch_axes: dict[str, int | None] = {name: axes.get(name, 0) for name in self.arrays}
        lengths = {self.arrays[name].shape[axis] for name, axis in self.batch_axes.items() if axis is not None}
        if len(lengths) > 1:
            sizes = {name: self.arrays[name].shape[axis] for name, axis in self.batch_axes.items() if axis is not None}
            raise ValueError(f"inputs hold different numbers of samples: {sizes}")
        self._length = lengths.pop() if lengths else 1

    @classmethod
    def single(cls, array: np.ndarray, name: str = SINGLE_INPUT_NAME) -> Inputs:
        """One batched input (batch axis 0)."""
        return cls({name: array})

    @classmethod
    def from_specs(cls, specs: Sequence[InputSpec], arrays: Mapping[str, np.ndarray]) -> Inputs:
        """The arrays of ``specs``' inputs with their batch axes, in the specs' order."""
        return cls({spec.name: arrays[spec.name] for spec in specs}, {spec.name: spec.batch_axis for spec in specs})

    def __len__(self) -> int:
        return self._length

    def __iter__(self) -> Iterator[str]:
        return iter(self.arrays)

    def __getitem__(self, index: Any) -> Inputs:
        if isinstance(index, (int, np.integer)):
            index = [int(index)]
        if isinstance(index, slice):
            picked = {name: self._slice(name, index) for name in self.arrays}
        else:
            positions = np.asarray(index)
            picked = {
                name: array if self.batch_axes[name] is None else np.take(array, positions, axis=self.batch_axes[name])
                for name, array in self.arrays.items()
            }
        return Inputs(picked, self.batch_axes)

    def _slice(self, name: str, index: slice) -> np.ndarray:
        axis = self.batch_axes[name]
        array = self.arrays[name]
        if axis is None:
            return array
        selector: list[Any] = [slice(None)] * array.ndim
        selector[axis] = index
        return array[tuple(selector)]

    @property
    def names(self) -> list[str]:
        return list(self.arrays)

    @property
    def first(self) -> np.ndarray:
        """The first input's array (the only one for a single-input model)."""
        return next(iter(self.arrays.values()))

    def feed(self) -> dict[str, np.ndarray]:
        """Name -> contiguous array, as ONNX Runtime takes them."""
        return {name: np.ascontiguousarray(array) for name, array in self.arrays.items()}

    def tensors(self) -> list[torch.Tensor]:
        """The arrays as torch tensors, in input order, as a torch model's forward arguments."""
        return [torch.from_numpy(np.array(array)) for array in self.arrays.values()]

    def padded(self, size: int) -> Inputs:
        """Filled up to ``size`` samples by repeating the last one (unchanged when already that long)."""
        missing = size - len(self)
        if missing <= 0:
            return self
        return self[[*range(len(self)), *[len(self) - 1] * missing]]

    def concat(self, other: Inputs) -> Inputs:
        """These samples followed by ``other``'s (unbatched inputs are taken from ``self``)."""
        return Inputs(
            {
                name: array
                if self.batch_axes[name] is None
                else np.concatenate([array, other.arrays[name]], axis=self.batch_axes[name])
                for name, array in self.arrays.items()
            },
            self.batch_axes,
        )

    def shapes_text(self) -> str:
        """``input_ids (1, 16), attention_mask (1, 16)``: every input's name and array shape."""
        return ", ".join(f"{name} {tuple(array.shape)}" for name, array in self.arrays.items())

    def nbytes(self) -> int:
        return sum(int(array.nbytes) for array in self.arrays.values())


def generated_inputs(specs: Sequence[InputSpec], samples: int, seed: int = 0) -> Inputs:
    """Inputs of every spec's shape for ``samples`` samples (see ``InputSpec.example``)."""
    return Inputs.from_specs(specs, {spec.name: spec.example(samples, seed + i) for i, spec in enumerate(specs)})


def in_batches(inputs: Inputs, size: int, fixed_batch: int | None = None) -> list[Inputs]:
    """``inputs`` cut into batches of ``size`` (``fixed_batch`` when the model has a static batch), the
    last one filled up to ``fixed_batch`` by repeating its last sample; outputs of the copies follow the
    real ones and are to be dropped."""
    size = fixed_batch or size
    return [inputs[start : start + size].padded(fixed_batch or 0) for start in range(0, len(inputs), size)]


def batch_of(inputs: Inputs, batch: int) -> Inputs:
    """The first ``batch`` samples, repeated when there are fewer (one batch for timing runs)."""
    positions = [i % len(inputs) for i in range(batch)]
    return inputs[positions] if batch != len(inputs) else inputs
