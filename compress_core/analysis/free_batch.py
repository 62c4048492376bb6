"""A static-batch ONNX graph run at any batch size where the graph allows it, checked before it is used.

A file may declare a batch of 1 (``[1, 1, 64, width]``) while its graph computes every shape from its
input (``Shape``, ``Gather``, a ``Reshape`` to ``[0, 0, -1]``): such a graph runs 30 samples in one call,
faster than 30 calls of one (wider matrix products, and a weight fed as an input is read once per call,
not once per sample). Other graphs bake the batch in (a ``Reshape`` to ``[1, 6, -1]``) and, at another
batch, fail, give another shape, or mix the samples. So ``freed_batch`` frees the batch in a copy, and
``batch_mismatch`` says whether that copy, run on two samples at once, gives what it gives on each
alone: every output with its batch axis twice as long, the same values up to float rounding.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx

from compress_core.models.handle import ModelHandle
from compress_core.models.inputs import Inputs

BATCH_DIM = "batch"
RELATIVE_TOLERANCE = 1e-3
ABSOLUTE_TOLERANCE = 1e-4
"""Of the largest magnitude of the output: batched convolutions and products sum in another order."""


def freed_batch(model: onnx.ModelProto, handle: ModelHandle) -> onnx.ModelProto:
    """A copy of ``model`` (the handle's graph, or a copy of it with more inputs) whose batched inputs
    take any batch size: their batch dim named, the outputs' and intermediate values' shapes left to
    ONNX Runtime (they may state the old batch)."""
    freed = onnx.ModelProto()
    freed.CopyFrom(model)
    inputs = {value.name: value for value in freed.graph.input}
    for spec in handle.input_specs:
        value = inputs.get(spec.name)
        if spec.batch_axis is None or value is None or not value.type.tensor_type.HasField("shape"):
            continue
        dims = value.type.tensor_type.shape.dim
        if spec.batch_axis < len(dims):
            dims[spec.batch_axis].dim_param = BATCH_DIM  # clears dim_value (a oneof)
    for value in freed.graph.output:
        value.type.tensor_type.ClearField("shape")
    del freed.graph.value_info[:]
    return freed


def batch_mismatch(session: Any, handle: ModelHandle, inputs: Inputs) -> str | None:
    """None when ``session`` gives on the first two samples of ``inputs`` in one batch what it gives on
    each alone (every output: its batch axis, ``ModelHandle.output_axis``, twice as long; the values
    within float rounding, integers equal); else what differed."""
    try:
        alone = [session.run(None, inputs[[index]].feed()) for index in (0, 1)]
        together = session.run(None, inputs[[0, 1]].feed())
    except Exception as exc:  # noqa: BLE001 - ORT's errors carry no common type; any failure means "no"
        return f"a batch of 2 fails in ONNX Runtime ({type(exc).__name__})"
    for index, outputs in enumerate(zip(*alone, together)):
        first, second, both = (np.asarray(output) for output in outputs)
        axis = handle.output_axis(index)
        expected = np.concatenate([first, second], axis=axis) if first.ndim > axis else None
        if expected is None or expected.shape != both.shape:
            return f"output {index} has shape {tuple(both.shape)} for 2 samples, {tuple(first.shape)} for one"
        if not _close(expected, both):
            return f"output {index} differs between a batch of 2 and two batches of 1"
    return None


def _close(expected: np.ndarray, actual: np.ndarray) -> bool:
    if not np.issubdtype(expected.dtype, np.floating):
        return bool(np.array_equal(expected, actual))
    scale = float(np.abs(expected).max(initial=0.0)) or 1.0
    return bool(np.allclose(actual, expected, rtol=RELATIVE_TOLERANCE, atol=ABSOLUTE_TOLERANCE * scale))
