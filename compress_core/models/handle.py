"""The loaded model: its backend, its input spec, its evaluation data, and one way to run it."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

import numpy as np
import torch

Backend = Literal["torch", "onnx"]
RUN_BATCH = 256
Batch = TypeVar("Batch", np.ndarray, torch.Tensor)


@dataclass(frozen=True)
class InputSpec:
    """The shape of one sample (without the batch axis) and its dtype (``float32`` or ``int64``)."""

    shape: tuple[int, ...]
    dtype: str = "float32"

    def example(self, batch: int = 1, seed: int = 0) -> np.ndarray:
        """A deterministic example batch of this spec (normal floats, or small non-negative ints)."""
        rng = np.random.default_rng(seed)
        if self.dtype == "int64":
            return rng.integers(1, 100, size=(batch, *self.shape), dtype=np.int64)
        return rng.standard_normal((batch, *self.shape)).astype(np.float32)


@dataclass(frozen=True)
class EvalData:
    """Evaluation inputs, optional labels, and where they came from.

    ``origin`` is shown to the user: ``"test split of digits"``, ``"file data.npz"`` or
    ``"generated"``. With generated data only fidelity to the original model is meaningful.
    """

    inputs: np.ndarray
    labels: np.ndarray | None
    origin: str

    @property
    def generated(self) -> bool:
        return self.origin == "generated"

    def __len__(self) -> int:
        return int(self.inputs.shape[0])


@dataclass
class CompressionRecord:
    """What ``apply_plan`` did, kept so that fine-tuning and export can respect it.

    ``masks`` and ``quantized`` are keyed by *weight name* (``LayerInfo.weight_name`` in the
    compressed model's inventory: a torch parameter name such as ``fc1.0.weight``, or an ONNX
    initializer name): the keep-mask (bool tensor of the weight's shape) and the
    ``QuantizedWeight`` (grid, scales, zero points). ``layer_sqnr`` maps each planned layer of the
    original model to the SQNR (dB) of its final effective weight against the original, or None
    where channels were removed. ``nm_patterns`` gives (N, M) for weights pruned N:M. ``notes`` are sentences for the user (what was skipped and why).
    """

    plan: Any
    masks: dict[str, torch.Tensor] = field(default_factory=dict)
    quantized: dict[str, Any] = field(default_factory=dict)
    layer_sqnr: dict[str, float | None] = field(default_factory=dict)
    nm_patterns: dict[str, tuple[int, int]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


@dataclass
class ModelHandle:
    """A model loaded by ``load_model``: never mutated by the project's functions.

    ``model`` is a ``torch.nn.Module`` (also TorchScript or ``torch.export`` modules) when ``backend``
    is ``"torch"``, an ``onnx.ModelProto`` when it is ``"onnx"``. ``task`` is ``"classification"``
    (outputs are logits, accuracy where labels exist) or ``"embedding"`` (fidelity only).
    ``kind`` says what the model was loaded from (``sample``, ``onnx``, ``torchscript``,
    ``exported``, ``state_dict``, ``pickle``) and decides which transforms are possible.
    """

    name: str
    backend: Backend
    model: Any
    input_spec: InputSpec
    data: EvalData
    kind: str
    task: str = "classification"
    source: str | None = None
    compression: CompressionRecord | None = None
    fixed_batch: int | None = None  # a torch.export program's static batch size, honoured by ``input_batches``
    _ort_session: Any = field(default=None, repr=False, compare=False)

    def replace(self, **changes: Any) -> ModelHandle:
        """A new handle with some fields changed (the ONNX Runtime session is not carried over)."""
        return dataclasses.replace(self, _ort_session=None, **changes)

    def batch_size_for(self, requested: int = RUN_BATCH) -> int:
        """The batch size to run with: ``fixed_batch`` for a program exported with a static batch, else ``requested``."""
        return self.fixed_batch or requested

    def padded(self, batch: Batch) -> Batch:
        """``batch`` (numpy or torch, samples first) filled up to ``fixed_batch`` samples by repeating its
        last sample, so that a static-batch program takes it; the outputs of the copies are to be dropped
        (they follow the real ones). Returned unchanged when the batch size is free or already full."""
        missing: int = (self.fixed_batch or 0) - len(batch)
        if missing <= 0:
            return batch
        return batch[[*range(len(batch)), *[len(batch) - 1] * missing]]

    def input_batches(self, inputs: np.ndarray, batch_size: int = RUN_BATCH) -> list[np.ndarray]:
        """``inputs`` cut into the batches the model takes (``batch_size_for``, the last one ``padded``).

        Every caller that runs the model batches through this; the concatenated outputs hold the
        ``len(inputs)`` real rows first, then the padding's.
        """
        size = self.batch_size_for(batch_size)
        return [self.padded(inputs[start : start + size]) for start in range(0, len(inputs), size)]

    def run(self, inputs: np.ndarray, batch_size: int = RUN_BATCH) -> np.ndarray:
        """Run the model on ``inputs`` (N, *shape) in batches and return its first output as numpy."""
        outputs = [self._run_batch(batch) for batch in self.input_batches(inputs, batch_size)]
        return np.concatenate(outputs, axis=0)[: len(inputs)]

    def _run_batch(self, batch: np.ndarray) -> np.ndarray:
        if self.backend == "onnx":
            session = self.ort_session()
            input_name = session.get_inputs()[0].name
            return np.asarray(session.run(None, {input_name: batch})[0])
        with torch.no_grad():
            return as_numpy([first_tensor(self.model(torch.from_numpy(np.array(batch))))])

    def ort_session(self) -> Any:
        """An ONNX Runtime session for an ONNX-backed handle, built once."""
        if self._ort_session is None:
            from compress_core.models.sessions import make_session

            self._ort_session = make_session(self.model, label=f"'{self.name}'")
        return self._ort_session


def first_tensor(output: object) -> torch.Tensor:
    """The model's first output: the first leaf of nested tuples and lists, as ``ModelHandle.run`` takes it."""
    while isinstance(output, (tuple, list)):
        output = output[0]
    return output  # type: ignore[return-value]


def as_numpy(outputs: list[torch.Tensor]) -> np.ndarray:
    """Batch outputs concatenated as float32 numpy, as ``ModelHandle.run`` returns them."""
    return torch.cat([output.detach().float() for output in outputs]).numpy()
