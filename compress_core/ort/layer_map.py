"""The map from our layer names (torch module / parameter names) to ONNX node and weight-tensor names.

ONNX Runtime's quantizer speaks node and tensor names; a plan speaks layer names. For a torch handle
the model is exported with ``to_onnx`` and each layer's weight is matched to the node that consumes
it through the node's name scope: the legacy exporter names a node ``/layer1/layer1.0/conv1/Conv``
after the module that emitted it. BatchNorm folding renames the folded weights (``onnx::Conv_39``),
so the weight tensor is read from the matched node, never guessed from the parameter name; the shape
of that tensor is checked against the layer's weight. Exports that keep parameter names as
initializer names (the dynamo exporter, or no constant folding) are matched by name as a fallback.
For an ONNX handle the layer names already are node names. An embedding layer (``nn.Embedding``)
maps to its ``Gather`` node, whose weight tensor is the table (the Gather's first input, not its
second as for Conv / Gemm / MatMul).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import onnx

from compress_core.models.handle import ModelHandle
from compress_core.models.inventory import LayerInfo, embedding_nodes, layer_inventory, torch_layer_names
from compress_core.models.onnx_graph import compressible_nodes, constant_tensors

RNN_OPS = ("LSTM", "GRU", "RNN")
RNN_WEIGHT = re.compile(r"^weight_(ih|hh)_l(\d+)(_reverse)?$")


@dataclass(frozen=True)
class LayerTarget:
    """Where one layer lives in an ONNX graph.

    ``weight_param`` is the torch parameter (or ONNX initializer) the layer's weight comes from;
    ``weight_tensor`` the constant the ONNX node reads, which ``TensorQuantOverrides`` is keyed by.
    """

    layer: str
    weight_param: str
    node: str
    op_type: str
    weight_tensor: str


def layer_targets(
    handle: ModelHandle, model: onnx.ModelProto, layers: list[LayerInfo] | None = None
) -> dict[str, LayerTarget]:
    """Each compressible layer of ``handle`` mapped to its node in ``model`` (the handle's ONNX export).

    A layer missing from the result has no node in the export: its output is unused (the exporter
    drops dead code, e.g. a pooler a sentence embedding ignores) or it was computed away.
    """
    layers = layers if layers is not None else layer_inventory(handle)
    if handle.backend == "onnx":
        nodes = {node.name: node for node in model.graph.node}
        return {
            layer.name: LayerTarget(
                layer.name, layer.weight_name, layer.name, nodes[layer.name].op_type, layer.weight_name
            )
            for layer in layers
            if layer.name in nodes
        }
    weighted = _weighted_nodes(model)
    by_scope: dict[str, list[onnx.NodeProto]] = {}
    for node in weighted:
        by_scope.setdefault(module_scope(node.name), []).append(node)
    consumers = {
        node.input[index]: node for node in weighted for index in _weight_inputs(node) if len(node.input) > index
    }
    shapes = {name: tuple(array.shape) for name, (array, _) in constant_tensors(model).items()}
    targets: dict[str, LayerTarget] = {}
    for layer in layers:
        target = _match_scope(layer, by_scope, shapes) or _match_name(layer, consumers)
        if target is not None:
            targets[layer.name] = target
    return targets


def module_scope(node_name: str) -> str:
    """The module name a legacy-exported node belongs to: ``/layer1/layer1.0/conv1/Conv`` -> ``layer1.0.conv1``.

    Scope components are either a child's attribute name (``attn``) or its dotted name relative to an
    enclosing container (``layer1.0`` under ``layer1``, ``downsample.0`` under ``downsample``).
    """
    if not node_name.startswith("/"):
        return ""
    qualified = ""
    for component in node_name.strip("/").split("/")[:-1]:
        last = qualified.rsplit(".", 1)[-1]
        if not qualified:
            qualified = component
        elif component.startswith(qualified + "."):
            qualified = component
        elif component.startswith(last + "."):
            qualified = qualified[: len(qualified) - len(last)] + component
        else:
            qualified = f"{qualified}.{component}"
    return qualified


def _weighted_nodes(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    """Conv / Gemm / MatMul nodes with a constant weight, embedding lookups (``Gather`` on a constant
    table) and recurrent nodes, in graph order."""
    names = {use.node_name for use in [*compressible_nodes(model), *embedding_nodes(model)]}
    return [node for node in model.graph.node if node.name in names or node.op_type in RNN_OPS]


def _weight_inputs(node: onnx.NodeProto) -> tuple[int, ...]:
    """The input positions that may hold the node's weight: the table of a Gather, else the second (and a
    recurrent node's third)."""
    return (0,) if node.op_type == "Gather" else (1, 2)


def _match_scope(
    layer: LayerInfo, by_scope: dict[str, list[onnx.NodeProto]], shapes: dict[str, tuple[int, ...]]
) -> LayerTarget | None:
    _, module = torch_layer_names(layer.weight_name)
    candidates = by_scope.get(module, [])
    rnn = RNN_WEIGHT.match(layer.weight_name.rsplit(".", 1)[-1])
    if rnn:
        recurrent = [node for node in candidates if node.op_type in RNN_OPS]
        index = int(rnn.group(2))
        if index >= len(recurrent):
            return None
        node = recurrent[index]
        tensor = node.input[1 if rnn.group(1) == "ih" else 2]
        return LayerTarget(layer.name, layer.weight_name, node.name, node.op_type, tensor)
    for node in candidates:
        tensor = node.input[_weight_inputs(node)[0]]
        if node.op_type not in RNN_OPS and _same_weight_shape(shapes.get(tensor), layer.weight_shape):
            return LayerTarget(layer.name, layer.weight_name, node.name, node.op_type, tensor)
    return None


def _match_name(layer: LayerInfo, consumers: dict[str, onnx.NodeProto]) -> LayerTarget | None:
    node = consumers.get(layer.weight_name)
    if node is None:
        return None
    return LayerTarget(layer.name, layer.weight_name, node.name, node.op_type, layer.weight_name)


def _same_weight_shape(onnx_shape: tuple[int, ...] | None, torch_shape: tuple[int, ...]) -> bool:
    """True when the tensor is the layer's weight as exported: same shape, or transposed for MatMul/Gemm."""
    if onnx_shape is None:
        return False
    return onnx_shape == tuple(torch_shape) or (len(torch_shape) == 2 and onnx_shape == tuple(reversed(torch_shape)))
