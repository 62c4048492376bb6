"""Pad a convolution's input channels with zeros so that ONNX Runtime's fast int8 conv kernels take it.

On x86, ORT runs a static int8 ``Conv`` (``QLinearConv``, symmetric int8 weights) through MLAS's
symmetric conv kernels only where the input channels are a multiple of 4 and the output channels
are at least 16 and a multiple of 8 (4 with AVX-512). Other convolutions, such as a first layer
that reads one grey or three colour channels, take a slower path: an im2col copy a channel at a
time, and one parallel section per image of the batch. ``digits_resnet``'s stem (1 input channel, 32
outputs), in ORT's profile at batch 32 on 2 threads (AVX-512 VNNI): 0.72 ms as it is, 0.36 ms padded.

Without VNNI the padding also removes a saturation. ORT's AVX2 U8S8 kernels add pairs of u8 x s8
products in 16 bits, and a one-channel conv's pairs are two neighbouring pixels: on ``digits_resnet``
its stem's output moved by 36%. Padded, each pair is a pixel and a zero channel, and cannot overflow.

Padding changes nothing in the result: the added channels are zeros, read by zero weights, and zero
is exact on every int8 grid (the input's zero point, the weights' 0). ``pad_input_channels`` pads
each chosen ``Conv``'s input with a ``Pad`` node (one per input tensor, shared by the convolutions
that read it) and its weight initializer with zero channels, under the same name, before
quantization; ``pad_in_integers`` then moves the Pad of the quantized file onto the integers.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper

from compress_core.models.onnx_graph import insert_before_first_reader

CHANNEL_MULTIPLE = 4  # input channels of MLAS's x86 symmetric int8 conv kernels
MIN_OUTPUT_CHANNELS = 16
OUTPUT_MULTIPLE = 8  # AVX2 and AVX-VNNI (AVX-512 takes 4): the stricter, so that any x86 CPU gains
PADDED_SUFFIX = "_channels_padded"


@dataclass(frozen=True)
class PaddedConv:
    """One convolution whose input channels were padded: ``layer``, its ``node``, channels before and after."""

    layer: str
    node: str
    channels: int
    padded: int

    def describe(self) -> str:
        """A sentence for the export's notes."""
        return (
            f"{self.layer}: input channels padded with zeros from {self.channels} to {self.padded}, so that "
            f"ONNX Runtime's symmetric int8 conv kernels take it (they need a multiple of {CHANNEL_MULTIPLE}); "
            "the result is unchanged"
        )


def paddable_convs(model: onnx.ModelProto, nodes: dict[str, str]) -> dict[str, int]:
    """The layers of ``nodes`` (layer -> node name) whose node is a one-group 2-D ``Conv`` with an
    initializer weight, input channels not a multiple of 4, and output channels the fast kernels take;
    each with its input channel count."""
    weights = {init.name: init for init in model.graph.initializer}
    by_name = {node.name: node for node in model.graph.node}
    found = {}
    for layer, name in nodes.items():
        node = by_name.get(name)
        if node is None or node.op_type != "Conv" or len(node.input) < 2 or node.input[1] not in weights:
            continue
        group = next((helper.get_attribute_value(a) for a in node.attribute if a.name == "group"), 1)
        dims = list(weights[node.input[1]].dims)
        if group != 1 or len(dims) != 4:
            continue
        outputs, channels = dims[0], dims[1]
        if channels % CHANNEL_MULTIPLE and outputs >= MIN_OUTPUT_CHANNELS and outputs % OUTPUT_MULTIPLE == 0:
            found[layer] = channels
    return found


