"""The loaded model: its backend, its input spec, its evaluation data, and one way to run it."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch

from compress_core.models.inputs import Inputs, InputSpec, in_batches

Backend = Literal["torch", "onnx"]
RUN_BATCH = 256
UserMetric = Callable[[np.ndarray, np.ndarray, "np.ndarray | None"], float]
__all__ = ["Backend", "CompressionRecord", "EvalData", "InputSpec", "Inputs", "ModelHandle", "Quality", "RUN_BATCH"]


@dataclass(frozen=True)
class Quality:
    """How the quality of a model's outputs is measured, as the user chose it (or ``auto``).

    ``task``: ``auto`` (detected from the output's shape and dtype), ``classification``, ``sequence``,
    ``dense``, ``ids``, ``embedding``. ``output``: index of the output that ranks (the others are
    measured too). ``ctc_blank``: collapse CTC repeats and this blank id before comparing sequences.
    ``metric``: a user function ``(reference, outputs, labels) -> float`` (higher is better) and
    ``metric_label`` where it came from (``path.py:function``).
    """

    task: str = "auto"
    output: int = 0
    ctc_blank: int | None = None
    metric: UserMetric | None = field(default=None, compare=False)
    metric_label: str | None = None


@dataclass(frozen=True)
class EvalData:
    """Evaluation inputs, optional labels, and where they came from.

    ``origin`` is shown to the user: ``"test split of digits"``, ``"file data.npz"`` or
    ``"generated"``. With generated data only fidelity to the original model is meaningful.
    """

    inputs: Inputs
    labels: np.ndarray | None
    origin: str

    @property
    def generated(self) -> bool:
        return self.origin == "generated"

    def __len__(self) -> int:
        return len(self.inputs)


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
    is ``"torch"``, an ``onnx.ModelProto`` when it is ``"onnx"``. ``input_specs`` has one entry per
    input, in the order the model takes them. ``task`` is the resolved kind of the ranked output
    (``classification``, ``sequence``, ``dense``, ``ids``, ``embedding``); ``quality`` holds the
    user's choices. ``kind`` says what the model was loaded from (``sample``, ``onnx``,
    ``torchscript``, ``exported``, ``state_dict``, ``pickle``) and decides which transforms are possible.
    """

    name: str
    backend: Backend
    model: Any
    input_specs: tuple[InputSpec, ...]
    data: EvalData
    kind: str
    task: str = "classification"
    source: str | None = None
    compression: CompressionRecord | None = None
    fixed_batch: int | None = None  # a program's or file's static batch size, honoured by ``input_batches``
    quality: Quality = field(default_factory=Quality)
    output_axes: tuple[int, ...] = ()  # each output's batch axis (0 where not given): time-major outputs keep it at 1
    _ort_session: Any = field(default=None, repr=False, compare=False)

    def replace(self, **changes: Any) -> ModelHandle:
        """A new handle with some fields changed (the ONNX Runtime session is carried over unless the model changes)."""
        session = None if "model" in changes else self._ort_session
        return dataclasses.replace(self, _ort_session=session, **changes)

    @property
    def input_spec(self) -> InputSpec:
        """The first input's spec (the only one of a single-input model)."""
        return self.input_specs[0]

    @property
    def input_names(self) -> list[str]:
        return [spec.name for spec in self.input_specs]

    def as_inputs(self, inputs: Inputs | np.ndarray) -> Inputs:
        """``inputs`` as ``Inputs``: a bare array is the single input of a single-input model."""
        if isinstance(inputs, Inputs):
            return inputs
        if len(self.input_specs) != 1:
            raise ValueError(f"'{self.name}' takes {len(self.input_specs)} inputs; pass Inputs, not one array")
        return Inputs.single(inputs, self.input_spec.name)

    def batch_size_for(self, requested: int = RUN_BATCH) -> int:
        """The batch size to run with: ``fixed_batch`` for a model with a static batch, else ``requested``."""
        return self.fixed_batch or requested

    def padded(self, batch: Inputs) -> Inputs:
        """``batch`` filled up to ``fixed_batch`` samples by repeating its last sample, so that a
        static-batch model takes it; the outputs of the copies are to be dropped (they follow the real
        ones). Returned unchanged when the batch size is free or already full."""
        return batch.padded(self.fixed_batch or 0)

    def input_batches(self, inputs: Inputs | np.ndarray, batch_size: int = RUN_BATCH) -> list[Inputs]:
        """``inputs`` cut into the batches the model takes (``batch_size_for``, the last one ``padded``).

        Every caller that runs the model batches through this; the concatenated outputs hold the
        ``len(inputs)`` real rows first, then the padding's.
        """
        return in_batches(self.as_inputs(inputs), batch_size, self.fixed_batch)

    def run(self, inputs: Inputs | np.ndarray, batch_size: int = RUN_BATCH) -> np.ndarray:
        """Run the model on ``inputs`` in batches and return its ranked output (``quality.output``) as numpy."""
        return self.run_outputs(inputs, batch_size)[self.quality.output]

    def run_outputs(self, inputs: Inputs | np.ndarray, batch_size: int = RUN_BATCH) -> list[np.ndarray]:
        """Every output of the model on ``inputs``, run in batches, as numpy (float32, or integers kept)."""
        inputs = self.as_inputs(inputs)
        batches = [self._run_batch(batch) for batch in self.input_batches(inputs, batch_size)]
        return self.collect(batches, len(inputs))

    def collect(self, batches: list[list[np.ndarray]], samples: int) -> list[np.ndarray]:
        """Per-batch outputs (each batch: every output) joined per output, batch axis first, the
        padding's rows dropped: what ``run_outputs`` returns for ``samples`` samples."""
        return [
            np.moveaxis(np.concatenate(parts, axis=self.output_axis(index)), self.output_axis(index), 0)[:samples]
            for index, parts in enumerate(zip(*batches))
        ]

    def output_axis(self, index: int) -> int:
        """The batch axis of output ``index`` as the model returns it (0 unless found elsewhere at load)."""
        return self.output_axes[index] if index < len(self.output_axes) else 0

    def _run_batch(self, batch: Inputs) -> list[np.ndarray]:
        if self.backend == "onnx":
            return [np.asarray(value) for value in self.ort_session().run(None, batch.feed())]
        with torch.no_grad():
            return [tensor_to_numpy(tensor) for tensor in output_tensors(self.model(*batch.tensors()))]

    def call(self, module: Any, batch: Inputs) -> torch.Tensor:
        """The ranked output tensor of ``module`` (this handle's torch model or a working copy of it) on
        ``batch``, batch axis first."""
        index = self.quality.output
        return output_tensors(module(*batch.tensors()))[index].movedim(self.output_axis(index), 0)

    def ort_session(self) -> Any:
        """An ONNX Runtime session for an ONNX-backed handle, built once."""
        if self._ort_session is None:
            from compress_core.models.sessions import make_session

            self._ort_session = make_session(self.model, label=f"'{self.name}'")
        return self._ort_session


def output_tensors(output: object) -> list[torch.Tensor]:
    """Every tensor a model returned (a tensor, or nested tuples, lists and dicts of them), in order."""
    if isinstance(output, torch.Tensor):
        return [output]
    if isinstance(output, dict):
        output = list(output.values())
    if isinstance(output, (tuple, list)):
        return [tensor for item in output for tensor in output_tensors(item)]
    return []


def first_tensor(output: object) -> torch.Tensor:
    """The model's first output: the first leaf of nested tuples and lists, as ``ModelHandle.run`` takes it."""
    while isinstance(output, (tuple, list)):
        output = output[0]
    return output  # type: ignore[return-value]


def tensor_to_numpy(tensor: torch.Tensor) -> np.ndarray:
    """A detached output as numpy: floats as float32, integers and booleans kept."""
    tensor = tensor.detach()
    if tensor.is_floating_point():
        tensor = tensor.float()
    return tensor.numpy()


def as_numpy(outputs: list[torch.Tensor]) -> np.ndarray:
    """Batch outputs concatenated as numpy (floats as float32), as ``ModelHandle.run`` returns them."""
    return tensor_to_numpy(torch.cat([output.detach() for output in outputs]))
