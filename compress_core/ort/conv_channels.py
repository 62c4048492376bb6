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
that read it) and its weight initializer with zero channels, under the same name.
"""

from __future__ import annotations

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