def pad_input_channels(model: onnx.ModelProto, nodes: dict[str, str]) -> tuple[onnx.ModelProto, list[PaddedConv]]:
    """A copy of ``model`` where each ``paddable_convs`` layer of ``nodes`` reads its input padded
    with zero channels to the next multiple of 4, and holds zero weights for them; and what was padded.

    The weight keeps its initializer name (a layer map or a weight override still finds it); the
    padded input is a new tensor, ``<input>_channels_padded``.
    """
    chosen = paddable_convs(model, nodes)
    padded_model = onnx.ModelProto()
    padded_model.CopyFrom(model)
    if not chosen:
        return padded_model, []
    graph = padded_model.graph
    weights = {init.name: init for init in graph.initializer}
    by_name = {node.name: node for node in graph.node}
    pads: dict[str, onnx.NodeProto] = {}  # input tensor -> the Pad node that widens it
    report = []
    for layer, channels in chosen.items():
        node = by_name[nodes[layer]]
        width = -(-channels // CHANNEL_MULTIPLE) * CHANNEL_MULTIPLE
        source = node.input[0]
        padded_name = f"{source}{PADDED_SUFFIX}{width}"
        if padded_name not in pads:
            amounts = f"{padded_name}_pads"
            graph.initializer.append(
                numpy_helper.from_array(np.array([0, 0, 0, 0, 0, width - channels, 0, 0], np.int64), amounts)
            )
            pads[padded_name] = helper.make_node(
                "Pad", [source, amounts], [padded_name], name=f"{padded_name}_Pad", mode="constant"
            )
        node.input[0] = padded_name
        weight = weights[node.input[1]]
        values = numpy_helper.to_array(weight)
        wide = np.zeros((values.shape[0], width, *values.shape[2:]), dtype=values.dtype)
        wide[:, :channels] = values
        weight.CopyFrom(numpy_helper.from_array(wide, weight.name))
        report.append(PaddedConv(layer, node.name, channels, width))
    insert_before_first_reader(graph, list(pads.values()))
    return padded_model, report


def pad_in_integers(model: onnx.ModelProto) -> int:
    """In a quantized ``model`` (QDQ, in place): fold each ``DequantizeLinear -> Pad -> QuantizeLinear``
    around a ``pad_input_channels`` Pad into one ``Pad`` of the integers, with the zero point as its
    value; the number folded.

    Only where both sides share one scale and zero point (ORT's calibration gives the padded tensor the
    range of its source: the zeros added are inside it) and the Pad adds zeros. The integers come out
    the same, bit for bit: ``q -> (q - zp) * s -> round(./s) + zp`` is ``q``, and a zero quantizes to
    ``zp``. ONNX Runtime then pads a quarter of the bytes (uint8, not float32), and no longer runs the
    float Pad, the DequantizeLinear before it and the QuantizeLinear after it.
    """
    graph = model.graph
    producer = {output: node for node in graph.node for output in node.output}
    readers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    values = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    outputs = {output.name for output in graph.output}
    folded = 0
    for pad in [node for node in graph.node if node.op_type == "Pad" and PADDED_SUFFIX in node.output[0]]:
        dequantize = producer.get(pad.input[0])
        after = readers.get(pad.output[0], [])
        mode = next((helper.get_attribute_value(a) for a in pad.attribute if a.name == "mode"), b"constant")
        if dequantize is None or dequantize.op_type != "DequantizeLinear" or len(after) != 1 or mode != b"constant":
            continue
        quantize = after[0]
        if (
            quantize.op_type != "QuantizeLinear"
            or len(dequantize.input) < 3
            or len(quantize.input) < 3
            or values.get(dequantize.input[2], np.zeros(2)).size != 1  # one zero point: Pad's one value
            or not _same_values(values, dequantize.input[1:3], quantize.input[1:3])
            or (len(pad.input) > 2 and pad.input[2] and np.any(values.get(pad.input[2], 1) != 0))
        ):
            continue
        del pad.input[2:]
        pad.input[0] = dequantize.input[0]
        pad.input.append(dequantize.input[2])  # pad with the zero point: the integer of 0.0
        pad.output[0] = quantize.output[0]
        graph.node.remove(quantize)
        if len(readers[dequantize.output[0]]) == 1 and dequantize.output[0] not in outputs:
            graph.node.remove(dequantize)
        folded += 1
    return folded


def _same_values(values: dict[str, np.ndarray], left: Iterable[str], right: Iterable[str]) -> bool:
    """Whether the initializers named in ``left`` and ``right`` hold the same values, pairwise."""
    return all(
        a in values and b in values and values[a].dtype == values[b].dtype and np.array_equal(values[a], values[b])
        for a, b in zip(left, right, strict=True)
    )


def pad_in_floats(model: onnx.ModelProto) -> int:
    """The inverse of ``pad_in_integers`` (in place): each integer ``Pad`` it made becomes
    ``DequantizeLinear -> Pad -> QuantizeLinear`` again, the float Pad writing its padded tensor's name
    (``<input>_channels_padded<N>``, as the fp32 model padded by ``pad_input_channels`` computes it);
    the number restored. The debugger pairs a layer's float input with the int8 model's through such a
    QuantizeLinear; the results are the same integers either way.
    """
    graph = model.graph
    producer = {output: node for node in graph.node for output in node.output}
    restored = 0
    for pad in [node for node in graph.node if node.op_type == "Pad" and PADDED_SUFFIX in node.name]:
        quantize = producer.get(pad.input[0])
        if quantize is None or quantize.op_type != "QuantizeLinear" or len(pad.input) < 3 or len(quantize.input) < 3:
            continue
        if pad.input[2] != quantize.input[2]:
            continue
        scale, zero_point = quantize.input[1], quantize.input[2]
        padded = pad.name.removesuffix("_Pad")
        integers = pad.output[0]
        source = f"{padded}_source"
        dequantize = helper.make_node(
            "DequantizeLinear", [pad.input[0], scale, zero_point], [source], name=f"{source}_DequantizeLinear"
        )
        requantize = helper.make_node(
            "QuantizeLinear", [padded, scale, zero_point], [integers], name=f"{padded}_QuantizeLinear"
        )
        del pad.input[2:]
        pad.input[0] = source
        pad.output[0] = padded
        index = list(graph.node).index(pad)
        graph.node.insert(index + 1, requantize)
        graph.node.insert(index, dequantize)
        restored += 1
    return restored
