"""Pair each layer's tensors in the fp32 and the int8 (QDQ) model, and cut one layer out as a model.

ONNX Runtime's QDQ quantizer keeps the name of every compute node, and of most tensors: a layer's
node ``/conv2/Conv`` reads ``X_DequantizeLinear_Output`` (its input ``X`` through a QuantizeLinear
and a DequantizeLinear pair) and ``W_DequantizeLinear_Output`` (its integer weight, dequantized).
Where a Relu follows, the quantizer removes it and lets the output's QuantizeLinear clip instead:
the node then writes the Relu's output name, before clipping. So a layer's output is compared
after its QDQ pair (``int8_output``) with the fp32 tensor of the same name, and its float inputs
are the tensors its input QuantizeLinear nodes read, which the fp32 model computes under the same
names (as ORT's ``qdq_loss_debug`` pairs them).

``layer_model`` cuts the nodes that compute a layer's own output (``raw_output``, before its
output QuantizeLinear) from the tensors it is fed, so that the layer can be run alone on float
inputs: with its input QDQ pairs or without (fed after them), with its integer weights or with
the fp32 weights in their place.
"""

from __future__ import annotations

from dataclasses import dataclass

import onnx
from onnx import helper

from compress_core.ort.layer_map import LayerTarget

DQ_SUFFIX = "_DequantizeLinear_Output"


@dataclass(frozen=True)
class LayerPair:
    """One layer's tensors in both models.

    ``float_inputs`` are the activation tensors the layer reads, as the fp32 model names them (the
    inputs of its QuantizeLinear nodes in the int8 model); ``int8_inputs`` what its node reads in the
    int8 model (after the QDQ pair, or the same tensor where the input is not quantized).
    ``fp32_output`` is None where the fp32 model has no tensor to compare with.
    """

    layer: str
    node: str
    op_type: str
    quantized: bool
    float_inputs: tuple[str, ...]
    int8_inputs: tuple[str, ...]
    raw_output: str
    int8_output: str
    fp32_output: str | None

    @property
    def alone(self) -> bool:
        """Whether the layer can be run alone: every float input it needs is a tensor of the fp32 model."""
        return bool(self.float_inputs)


def tensor_names(model: onnx.ModelProto) -> set[str]:
    """Every tensor a run of ``model`` computes or is given: graph inputs and node outputs."""
    return {value.name for value in model.graph.input} | {out for node in model.graph.node for out in node.output}


def constant_tensors(model: onnx.ModelProto) -> set[str]:
    """Initializers and every tensor computed from them alone (a weight's DequantizeLinear output)."""
    constants = {init.name for init in model.graph.initializer}
    constants |= {out for node in model.graph.node if node.op_type == "Constant" for out in node.output}
    for node in model.graph.node:  # graph order is topological
        if node.input and all(name in constants or not name for name in node.input):
            constants.update(node.output)
    return constants


def pair_layers(fp32: onnx.ModelProto, int8: onnx.ModelProto, targets: dict[str, LayerTarget]) -> list[LayerPair]:
    """A ``LayerPair`` for every layer of ``targets`` whose node the int8 model still has, in graph order."""
    producers = {out: node for node in int8.graph.node for out in node.output}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in int8.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    constants = constant_tensors(int8)
    known = tensor_names(fp32)
    layer_of = {target.node: target.layer for target in targets.values()}
    pairs = []
    for node in int8.graph.node:
        layer = layer_of.get(node.name)
        if layer is None:
            continue
        activations = [name for name in node.input if name and name not in constants]
        sources = [_float_source(name, producers) for name in activations]
        weight = producers.get(node.input[1]) if len(node.input) > 1 else None
        raw = node.output[0]
        after = _after_qdq(raw, consumers)
        int8_output = after or raw
        fp32_output = raw if raw in known else (after if after in known else None)
        pairs.append(
            LayerPair(
                layer=layer,
                node=node.name,
                op_type=node.op_type,
                quantized=weight is not None and weight.op_type == "DequantizeLinear",
                float_inputs=tuple(sources) if all(name in known for name in sources) else (),
                int8_inputs=tuple(activations),
                raw_output=raw,
                int8_output=int8_output,
                fp32_output=fp32_output,
            )
        )
    return pairs


def _float_source(name: str, producers: dict[str, onnx.NodeProto]) -> str:
    """The float tensor behind ``name``: the input of the QuantizeLinear before its DequantizeLinear."""
    dequantize = producers.get(name)
    if dequantize is None or dequantize.op_type != "DequantizeLinear":
        return name
    quantize = producers.get(dequantize.input[0])
    return quantize.input[0] if quantize is not None and quantize.op_type == "QuantizeLinear" else name


def _after_qdq(name: str, consumers: dict[str, list[onnx.NodeProto]]) -> str | None:
    """The output of the QuantizeLinear -> DequantizeLinear pair that reads ``name``, if there is one."""
    for quantize in consumers.get(name, []):
        if quantize.op_type != "QuantizeLinear":
            continue
        for dequantize in consumers.get(quantize.output[0], []):
            if dequantize.op_type == "DequantizeLinear":
                return str(dequantize.output[0])
    return None


