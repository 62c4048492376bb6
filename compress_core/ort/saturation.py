"""Does a U8S8 int8 file saturate on a CPU without VNNI? Measured layer by layer on real inputs.

Without VNNI, ONNX Runtime's x86 U8S8 kernels multiply uint8 activations by int8 weights with
``vpmaddubsw``: each pair of neighbouring products along the dot product (k, k+1) is added in 16 bits
with signed saturation, then the int16 pair sums are added in 32 bits (``vpmaddwd`` by ones). Two
large products of one sign (up to 2 x 255 x 127 = 64,770) overflow int16 and are clipped at 32,767.
With VNNI (``vpdpbusd``) four products are summed in 32 bits: exact.

``pair_sums`` emulates those kernels in numpy and ``exact_sums`` is the reference (int64 sums of the
same integers). ``measure_saturation`` runs the int8 file with graph optimization off on evaluation
inputs, reads the integer inputs of every Conv / MatMul / Gemm that runs on quantized operands (QDQ
from ``quantize_static``, ``MatMulInteger`` / ``ConvInteger`` from ``quantize_dynamic``), and
compares each layer's output under the emulated kernel with the exact one. The zero-point terms are
computed apart from the raw sums in ORT (row and column sums), so the raw sums' difference is the
output's. A Conv's dot products are taken channel-innermost (kh, kw, c), as ORT's NHWC integer
convolutions lay them out. ``rows`` rows (output pixels or tokens) per layer are sampled, spread
over the batches.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

from compress_core.models.inputs import Inputs, in_batches
from compress_core.models.sessions import make_session

INT16_MAX = 32767
INT16_MIN = -32768
QDQ_COMPUTE = ("Conv", "MatMul", "Gemm")
INTEGER_COMPUTE = ("MatMulInteger", "ConvInteger")
ROW_CHUNK = 16


@dataclass(frozen=True)
class LayerSaturation:
    """One integer layer's outputs under the emulated 16-bit pair sums against the exact ones.

    ``saturated_pairs``: fraction of pair sums clipped; ``changed_outputs``: fraction of output values
    that differ; ``relative_error``: L2 norm of the output's change over the L2 norm of the output.
    """

    node: str
    layer: str | None
    saturated_pairs: float
    changed_outputs: float
    relative_error: float


@dataclass(frozen=True)
class _IntegerOperands:
    """What is needed to recompute one node's integer dot products."""

    node: str
    activation: str  # the uint8 / int8 tensor that feeds the dot products
    zero_point: str | None  # the activation's zero point (a tensor name)
    weight: np.ndarray  # integers, Conv [out, in/group, kh, kw] or MatMul [K, N]
    weight_zero: np.ndarray  # per output channel (or one value)
    weight_scale: np.ndarray  # per output channel (or one value)
    conv: dict[str, list[int]] | None  # Conv attributes (pads, strides, dilations, group)


def pair_sums(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, int]:
    """``a @ b`` as ORT's U8S8 kernels without VNNI compute it, and the number of clipped pairs.

    ``a`` [M, K] holds uint8 values, ``b`` [K, N] int8 values (any integer dtype). Neighbouring
    products (k, k+1) are added with int16 saturation, then the pair sums in wide integers; an odd K
    is padded with a zero product. Only the pairs that can leave int16 (``a[k] + a[k+1]`` above
    ``32767 / max|b|``) are formed; the others add exactly.
    """
    a64, b64 = a.astype(np.int64), b.astype(np.int64)
    if a64.shape[1] % 2:
        a64 = np.pad(a64, ((0, 0), (0, 1)))
        b64 = np.pad(b64, ((0, 1), (0, 0)))
    result = exact_sums(a64, b64)
    even_a, odd_a, even_b, odd_b = a64[:, 0::2], a64[:, 1::2], b64[0::2], b64[1::2]
    largest = int(np.abs(b64).max(initial=0))
    if largest == 0:
        return result, 0
    candidates = np.abs(even_a) + np.abs(odd_a) > INT16_MAX // largest
    clipped = 0
    for start in range(0, a64.shape[0], ROW_CHUNK):
        rows = slice(start, start + ROW_CHUNK)
        columns = np.flatnonzero(candidates[rows].any(axis=0))
        if columns.size == 0:
            continue
        pairs = even_a[rows, columns, None] * even_b[None, columns] + odd_a[rows, columns, None] * odd_b[None, columns]
        excess = np.clip(pairs, INT16_MIN, INT16_MAX) - pairs
        clipped += int(np.count_nonzero(excess))
        result[rows] += excess.sum(axis=1)
    return result, clipped


