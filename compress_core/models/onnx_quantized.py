"""Layers an ONNX graph already holds as integers, recognised with their precision and their weights
dequantized (``(q - zero_point) * scale``) for statistics.

Recognised layers, each a node with an integer weight:

- ``ConvInteger`` and ``MatMulInteger`` (ONNX Runtime's dynamic quantization; the weight's scale is
  the ``<weight>_scale`` constant next to ``<weight>_quantized``, or the constant the activation's
  scale is multiplied by);
- ``QLinearConv``, ``QLinearMatMul``, and ONNX Runtime's ``QGemm``, ``DynamicQuantizeMatMul`` and
  ``MatMulIntegerToFloat``;
- ``MatMulNBits`` (2, 4 or 8 bits packed in blocks);
- QDQ pairs: a ``Conv``, ``Gemm`` or ``MatMul`` whose weight input comes from a ``DequantizeLinear``
  of a constant integer tensor.

A model holding any quantization op (these, ``QuantizeLinear``, ``DynamicQuantizeLinear``,
``DynamicQuantizeLSTM``, ...) is "already quantized" (``quantized_op_counts``).
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import onnx

from compress_core.models.onnx_graph import COMPRESSIBLE_OPS, constant_tensors

FLOAT_PRECISION = "float32"


def stored_bits(precision: str) -> int | None:
    """Bits per weight of a layer's ``precision`` (``uint8 (ConvInteger)`` -> 8, ``4-bit MatMulNBits``
    -> 4); None for float32 or a precision that names no width."""
    if precision == FLOAT_PRECISION:
        return None
    found = re.search(r"(\d+)", precision)
    return int(found.group(1)) if found else None


INTEGER_OUTPUT = onnx.TensorProto.INT32


@dataclass(frozen=True)
class _IntegerOp:
    """Where an integer op keeps its weight, the weight's scale and zero point (input indices, None
    when the op has no such input), the weight's layout, and the input whose type its output has."""

    weight: int
    scale: int | None
    zero_point: int | None
    layout: str  # "conv" [out, in, *k], "matmul" [in, out], "gemm" (transB decides)
    output_like: int | None  # output type = this input's type (None: int32 for *Integer, float otherwise)


INTEGER_OPS: dict[str, _IntegerOp] = {
    "ConvInteger": _IntegerOp(1, None, 3, "conv", None),
    "MatMulInteger": _IntegerOp(1, None, 3, "matmul", None),
    "QLinearConv": _IntegerOp(3, 4, 5, "conv", 7),
    "QLinearMatMul": _IntegerOp(3, 4, 5, "matmul", 7),
    "QGemm": _IntegerOp(3, 4, 5, "gemm", 8),
    "DynamicQuantizeMatMul": _IntegerOp(1, 2, 3, "matmul", None),
    "MatMulIntegerToFloat": _IntegerOp(1, 3, 5, "matmul", None),
}
NBITS_OP = "MatMulNBits"


@dataclass(frozen=True)
class QuantizedLayer:
    """A layer stored as integers: its node, op, integer weight, the output-channel axis of the
    dequantized ``weight`` (laid out as the float op's weight: [out, in, *k] for Conv, [in, out] for
    MatMul), its ``precision`` (``uint8 (ConvInteger)``, ``int8 QDQ``, ``4-bit MatMulNBits``), and
    the ONNX element type of the node's first output (for probing its shape)."""

    node_name: str
    op_type: str
    weight_name: str
    out_axis: int
    precision: str
    weight: np.ndarray = field(repr=False)
    output_type: int = onnx.TensorProto.FLOAT


def is_quantization_op(op_type: str) -> bool:
    """Whether an op type belongs to a quantized graph (integer compute, quantize or dequantize)."""
    return (
        op_type in INTEGER_OPS
        or op_type == NBITS_OP
        or op_type.startswith("QLinear")
        or "quantize" in op_type.lower()  # QuantizeLinear, DequantizeLinear, DynamicQuantizeLinear, DynamicQuantizeLSTM
        or op_type.endswith("Integer")
        or op_type in ("QGemm", "QAttention", "QEmbedLayerNormalization")
    )


def quantized_op_counts(model: onnx.ModelProto) -> dict[str, int]:
    """How many nodes of each quantization op type the graph holds (empty: a float model)."""
    counts = Counter(node.op_type for node in model.graph.node if is_quantization_op(node.op_type))
    return dict(sorted(counts.items(), key=lambda item: (-item[1], item[0])))


