"""Input smoothing of MatMul / Gemm layers before int8 quantization (SmoothQuant, Xiao et al., 2022).

Per-tensor activation quantization (ONNX Runtime's dynamic quantization, and static QDQ) gives every
input channel of a layer one grid. When a few channels carry values ten or twenty times larger than
the rest (a transformer's feed-forward output projection reads such a GELU output), that grid is
coarse for all the others. Smoothing divides input channel ``k`` by a factor ``s_k`` and multiplies
row ``k`` of the weight by the same factor: ``(x / s) @ (s * W) == x @ W``, so the float model is
unchanged, while the activation's channels come closer to one range and the weight, quantized per
output channel, takes on part of the spread.

``s_k = amax_k ** alpha / wmax_k ** (1 - alpha)``, with ``amax_k`` the largest ``|x_k|`` seen on the
calibration data, ``wmax_k`` the largest ``|W_k,:|`` and ``alpha`` the plan's migration strength
(``LayerConfig.smooth``), rounded to the nearest power of two. Multiplying by a power of two is exact
in float, so the smoothed weights and inputs hold the original values exactly, and a last-bit
difference in the CPU's math library no longer reaches the file (a float32 ``**`` differed in the last
bit between an AVX-512 and an AVX2 machine, and the exported file with it); only a factor within an ulp
of a half-way exponent could still round differently. Layers reading the same tensor with the same strength
share one factor (taken over all their weights) and one ``Mul``, so that ONNX Runtime still quantizes that input once.
The ``Mul`` is the cost: one elementwise pass over the layer's input.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper

from compress_core.errors import CompressError
from compress_core.models.onnx_graph import insert_before_first_reader
from compress_core.models.sessions import make_session

SMOOTHED_OPS = ("MatMul", "Gemm")
SCALE_FLOOR = 1e-5  # a channel that never fires (or an all-zero weight row) keeps its scale 1
UNEVEN_SPREAD = 10.0  # an input whose largest channel maximum is this many times the median one is worth smoothing


@dataclass(frozen=True)
class SmoothedLayer:
    """One smoothed layer: its node, strength, and how uneven its input channels were before and after
    (the largest channel maximum over the median one)."""

    layer: str
    node: str
    strength: float
    spread_before: float
    spread_after: float

    def describe(self) -> str:
        """One sentence for the report."""
        return (
            f"{self.layer}: input smoothed (strength {self.strength:g}); its channels' largest / median "
            f"maximum went from {self.spread_before:.1f} to {self.spread_after:.1f}, and ONNX Runtime "
            "stores the rescaled weight on its own int8 grid"
        )


def smooth_inputs(
    model: onnx.ModelProto,
    strengths: dict[str, float],
    layer_of_node: dict[str, str],
    ranges: dict[str, np.ndarray],
) -> tuple[onnx.ModelProto, list[SmoothedLayer]]:
    """A copy of ``model`` in which the nodes of ``strengths`` (node name -> migration strength) read a
    smoothed input, with their weights rescaled to match, and one ``SmoothedLayer`` per node.

    ``ranges`` are the nodes' input ranges on the calibration data (``input_ranges``); ``layer_of_node``
    names the layers in messages. Raises ``CompressError`` for a node that is not a MatMul / Gemm with a
    float weight of its own.
    """
    model = _copy(model)
    nodes = {node.name: node for node in model.graph.node}
    initializers = {init.name: init for init in model.graph.initializer}
    uses: dict[str, int] = {}
    for node in model.graph.node:
        for name in node.input:
            uses[name] = uses.get(name, 0) + 1
    weights = {name: _own_weight(nodes[name], initializers, uses, layer_of_node.get(name, name)) for name in strengths}
    groups: dict[tuple[str, float], list[str]] = {}
    for name, strength in strengths.items():
        groups.setdefault((nodes[name].input[0], float(strength)), []).append(name)
    smoothed: list[SmoothedLayer] = []
    new_nodes: list[onnx.NodeProto] = []
    for (source, strength), members in groups.items():
        amax = ranges[members[0]]  # the members read one tensor
        wmax = np.max([np.abs(_rows(weights[name], nodes[name])).max(axis=1) for name in members], axis=0)
        if wmax.shape != amax.shape:
            raise CompressError(
                f"layer '{layer_of_node.get(members[0], members[0])}': its input has {amax.size} channels but its "
                f"weight {wmax.size} rows; smoothing needs the weight's rows to match the input's last axis"
            )
        scale = _power_of_two(
            np.where(
                (amax > SCALE_FLOOR) & (wmax > SCALE_FLOOR),
                np.maximum(amax, SCALE_FLOOR).astype(np.float64) ** strength
                / np.maximum(wmax, SCALE_FLOOR).astype(np.float64) ** (1 - strength),
                1.0,
            )
        )
        smoothed_input = f"{source}_smoothed_{len(new_nodes)}"
        inverse = numpy_helper.from_array((1.0 / scale).astype(np.float32), f"{smoothed_input}_inverse_scale")
        model.graph.initializer.append(inverse)
        new_nodes.append(helper.make_node("Mul", [source, inverse.name], [smoothed_input], name=smoothed_input))
        for name in members:
            node = nodes[name]
            weight = weights[name]
            rescaled = _rows(weight, node) * scale[:, None]
            initializers[node.input[1]].CopyFrom(
                numpy_helper.from_array(_rows(rescaled, node).astype(weight.dtype), node.input[1])
            )
            node.input[0] = smoothed_input
            smoothed.append(
                SmoothedLayer(layer_of_node.get(name, name), name, strength, _spread(amax), _spread(amax / scale))
            )
    insert_before_first_reader(model.graph, new_nodes)
    return model, smoothed


def uneven_inputs(layer_of_node: dict[str, str], ranges: dict[str, np.ndarray]) -> list[tuple[str, float]]:
    """The layers of ``layer_of_node`` (node name -> layer) whose input channels are uneven enough to be
    worth smoothing: the largest channel maximum over the median one (``ranges``: ``input_ranges``),
    above ``UNEVEN_SPREAD``; most uneven first."""
    spreads = [(layer, _spread(ranges[name])) for name, layer in layer_of_node.items() if name in ranges]
    return sorted(((layer, spread) for layer, spread in spreads if spread > UNEVEN_SPREAD), key=lambda row: -row[1])


def _rows(weight: np.ndarray, node: onnx.NodeProto) -> np.ndarray:
    """The weight with one row per input channel: a MatMul's ``[K, N]`` as it is, a Gemm's with
    ``transB`` transposed (and back: the transpose is its own inverse)."""
    return weight.T if node.op_type == "Gemm" and _attribute(node, "transB") else weight


def _own_weight(
    node: onnx.NodeProto, initializers: dict[str, onnx.TensorProto], uses: dict[str, int], layer: str
) -> np.ndarray:
    if node.op_type not in SMOOTHED_OPS:
        raise CompressError(
            f"layer '{layer}': smooth applies to MatMul and Gemm layers, and this one is a {node.op_type}; "
            "remove smooth from its plan entry"
        )
    if node.op_type == "Gemm" and _attribute(node, "transA"):
        raise CompressError(f"layer '{layer}': smooth cannot rescale a Gemm with transA set; remove smooth from it")
    init = initializers.get(node.input[1]) if len(node.input) > 1 else None
    if init is None or init.data_type != onnx.TensorProto.FLOAT or len(init.dims) != 2:
        raise CompressError(
            f"layer '{layer}': smooth needs a 2-D float weight stored in the file; remove smooth from it"
        )
    if uses.get(init.name, 0) > 1:
        raise CompressError(
            f"layer '{layer}': its weight '{init.name}' is shared with other nodes, which rescaling it would "
            "change; remove smooth from it"
        )
    return numpy_helper.to_array(init)


def input_ranges(
    model: onnx.ModelProto, node_names: Iterable[str], batches: Iterable[dict[str, np.ndarray]]
) -> dict[str, np.ndarray]:
    """Node name -> the largest ``|value|`` of each channel (last axis) of the node's first input, over
    ``batches`` (one pass: nodes reading one tensor share its measurement)."""
    first_input = {node.name: node.input[0] for node in model.graph.node if node.input}
    of_node = {name: first_input[name] for name in node_names if name in first_input}
    sources = sorted(set(of_node.values()))
    if not sources:
        return {}
    probe = _copy(model)
    listed = {output.name for output in probe.graph.output}
    for name in sources:
        if name not in listed:
            probe.graph.output.append(helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    session = make_session(probe, label="the smoothing probe")
    ranges: dict[str, np.ndarray] = {}
    for feed in batches:
        values = session.run(sources, feed)
        for name, value in zip(sources, values, strict=True):
            channels = np.abs(np.asarray(value, dtype=np.float32)).reshape(-1, value.shape[-1]).max(axis=0)
            ranges[name] = channels if name not in ranges else np.maximum(ranges[name], channels)
    if len(ranges) != len(sources):
        raise CompressError("smoothing needs calibration data: the model's evaluation data is empty")
    return {name: ranges[source] for name, source in of_node.items()}


def _power_of_two(factors: np.ndarray) -> np.ndarray:
    """``factors`` rounded to the nearest power of two (in log scale), as float32."""
    return np.exp2(np.round(np.log2(factors))).astype(np.float32)


def _spread(channels: np.ndarray) -> float:
    median = float(np.median(channels))
    return float(channels.max()) / median if median > 0 else float("inf")


def _attribute(node: onnx.NodeProto, name: str) -> int:
    return next((int(helper.get_attribute_value(a)) for a in node.attribute if a.name == name), 0)


def _copy(model: onnx.ModelProto) -> onnx.ModelProto:
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    return copy