def exact_sums(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The exact integer reference: ``a @ b`` as int64 (summed in float64, exact below 2**53)."""
    return np.rint(a.astype(np.float64) @ b.astype(np.float64)).astype(np.int64)


def compare(
    a: np.ndarray, b: np.ndarray, a_zero: int, b_zero: np.ndarray, b_scale: np.ndarray
) -> tuple[int, int, int, float, float]:
    """Emulated against exact sums of one layer: (pairs, clipped pairs, changed outputs, squared
    L2 norm of the output's change, squared L2 norm of the exact output), outputs scaled per column
    by ``b_scale`` (the activation's scale is common to both and cancels)."""
    emulated, clipped = pair_sums(a, b)
    exact = exact_sums(a, b)
    centered = exact_sums(a.astype(np.int64) - a_zero, b.astype(np.int64) - b_zero)
    change = (emulated - exact) * b_scale
    pairs = a.shape[0] * ((a.shape[1] + 1) // 2) * b.shape[1]
    return (
        pairs,
        clipped,
        int((emulated != exact).sum()),
        float((change**2).sum()),
        float(((centered * b_scale) ** 2).sum()),
    )


def im2col(x: np.ndarray, kernel: tuple[int, int], conv: dict[str, list[int]], pad_value: int) -> np.ndarray:
    """Patches of an NCHW integer tensor for a 2-D convolution, one row per output pixel and batch
    item, columns channel-innermost (kh, kw, c); padding holds ``pad_value`` (the zero point)."""
    kh, kw = kernel
    top, left, bottom, right = (conv["pads"] + [0, 0, 0, 0])[:4]
    sh, sw = conv["strides"]
    dh, dw = conv["dilations"]
    padded = np.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right)), constant_values=pad_value)
    height = (padded.shape[2] - dh * (kh - 1) - 1) // sh + 1
    width = (padded.shape[3] - dw * (kw - 1) - 1) // sw + 1
    patches = np.empty((x.shape[0], height, width, kh, kw, x.shape[1]), dtype=x.dtype)
    for i in range(kh):
        for j in range(kw):
            window = padded[:, :, i * dh : i * dh + sh * height : sh, j * dw : j * dw + sw * width : sw]
            patches[:, :, :, i, j, :] = window.transpose(0, 2, 3, 1)
    return patches.reshape(x.shape[0] * height * width, kh * kw * x.shape[1])


def measure_saturation(
    path: str | Path,
    inputs: Inputs,
    layer_nodes: dict[str, str] | None = None,
    batch: int = 16,
    rows: int = 256,
    seed: int = 0,
) -> list[LayerSaturation]:
    """Each integer layer of the int8 file at ``path``, run on ``inputs``: its output under the
    emulated no-VNNI U8S8 kernel against the exact integer reference (worst first).

    ``layer_nodes`` (layer -> node name in the fp32 export) names the layers; ``rows`` output rows
    are sampled per layer, spread over the batches. Layers whose activations are not uint8 are skipped (the
    emulation is of U8S8).
    """
    from compress_core.ort.profiling import layer_of

    model = onnx.load(str(path))
    operands = integer_operands(model)
    if not operands:
        return []
    constants = {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}
    probe = onnx.shape_inference.infer_shapes(model)
    typed = {value.name: value for value in probe.graph.value_info}
    exposed = {name for op in operands for name in (op.activation, op.zero_point) if name and name not in constants}
    outputs = {value.name for value in probe.graph.output}
    probe.graph.output.extend(
        typed.get(name, helper.make_empty_tensor_value_info(name)) for name in sorted(exposed - outputs)
    )
    session = make_session(probe, optimize=False, label=Path(path).name)
    names = [output.name for output in session.get_outputs()]
    rng = np.random.default_rng(seed)
    parts = list(in_batches(inputs, batch))
    per_batch = max(1, rows // len(parts))
    totals = {op.node: np.zeros(5) for op in operands}
    for part in parts:
        values = {**constants, **dict(zip(names, session.run(names, part.feed()), strict=True))}
        for op in operands:
            activation = values[op.activation]
            if activation.dtype != np.uint8:
                continue
            zero = int(np.asarray(values[op.zero_point]).reshape(-1)[0]) if op.zero_point else 0
            a, b = _as_matrices(activation, op, zero)
            if a.shape[0] > per_batch:
                a = a[rng.choice(a.shape[0], per_batch, replace=False)]
            columns = b.shape[1]
            b_zero, b_scale = (v[:columns] if v.size > 1 else v for v in (op.weight_zero, op.weight_scale))
            totals[op.node] += compare(a, b, zero, b_zero, b_scale)
    found = []
    for op in operands:
        pairs, clipped, changed, change, norm = totals[op.node]
        if pairs == 0:
            continue
        outputs_seen = pairs / max(1, (_depth(op) + 1) // 2)
        found.append(
            LayerSaturation(
                op.node,
                layer_of(op.node, layer_nodes) if layer_nodes else None,
                float(clipped / pairs),
                float(changed / outputs_seen),
                float(np.sqrt(change / norm)) if norm > 0 else 0.0,
            )
        )
    return sorted(found, key=lambda row: row.relative_error, reverse=True)


def _depth(op: _IntegerOperands) -> int:
    """The length of one output's dot product."""
    return int(np.prod(op.weight.shape[1:])) if op.conv is not None else op.weight.shape[0]


def _as_matrices(activation: np.ndarray, op: _IntegerOperands, zero: int) -> tuple[np.ndarray, np.ndarray]:
    """The node's dot products as ``a`` [rows, K] @ ``b`` [K, N] (a grouped Conv: its first group)."""
    if op.conv is None:
        return activation.reshape(-1, activation.shape[-1]), op.weight
    group = op.conv["group"][0]
    out_channels, in_per_group = op.weight.shape[:2]
    x = activation[:, :in_per_group] if group > 1 else activation
    weight = op.weight[: out_channels // group]
    a = im2col(x, weight.shape[2:4], op.conv, zero)
    b = weight.transpose(2, 3, 1, 0).reshape(-1, weight.shape[0])
    return a, b


def integer_operands(model: onnx.ModelProto) -> list[_IntegerOperands]:
    """The nodes of ``model`` that compute on quantized operands, with their integer weights."""
    initializers = {init.name: init for init in model.graph.initializer}
    producers = {output: node for node in model.graph.node for output in node.output}
    found = []
    for node in model.graph.node:
        conv = _conv_attributes(node) if node.op_type in ("Conv", "ConvInteger") else None
        if conv is not None and len(conv["strides"]) != 2:
            continue  # only 2-D convolutions are emulated
        if node.op_type in QDQ_COMPUTE:
            x_dq, w_dq = (producers.get(name) for name in node.input[:2])
            if not (_is_dq(x_dq) and _is_dq(w_dq) and w_dq.input[0] in initializers):  # type: ignore[union-attr]
                continue
            weight = numpy_helper.to_array(initializers[w_dq.input[0]])  # type: ignore[union-attr]
            if node.op_type == "Gemm" and _attribute(node, "transB", 0):
                weight = weight.T
            scale = _initializer(initializers, w_dq.input[1], 1.0)  # type: ignore[union-attr]
            zero = _initializer(initializers, w_dq.input[2] if len(w_dq.input) > 2 else "", 0)  # type: ignore[union-attr]
            x_zero = x_dq.input[2] if len(x_dq.input) > 2 and x_dq.input[2] else None  # type: ignore[union-attr]
            found.append(_IntegerOperands(node.name, x_dq.input[0], x_zero, weight, zero, scale, conv))  # type: ignore[union-attr]
        elif node.op_type in INTEGER_COMPUTE and node.input[1] in initializers:
            base = node.input[1].removesuffix("_quantized")
            weight = numpy_helper.to_array(initializers[node.input[1]])
            zero = _initializer(initializers, node.input[3] if len(node.input) > 3 else "", 0)
            scale = _initializer(initializers, f"{base}_scale", 1.0)
            a_zero = node.input[2] if len(node.input) > 2 and node.input[2] else None
            found.append(_IntegerOperands(node.name, node.input[0], a_zero, weight, zero, scale, conv))
    return found


def _is_dq(node: onnx.NodeProto | None) -> bool:
    return node is not None and node.op_type == "DequantizeLinear"


def _initializer(initializers: dict[str, onnx.TensorProto], name: str, default: float) -> np.ndarray:
    """An initializer as a float64 / int64 vector (per channel, or one value); ``default`` without one."""
    if name not in initializers:
        return np.array([default])
    value = numpy_helper.to_array(initializers[name])
    return value.reshape(-1).astype(np.float64 if value.dtype.kind == "f" else np.int64)


def _attribute(node: onnx.NodeProto, name: str, default: int) -> int:
    attribute = next((a for a in node.attribute if a.name == name), None)
    return default if attribute is None else int(helper.get_attribute_value(attribute))


def _conv_attributes(node: onnx.NodeProto) -> dict[str, list[int]]:
    values = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    kernel = list(values.get("kernel_shape", [0, 0]))
    dims = len(kernel)
    return {
        "pads": list(values.get("pads", [0] * 2 * dims)),
        "strides": list(values.get("strides", [1] * dims)),
        "dilations": list(values.get("dilations", [1] * dims)),
        "group": [int(values.get("group", 1))],
    }
