"""Reading ONNX graphs: loading with clear errors, constant weights, and the compressible nodes."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from compress_core.errors import CompressError, first_line
from compress_core.models.handle import InputSpec

COMPRESSIBLE_OPS = ("Conv", "Gemm", "MatMul")
ONNX_DTYPES: dict[int, str] = {onnx.TensorProto.FLOAT: "float32", onnx.TensorProto.INT64: "int64"}


@dataclass(frozen=True)
class WeightUse:
    """A compressible node and its constant weight.

    ``out_axis`` is the weight axis holding output channels: 0 for Conv and for Gemm with
    ``transB=1``, 1 for MatMul and Gemm with ``transB=0`` (their weights are [in, out]).
    ``source`` is ``"initializer"`` or ``"constant"`` (a ``Constant`` node's value).
    """

    node_name: str
    op_type: str
    weight_name: str
    out_axis: int
    source: str


def load_onnx(path: Path, given: InputSpec | None) -> tuple[onnx.ModelProto, InputSpec | None]:
    """Load and check an ONNX file (external data included) and read its single input's spec."""
    try:
        model = onnx.load(str(path), load_external_data=True)
        onnx.checker.check_model(model)
    except Exception as exc:
        first = first_line(exc, 300)
        raise CompressError(f"{path}: not a valid ONNX model ({first})") from exc
    name_unnamed_nodes(model)
    inputs = graph_inputs(model)
    if len(inputs) != 1:
        names = ", ".join(i.name for i in inputs)
        raise CompressError(
            f"{path}: the graph has {len(inputs)} inputs ({names}); only single-input models are supported"
        )
    tensor_type = inputs[0].type.tensor_type
    dtype = ONNX_DTYPES.get(tensor_type.elem_type)
    if dtype is None:
        raise CompressError(
            f"{path}: input '{inputs[0].name}' has element type {tensor_type.elem_type}; float32 or int64 is supported"
        )
    dims = [d.dim_value if d.HasField("dim_value") else None for d in tensor_type.shape.dim]
    if given is not None:
        return model, InputSpec(given.shape, dtype)
    sample_dims = [int(d) for d in dims[1:] if d is not None and d > 0]
    if len(dims) < 2 or len(sample_dims) < len(dims) - 1:
        return model, None
    return model, InputSpec(tuple(sample_dims), dtype)


def graph_inputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    """The real inputs: graph inputs that are not initializers (old exporters list weights as inputs)."""
    initializers = {init.name for init in model.graph.initializer}
    return [i for i in model.graph.input if i.name not in initializers]


def name_unnamed_nodes(model: onnx.ModelProto) -> None:
    """Give every node a unique name (``<OpType>_<index>``) so that layers can be addressed."""
    taken = {node.name for node in model.graph.node if node.name}
    for index, node in enumerate(model.graph.node):
        if not node.name:
            candidate = f"{node.op_type}_{index}"
            while candidate in taken:
                candidate += "_"
            node.name = candidate
            taken.add(candidate)


def constant_tensors(model: onnx.ModelProto) -> dict[str, tuple[np.ndarray, str]]:
    """Every constant tensor by name: initializers, ``Constant`` node values, and Identity of either."""
    found: dict[str, tuple[np.ndarray, str]] = {
        init.name: (numpy_helper.to_array(init), "initializer") for init in model.graph.initializer
    }
    for node in model.graph.node:
        if node.op_type == "Constant":
            for attribute in node.attribute:
                if attribute.name == "value":
                    found[node.output[0]] = (numpy_helper.to_array(attribute.t), "constant")
        elif node.op_type == "Identity" and node.input[0] in found:
            found[node.output[0]] = found[node.input[0]]
    return found


def compressible_nodes(model: onnx.ModelProto) -> list[WeightUse]:
    """Conv, Gemm and MatMul nodes whose second input is a constant float weight, in graph order."""
    constants = constant_tensors(model)
    uses = []
    for node in model.graph.node:
        if node.op_type not in COMPRESSIBLE_OPS or len(node.input) < 2 or node.input[1] not in constants:
            continue
        array, source = constants[node.input[1]]
        if array.dtype != np.float32 or array.ndim < 2:
            continue
        if node.op_type == "MatMul" and array.ndim != 2:
            continue
        uses.append(WeightUse(node.name, node.op_type, node.input[1], _out_axis(node), source))
    return uses


def _out_axis(node: onnx.NodeProto) -> int:
    if node.op_type == "Conv":
        return 0
    if node.op_type == "Gemm":
        trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
        return 0 if trans_b else 1
    return 1