def quantized_layers(model: onnx.ModelProto) -> list[QuantizedLayer]:
    """Every recognised integer layer of the graph, in graph order (see the module's docstring)."""
    constants = constant_tensors(model)
    types = _constant_types(model)
    producers = {output: node for node in model.graph.node for output in node.output}
    layers = []
    for node in model.graph.node:
        layer: QuantizedLayer | None = None
        if node.op_type in INTEGER_OPS:
            layer = _integer_layer(node, INTEGER_OPS[node.op_type], constants, types, model, producers)
        elif node.op_type == NBITS_OP:
            layer = _nbits_layer(node, constants)
        elif node.op_type in COMPRESSIBLE_OPS and len(node.input) > 1 and node.input[1] in producers:
            layer = _qdq_layer(node, producers[node.input[1]], constants, types)
        if layer is not None:
            layers.append(layer)
    return layers


def dequantize(
    stored: np.ndarray, scale: np.ndarray, zero_point: np.ndarray | None, axis: int, block_size: int = 0
) -> np.ndarray:
    """``(stored - zero_point) * scale`` as float32, with a scalar, per-axis or blocked scale.

    A 1-D ``scale`` runs along ``axis``; a scale of the weight's rank holds one value per block of
    ``block_size`` along ``axis``. Raises ``ValueError`` for a scale of any other shape.
    """
    values = stored.astype(np.float64)
    scale = np.asarray(scale, dtype=np.float64)
    zero = np.zeros(1) if zero_point is None else np.asarray(zero_point).astype(np.float64)
    axis = axis % values.ndim
    if scale.size == 1:
        return ((values - zero.reshape(-1)[0]) * scale.reshape(-1)[0]).astype(np.float32)
    if scale.ndim == 1 and scale.size == values.shape[axis]:
        shape = [1] * values.ndim
        shape[axis] = -1
        scale = scale.reshape(shape)
        zero = zero.reshape(shape) if zero.size > 1 else zero.reshape(-1)[0]
        return ((values - zero) * scale).astype(np.float32)
    if scale.ndim == values.ndim and block_size > 0:
        length = values.shape[axis]
        scale = np.repeat(scale, block_size, axis=axis).take(range(length), axis=axis)
        if zero.size > 1:
            zero = np.repeat(zero.reshape(np.asarray(zero_point).shape), block_size, axis=axis).take(
                range(length), axis=axis
            )
        else:
            zero = zero.reshape(-1)[0]
        return ((values - zero) * scale).astype(np.float32)
    raise ValueError(f"a scale of shape {scale.shape} does not fit a weight of shape {stored.shape} on axis {axis}")