def layer_model(
    int8: onnx.ModelProto,
    pair: LayerPair,
    fp32_weights: dict[str, onnx.TensorProto],
    quantize_inputs: bool,
    quantize_weights: bool,
) -> onnx.ModelProto:
    """The nodes of ``int8`` that compute ``pair.raw_output`` from its inputs, as a model of its own.

    Its inputs are ``pair.float_inputs`` (so its input QDQ pairs run) with ``quantize_inputs``, else
    ``pair.int8_inputs`` (fed float, past the QDQ pairs). Without ``quantize_weights`` every weight's
    DequantizeLinear is replaced by the fp32 model's tensor (``fp32_weights``, initializers by name):
    the tensor of the output's name, or that name without ``_DequantizeLinear_Output``.
    """
    feeds = pair.float_inputs if quantize_inputs else pair.int8_inputs
    producers = {out: node for node in int8.graph.node for out in node.output}
    initializers = {init.name: init for init in int8.graph.initializer}
    wanted, stack, needed = set(), [pair.raw_output], set(feeds)
    while stack:
        name = stack.pop()
        if name in needed or name in initializers or not name:
            continue
        needed.add(name)
        node = producers.get(name)
        if node is None:
            continue
        wanted.add(id(node))
        stack.extend(node.input)
    nodes, replaced = [], []
    for node in int8.graph.node:
        if id(node) not in wanted:
            continue
        if not quantize_weights and node.op_type == "DequantizeLinear" and node.input[0] in initializers:
            original = fp32_weights.get(node.output[0]) or fp32_weights.get(node.output[0].removesuffix(DQ_SUFFIX))
            if original is not None:
                replaced.append(_renamed(original, node.output[0]))
                continue
        nodes.append(node)
    read = {name for node in nodes for name in node.input}
    graph = helper.make_graph(
        nodes,
        f"{pair.layer} alone",
        [helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None) for name in dict.fromkeys(feeds)],
        [helper.make_tensor_value_info(pair.raw_output, onnx.TensorProto.FLOAT, None)],
        [init for name, init in initializers.items() if name in read] + replaced,
    )
    return helper.make_model(graph, opset_imports=list(int8.opset_import), ir_version=int8.ir_version)


def weights_restored(
    int8: onnx.ModelProto, pair: LayerPair, fp32_weights: dict[str, onnx.TensorProto]
) -> onnx.ModelProto | None:
    """``int8`` with this one layer reading the fp32 weights (under ``debug::<layer>::``) in place of
    its integer ones: everything else stays as the int8 model computes it. None where the layer has
    no dequantized weight with an fp32 counterpart.
    """
    producers = {out: node for node in int8.graph.node for out in node.output}
    initializers = {init.name for init in int8.graph.initializer}
    model = onnx.ModelProto()
    model.CopyFrom(int8)
    node = next((node for node in model.graph.node if node.name == pair.node), None)
    if node is None:
        return None
    restored = 0
    for index, name in enumerate(node.input):
        source = producers.get(name)
        if source is None or source.op_type != "DequantizeLinear" or source.input[0] not in initializers:
            continue
        original = fp32_weights.get(name) or fp32_weights.get(name.removesuffix(DQ_SUFFIX))
        if original is None:
            continue
        model.graph.initializer.append(_renamed(original, f"debug::{pair.layer}::{original.name}"))
        node.input[index] = f"debug::{pair.layer}::{original.name}"
        restored += 1
    return model if restored else None


def injected_model(fp32: onnx.ModelProto, int8: onnx.ModelProto, pair: LayerPair) -> onnx.ModelProto | None:
    """``fp32`` with this one layer as the int8 model computes it (``layer_model`` with its input QDQ
    pairs and integer weights) in place of its float node: the layer's own error, carried through
    the float rest of the model to its outputs. None where the fp32 model has no node of that name
    or the layer cannot be run alone.

    The cut's own tensors are renamed under ``debug::<layer>::`` (its bias DequantizeLinear writes
    the fp32 bias's name); its output takes the name of the float node's output.
    """
    index = next((i for i, node in enumerate(fp32.graph.node) if node.name == pair.node), None)
    if index is None or not pair.alone:
        return None
    cut = layer_model(int8, pair, {}, True, True)
    prefix = f"debug::{pair.layer}::"
    rename = {init.name: prefix + init.name for init in cut.graph.initializer}
    rename.update({out: prefix + out for node in cut.graph.node for out in node.output})
    rename[pair.raw_output] = fp32.graph.node[index].output[0]
    nodes = []
    for node in cut.graph.node:
        copy = onnx.NodeProto()
        copy.CopyFrom(node)
        copy.input[:] = [rename.get(name, name) for name in node.input]
        copy.output[:] = [rename.get(name, name) for name in node.output]
        copy.name = prefix + node.name
        nodes.append(copy)
    model = onnx.ModelProto()
    model.CopyFrom(fp32)
    del model.graph.node[:]
    model.graph.node.extend([*fp32.graph.node[:index], *nodes, *fp32.graph.node[index + 1 :]])
    model.graph.initializer.extend(_renamed(init, rename[init.name]) for init in cut.graph.initializer)
    versions = {entry.domain: entry.version for entry in fp32.opset_import}
    for entry in int8.opset_import:
        versions[entry.domain] = max(versions.get(entry.domain, 0), entry.version)
    del model.opset_import[:]
    model.opset_import.extend(helper.make_opsetid(domain, version) for domain, version in versions.items())
    model.ir_version = max(fp32.ir_version, int8.ir_version)
    return model


def _renamed(tensor: onnx.TensorProto, name: str) -> onnx.TensorProto:
    copy = onnx.TensorProto()
    copy.CopyFrom(tensor)
    copy.name = name
    return copy


def exposed(model: onnx.ModelProto, names: list[str]) -> onnx.ModelProto:
    """A copy of ``model`` whose outputs are its own followed by ``names`` (intermediate tensors)."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    present = {value.name for value in copy.graph.output}
    for name in dict.fromkeys(names):
        if name not in present:
            copy.graph.output.append(onnx.ValueInfoProto(name=name))
    return copy
