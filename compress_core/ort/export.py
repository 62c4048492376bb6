"""Torch model -> ONNX ``ModelProto`` with a dynamic batch axis (a static one for a ``torch.export``
program with a fixed batch), cleaned for quantization.

The legacy TorchScript-based exporter is tried first (fast, and it folds BatchNorm into Conv); the
dynamo exporter is the fallback. ``Identity`` nodes that forward constants are folded into
initializers: ONNX Runtime's quantizer leaves a Conv whose bias comes from an Identity unquantized.
"""

from __future__ import annotations

import io
import tempfile
import warnings
from pathlib import Path

import onnx
import torch

from compress_core.errors import CompressError, first_line
from compress_core.models.handle import ModelHandle
from compress_core.models.inputs import generated_inputs
from compress_core.models.onnx_graph import name_unnamed_nodes

OUTPUT_NAME = "output"
BatchAxes = dict[str, int | None]  # input name -> batch axis (None: unbatched, or a static batch)
OPSET = 17


def to_onnx(handle: ModelHandle, fold_batchnorm: bool = True) -> onnx.ModelProto:
    """The handle's model as ONNX (a copy for ONNX handles).

    ``fold_batchnorm=False`` keeps BatchNormalization nodes, so that parameter counts match the
    torch model's; the default folds them into the preceding Conv, as deployment wants. A program
    exported with a static batch (``handle.fixed_batch``) is exported at that batch size, which the
    ONNX model then keeps.
    """
    if handle.backend == "onnx":
        copy = onnx.ModelProto()
        copy.CopyFrom(handle.model)
        return copy
    example = tuple(generated_inputs(handle.input_specs, handle.batch_size_for(2)).tensors())
    batch_axes = {spec.name: (None if handle.fixed_batch else spec.batch_axis) for spec in handle.input_specs}
    errors = []
    for exporter in (_export_legacy, _export_dynamo):
        try:
            model = exporter(handle.model, example, fold_batchnorm, batch_axes)
        except Exception as exc:  # noqa: BLE001 - each exporter fails in its own way; the message names both
            errors.append(f"{exporter.__name__[8:]}: {first_line(exc, 200)}")
            continue
        fold_constant_identities(model)
        name_unnamed_nodes(model)
        return model
    raise CompressError(f"model '{handle.name}' could not be exported to ONNX ({'; '.join(errors)})")


def _export_legacy(
    module: torch.nn.Module, example: tuple[torch.Tensor, ...], fold_batchnorm: bool, batch_axes: BatchAxes
) -> onnx.ModelProto:
    dynamic_axes: dict[str, dict[int, str]] = {
        name: {axis: "batch"} for name, axis in batch_axes.items() if axis is not None
    }
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            example,
            buffer,  # type: ignore[arg-type]  # the TorchScript exporter takes a file object too; torch types f as a path
            dynamo=False,
            opset_version=OPSET,
            input_names=list(batch_axes),
            output_names=[OUTPUT_NAME],
            dynamic_axes={**dynamic_axes, OUTPUT_NAME: {0: "batch"}} if dynamic_axes else None,
            do_constant_folding=fold_batchnorm,
        )
    return onnx.load_from_string(buffer.getvalue())


def _export_dynamo(
    module: torch.nn.Module, example: tuple[torch.Tensor, ...], fold_batchnorm: bool, batch_axes: BatchAxes
) -> onnx.ModelProto:
    batch = torch.export.Dim("batch")
    dynamic_shapes = tuple(None if axis is None else {axis: batch} for axis in batch_axes.values())
    with tempfile.TemporaryDirectory() as folder, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        path = Path(folder) / "model.onnx"
        torch.onnx.export(
            module,
            example,
            str(path),
            dynamo=True,
            opset_version=18,
            input_names=list(batch_axes),
            output_names=[OUTPUT_NAME],
            dynamic_shapes=dynamic_shapes if any(axis is not None for axis in batch_axes.values()) else None,
            external_data=False,
        )
        return onnx.load(str(path))


def fold_constant_identities(model: onnx.ModelProto) -> None:
    """Replace ``Identity(initializer)`` nodes by initializers under the Identity's output name."""
    initializers = {init.name: init for init in model.graph.initializer}
    graph_outputs = {output.name for output in model.graph.output}
    kept = []
    for node in model.graph.node:
        if node.op_type == "Identity" and node.input[0] in initializers and node.output[0] not in graph_outputs:
            clone = onnx.TensorProto()
            clone.CopyFrom(initializers[node.input[0]])
            clone.name = node.output[0]
            model.graph.initializer.append(clone)
            initializers[clone.name] = clone
        else:
            kept.append(node)
    del model.graph.node[:]
    model.graph.node.extend(kept)