def _constant_types(model: onnx.ModelProto) -> dict[str, str]:
    """The element type name (``int8``, ``uint8``, ``int4``) of every initializer and Constant tensor."""
    types = {init.name: _type_name(init.data_type) for init in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant":
            for attribute in node.attribute:
                if attribute.name == "value":
                    types[node.output[0]] = _type_name(attribute.t.data_type)
    return types


def _type_name(data_type: int) -> str:
    return str(onnx.TensorProto.DataType.Name(data_type)).lower()


def _integer_layer(
    node: onnx.NodeProto,
    spec: _IntegerOp,
    constants: dict[str, tuple[np.ndarray, str]],
    types: dict[str, str],
    model: onnx.ModelProto,
    producers: dict[str, onnx.NodeProto],
) -> QuantizedLayer | None:
    weight_name = _input(node, spec.weight)
    if weight_name not in constants:
        return None
    stored = constants[weight_name][0]
    zero = _constant_input(node, spec.zero_point, constants)
    scale_name = _input(node, spec.scale) if spec.scale is not None else _dynamic_weight_scale(node, model, producers)
    scale = constants[scale_name][0] if scale_name in constants else None
    out_axis = _out_axis(spec.layout, node)
    precision = f"{types.get(weight_name, str(stored.dtype))} ({node.op_type})"
    if scale is None:
        precision += ", scale not found: statistics in integer steps"
        scale = np.ones(1, dtype=np.float32)
    try:
        weight = dequantize(stored, scale, zero, out_axis)
    except ValueError:
        return None
    if spec.output_like is not None and _input(node, spec.output_like) in types:
        output_type = onnx.TensorProto.DataType.Value(types[_input(node, spec.output_like)].upper())
    elif node.op_type.endswith("Integer"):
        output_type = INTEGER_OUTPUT
    else:
        output_type = onnx.TensorProto.FLOAT
    return QuantizedLayer(node.name, node.op_type, weight_name, out_axis, precision, weight, output_type)


def _dynamic_weight_scale(
    node: onnx.NodeProto, model: onnx.ModelProto, producers: dict[str, onnx.NodeProto]
) -> str | None:
    """The weight scale of a ConvInteger / MatMulInteger: ``<w>_scale`` beside ``<w>_quantized``
    (ONNX Runtime's names), else the constant a ``Mul`` multiplies the activation's scale by."""
    weight = node.input[1]
    if weight.endswith("_quantized"):
        named = weight[: -len("_quantized")] + "_scale"
        if any(init.name == named for init in model.graph.initializer):
            return named
    quantizer = producers.get(node.input[0])
    if quantizer is None or quantizer.op_type != "DynamicQuantizeLinear" or len(quantizer.output) < 2:
        return None
    activation_scale = quantizer.output[1]
    initializers = {init.name for init in model.graph.initializer}
    for other in model.graph.node:
        if other.op_type == "Mul" and activation_scale in other.input:
            partner = [name for name in other.input if name != activation_scale]
            if partner and partner[0] in initializers:
                return partner[0]
    return None


def _nbits_layer(node: onnx.NodeProto, constants: dict[str, tuple[np.ndarray, str]]) -> QuantizedLayer | None:
    """A MatMulNBits weight, unpacked: B is uint8 [N, blocks, bytes per block], low bits first."""
    attributes = {a.name: a.i for a in node.attribute if a.type == onnx.AttributeProto.INT}
    bits, block, k, n = (
        attributes.get("bits", 4),
        attributes.get("block_size"),
        attributes.get("K"),
        attributes.get("N"),
    )
    if bits not in (2, 4, 8) or not block or not k or not n or node.input[1] not in constants:
        return None
    scale = _constant_input(node, 2, constants)
    zero = _constant_input(node, 3, constants)
    if scale is None or (zero is not None and zero.dtype != np.uint8):
        return None  # float zero points (and a scale from a graph input) are not decoded
    blocks = -(-k // block)
    levels = _unpack(constants[node.input[1]][0].reshape(n, -1), bits)[:, : blocks * block].reshape(n, blocks, block)
    if zero is None:
        zeros = np.full((n, blocks, 1), 2 ** (bits - 1), dtype=np.float64)
    else:
        zeros = _unpack(zero.reshape(n, -1), bits)[:, :blocks].reshape(n, blocks, 1).astype(np.float64)
    values = (levels - zeros) * scale.astype(np.float64).reshape(n, blocks, 1)
    weight = values.reshape(n, blocks * block)[:, :k].T.astype(np.float32)  # [K, N], as MatMul's
    return QuantizedLayer(node.name, node.op_type, node.input[1], 1, f"{bits}-bit {NBITS_OP}", weight)


def _unpack(packed: np.ndarray, bits: int) -> np.ndarray:
    """uint8 rows -> the ``bits``-bit values they hold, lowest bits first."""
    per_byte = 8 // bits
    shifts = np.arange(per_byte, dtype=np.uint8) * bits
    values = (packed[..., None] >> shifts) & np.uint8(2**bits - 1)
    return values.reshape(packed.shape[0], -1).astype(np.float64)


def _qdq_layer(
    node: onnx.NodeProto,
    producer: onnx.NodeProto,
    constants: dict[str, tuple[np.ndarray, str]],
    types: dict[str, str],
) -> QuantizedLayer | None:
    """A float Conv / Gemm / MatMul whose weight is ``DequantizeLinear`` of a constant integer tensor."""
    if producer.op_type != "DequantizeLinear" or producer.input[0] not in constants:
        return None
    stored = constants[producer.input[0]][0]
    scale = _constant_input(producer, 1, constants)
    if scale is None or np.issubdtype(stored.dtype, np.floating) or stored.ndim < 2:
        return None
    if node.op_type == "MatMul" and stored.ndim != 2:
        return None
    attributes = {a.name: a.i for a in producer.attribute if a.type == onnx.AttributeProto.INT}
    try:
        weight = dequantize(
            stored,
            scale,
            _constant_input(producer, 2, constants),
            attributes.get("axis", 1),
            attributes.get("block_size", 0),
        )
    except ValueError:
        return None
    layout = {"Conv": "conv", "MatMul": "matmul"}.get(node.op_type, "gemm")
    precision = f"{types.get(producer.input[0], str(stored.dtype))} QDQ"
    return QuantizedLayer(node.name, node.op_type, producer.input[0], _out_axis(layout, node), precision, weight)


def _input(node: onnx.NodeProto, index: int | None) -> str:
    return node.input[index] if index is not None and len(node.input) > index else ""


def _constant_input(
    node: onnx.NodeProto, index: int | None, constants: dict[str, tuple[np.ndarray, str]]
) -> np.ndarray | None:
    name = _input(node, index)
    return constants[name][0] if name in constants else None


def _out_axis(layout: str, node: onnx.NodeProto) -> int:
    if layout == "conv":
        return 0
    if layout == "gemm":
        return 0 if next((a.i for a in node.attribute if a.name == "transB"), 0) else 1
    return 1
