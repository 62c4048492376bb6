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
from compress_core.models.onnx_graph import name_unnamed_nodes

INPUT_NAME = "input"
OUTPUT_NAME = "output"
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
    example = torch.from_numpy(handle.input_spec.example(batch=handle.batch_size_for(2)))
    dynamic = handle.fixed_batch is None
    errors = []
    for exporter in (_export_legacy, _export_dynamo):
        try:
            model = exporter(handle.model, example, fold_batchnorm, dynamic)
        except Exception as exc:  # noqa: BLE001 - each exporter fails in its own way; the message names both
            errors.append(f"{exporter.__name__[8:]}: {first_line(exc, 200)}")
            continue
        fold_constant_identities(model)
        name_unnamed_nodes(model)
        return model
    raise CompressError(f"model '{handle.name}' could not be exported to ONNX ({'; '.join(errors)})")


def _export_legacy(
    module: torch.nn.Module, example: torch.Tensor, fold_batchnorm: bool, dynamic: bool
) -> onnx.ModelProto:
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            (example,),
            buffer,  # type: ignore[arg-type]  # the TorchScript exporter takes a file object too; torch types f as a path
            dynamo=False,
            opset_version=OPSET,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}} if dynamic else None,
            do_constant_folding=fold_batchnorm,
        )
    return onnx.load_from_string(buffer.getvalue())


def _export_dynamo(
    module: torch.nn.Module, example: torch.Tensor, fold_batchnorm: bool, dynamic: bool
) -> onnx.ModelProto:
    with tempfile.TemporaryDirectory() as folder, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        path = Path(folder) / "model.onnx"
        torch.onnx.export(
            module,
            (example,),
            str(path),
            dynamo=True,
            opset_version=18,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_shapes=({0: torch.export.Dim("batch")},) if dynamic else None,
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
