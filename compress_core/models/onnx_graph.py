"""Reading ONNX graphs: loading with clear errors, constant weights, and the compressible nodes."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from compress_core.errors import CompressError, first_line
from compress_core.models.input_specs import DeclaredInput

COMPRESSIBLE_OPS = ("Conv", "Gemm", "MatMul")


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


def load_onnx(path: Path) -> tuple[onnx.ModelProto, list[DeclaredInput]]:
    """Load and check an ONNX file (external data included) and read what it declares about its inputs."""
    try:
        model = onnx.load(str(path), load_external_data=True)
        onnx.checker.check_model(model)
    except Exception as exc:
        first = first_line(exc, 300)
        raise CompressError(f"{path}: not a valid ONNX model ({first})") from exc
    name_unnamed_nodes(model)
    return model, declared_inputs(model)


def declared_inputs(model: onnx.ModelProto) -> list[DeclaredInput]:
    """Every real input's name, dtype and dims (named dims as their names, unknown ones None)."""
    tables = _gathered_table_rows(model)
    declared = []
    for value in graph_inputs(model):
        tensor_type = value.type.tensor_type
        try:
            dtype = str(onnx.helper.tensor_dtype_to_np_dtype(tensor_type.elem_type))
        except (KeyError, ValueError):
            dtype = onnx.TensorProto.DataType.Name(tensor_type.elem_type).lower()
        dims: tuple[int | str | None, ...] | None = None
        if tensor_type.HasField("shape"):
            dims = tuple(
                d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in tensor_type.shape.dim
            )
        declared.append(DeclaredInput(value.name, dtype, dims, tables.get(value.name)))
    return declared


def _gathered_table_rows(model: onnx.ModelProto) -> dict[str, int]:
    """Input name -> rows of the constant table a ``Gather`` indexes with it (token ids -> vocabulary size)."""
    constants = {init.name: tuple(init.dims) for init in model.graph.initializer}
    rows = {}
    for node in model.graph.node:
        if node.op_type == "Gather" and len(node.input) == 2 and node.input[0] in constants:
            axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
            shape = constants[node.input[0]]
            if axis == 0 and shape:
                rows[node.input[1]] = int(shape[0])
    return rows


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


def insert_before_first_reader(graph: onnx.GraphProto, new_nodes: list[onnx.NodeProto]) -> None:
    """Put each of ``new_nodes`` just before the first node of ``graph`` that reads its first output,
    keeping a topologically sorted graph sorted (the new nodes' own inputs must come before that)."""
    readers = {name: index for index, node in reversed(list(enumerate(graph.node))) for name in node.input}
    before: dict[int, list[onnx.NodeProto]] = {}
    for new in new_nodes:
        before.setdefault(readers[new.output[0]], []).append(new)
    ordered = [node for index, existing in enumerate(graph.node) for node in (*before.get(index, []), existing)]
    del graph.node[:]
    graph.node.extend(ordered)
