"""The layer inventory: every compressible layer with its shape, size, MACs and weight statistics.

For torch models (``nn.Module``, TorchScript and ``torch.export`` alike) one example forward runs under
a dispatch mode that sees every ATen op: a weight counts as a layer when a convolution, a matrix
product or a recurrent op consumes it, and its MACs are that op's FLOPs / 2. For ONNX models the
layers are Conv / Gemm / MatMul nodes with a constant weight, and MACs come from the output shapes of
one example run in ONNX Runtime.

Embedding tables are layers too: an ``nn.Embedding`` (any 2-D weight read only by ``aten.embedding``;
type ``Embedding``) and an ONNX ``Gather`` along axis 0 of a constant 2-D float table with indices
computed at run time (type ``Gather``). Their rows are the "channels" (``out_axis`` 0: per-row grids),
and they have no MACs (a lookup). Bits apply to them; pruning and low-rank are refused
(``transform.apply`` says why).

Every layer carries its current ``precision``: ``float32``, or for a layer an ONNX file already stores
as integers (``models.onnx_quantized``: ConvInteger, MatMulInteger, QLinear*, MatMulNBits, QDQ pairs)
what it is stored as (``uint8 (ConvInteger)``, ``int8 QDQ``, ``4-bit MatMulNBits``); the statistics
of such a layer are those of its dequantized weight. A plan cannot change such a layer
(``transform.apply`` refuses it).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import onnx
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import flop_registry

from compress_core.models.handle import ModelHandle
from compress_core.models.onnx_graph import WeightUse, compressible_nodes, constant_tensors
from compress_core.models.onnx_quantized import FLOAT_PRECISION, is_quantization_op, quantized_layers

TRANSPOSED_CONVOLUTION = "convolution_transposed"
MATMUL_OPS = {"mm", "addmm", "bmm", "baddbmm", "matmul", "linear", "_addmm_activation"}
RNN_MARKERS = ("rnn", "lstm", "gru")
EMBEDDING_OPS = {"embedding"}
EMBEDDING_TYPES = ("Embedding", "Gather")
"""Layer types of embedding tables (torch, ONNX): lookups whose rows are the channels."""


@dataclass
class LayerInfo:
    """One compressible layer, as plain data (``to_dict`` for JSON and tables).

    ``name`` is what a plan uses: a module name (``conv1``), a parameter name for weights that are
    not a module's ``weight`` (``lstm.weight_ih_l0``), or an ONNX node name. ``weight_name`` is the
    parameter / initializer holding the weight; ``out_axis`` its output-channel axis. ``precision``
    is how the model stores the layer now: ``float32``, or an integer format such as
    ``uint8 (ConvInteger)`` for a layer that is already quantized (``quantized``).
    """

    name: str
    type: str
    weight_name: str
    weight_shape: tuple[int, ...]
    params: int
    macs: int
    out_axis: int
    min: float
    max: float
    mean: float
    std: float
    abs_mean: float
    kurtosis: float
    sparsity: float
    channel_min: list[float] = field(repr=False)
    channel_max: list[float] = field(repr=False)
    precision: str = FLOAT_PRECISION

    @property
    def embedding(self) -> bool:
        """Whether the layer is an embedding table (a lookup: bits only, no pruning or low-rank)."""
        return self.type in EMBEDDING_TYPES

    @property
    def quantized(self) -> bool:
        """Whether the model already stores this layer as integers (a plan cannot change it)."""
        return self.precision != FLOAT_PRECISION

    def to_dict(self, channels: bool = True) -> dict[str, Any]:
        """Plain JSON-ready data; ``channels=False`` drops the per-channel lists."""
        data = asdict(self)
        data["weight_shape"] = list(self.weight_shape)
        if not channels:
            data.pop("channel_min")
            data.pop("channel_max")
        return data


def layer_inventory(handle: ModelHandle) -> list[LayerInfo]:
    """Every compressible layer of the handle's model, in execution (torch) or graph (ONNX) order."""
    if handle.backend == "onnx":
        return _onnx_inventory(handle)
    return _torch_inventory(handle)


def total_params(handle: ModelHandle) -> int:
    """All parameters: torch parameters, or ONNX float initializers and Constant tensors plus the
    integer weights of an already-quantized graph (each stored weight counted once per value).

    BatchNormalization's running mean and variance are statistics (torch buffers), not parameters,
    and are left out on both sides so that a model and its ONNX export count alike.
    """
    if handle.backend == "onnx":
        model = handle.model
        statistics = {
            name for node in model.graph.node if node.op_type == "BatchNormalization" for name in node.input[3:5]
        }
        constants = constant_tensors(model)
        floats = sum(
            array.size for name, (array, _) in constants.items() if array.dtype == np.float32 and name not in statistics
        )
        integer_layers = {layer.weight_name: layer.weight.size for layer in quantized_layers(model)}
        other_integers = {  # integer weights of quantized ops that are no layer (DynamicQuantizeLSTM's)
            name: constants[name][0].size
            for node in model.graph.node
            if is_quantization_op(node.op_type)
            for name in node.input
            if name in constants
            and name not in integer_layers
            and constants[name][0].ndim >= 2
            and np.issubdtype(constants[name][0].dtype, np.integer)
        }
        return int(floats + sum(integer_layers.values()) + sum(other_integers.values()))
    return int(sum(p.numel() for p in handle.model.parameters()))


def layer_weight_array(handle: ModelHandle, layer: LayerInfo) -> np.ndarray:
    """A copy of the layer's weight as float32, in its stored layout (``layer.out_axis`` says where
    the output channels are)."""
    if handle.backend == "onnx":
        if layer.quantized:
            return next(q.weight for q in quantized_layers(handle.model) if q.node_name == layer.name).copy()
        return np.array(constant_tensors(handle.model)[layer.weight_name][0], dtype=np.float32)
    return dict(handle.model.named_parameters())[layer.weight_name].detach().float().numpy().copy()


def weight_statistics(weight: np.ndarray, out_axis: int) -> dict[str, Any]:
    """min / max / mean / std / abs-mean / excess kurtosis / sparsity and per-output-channel ranges."""
    flat = weight.astype(np.float64).ravel()
    std = float(flat.std())
    centred = flat - flat.mean()
    kurtosis = float((centred**4).mean() / std**4 - 3.0) if std > 0 else 0.0
    per_channel = np.moveaxis(weight, out_axis, 0).reshape(weight.shape[out_axis], -1)
    return {
        "min": float(flat.min()),
        "max": float(flat.max()),
        "mean": float(flat.mean()),
        "std": std,
        "abs_mean": float(np.abs(flat).mean()),
        "kurtosis": kurtosis,
        "sparsity": float((flat == 0).mean()),
        "channel_min": per_channel.min(axis=1).astype(float).tolist(),
        "channel_max": per_channel.max(axis=1).astype(float).tolist(),
    }


# ---------------------------------------------------------------- torch


class _WeightUseRecorder(TorchDispatchMode):
    """Records, for each weight (keyed by storage), the ATen ops that consume it and their MACs."""

    def __init__(self, weights_by_storage: dict[int, str]) -> None:
        super().__init__()
        self.weights_by_storage = weights_by_storage
        self.ops: dict[str, list[str]] = {}
        self.macs: dict[str, int] = {}

    def __torch_dispatch__(
        self,
        func: torch._ops.OpOverload,
        types: Sequence[type],
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        tensors = [a for a in args if isinstance(a, torch.Tensor)]
        for tensor in tensors:
            name = self.weights_by_storage.get(tensor.untyped_storage().data_ptr())
            if name is None:
                continue
            op = func._overloadpacket.__name__
            if op == "convolution" and len(args) > 6 and args[6] is True:
                op = TRANSPOSED_CONVOLUTION
            self.ops.setdefault(name, []).append(op)
            self.macs[name] = self.macs.get(name, 0) + _op_macs(func, op, args, kwargs, out, tensor, tensors)
        return out


def _op_macs(
    func: torch._ops.OpOverload,
    op: str,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    out: Any,
    weight: torch.Tensor,
    tensors: list[torch.Tensor],
) -> int:
    formula = flop_registry.get(func._overloadpacket)
    if formula is not None:
        return int(formula(*args, **kwargs, out_val=out)) // 2
    if any(marker in op for marker in RNN_MARKERS) and weight.dim() == 2 and tensors[0] is not weight:
        sequence = tensors[0]
        rows = sequence.numel() // max(sequence.shape[-1], 1)
        return int(rows * weight.numel())
    return 0


def _classify(ops: list[str], weight: torch.Tensor) -> str | None:
    if TRANSPOSED_CONVOLUTION in ops:
        return f"ConvTranspose{weight.dim() - 2}d"
    if any("convolution" in op for op in ops):
        return f"Conv{weight.dim() - 2}d"
    if any(any(marker in op for marker in RNN_MARKERS) for op in ops):
        return "RNN"
    if weight.dim() == 2 and any(op in MATMUL_OPS for op in ops):
        return "Linear"
    if weight.dim() == 2 and set(ops) <= EMBEDDING_OPS:
        return "Embedding"
    return None


def _module_types(model: torch.nn.Module) -> dict[str, str]:
    """Module name -> class name (TorchScript keeps it as ``original_name``)."""
    types = {}
    for name, module in model.named_modules():
        types[name] = getattr(module, "original_name", None) or type(module).__name__
    return types


def torch_layer_names(param_name: str) -> tuple[str, str]:
    """(layer name, owning module name) of a weight parameter."""
    if param_name.endswith(".weight"):
        module = param_name[: -len(".weight")]
        return module, module
    module = param_name.rsplit(".", 1)[0] if "." in param_name else ""
    return param_name, module


def _torch_inventory(handle: ModelHandle) -> list[LayerInfo]:
    model = handle.model
    parameters = dict(model.named_parameters())
    candidates = {
        p.untyped_storage().data_ptr(): name for name, p in parameters.items() if p.dim() >= 2 and p.is_floating_point()
    }
    recorder = _WeightUseRecorder(candidates)
    example = handle.padded(handle.data.inputs[:1])
    with torch.no_grad(), recorder:
        model(*example.tensors())
    module_types = _module_types(model)
    layers = []
    for param_name, ops in recorder.ops.items():
        weight = parameters[param_name].detach()
        kind = _classify(ops, weight)
        if kind is None:
            continue
        name, module_name = torch_layer_names(param_name)
        bias = parameters.get(f"{module_name}.bias") if param_name.endswith(".weight") else None
        params = weight.numel() + (bias.numel() if bias is not None else 0)
        layer_type = module_types.get(module_name, kind)
        if layer_type in ("GraphModule", "InterpreterModule", "Module") or not layer_type:
            layer_type = kind
        out_axis = 1 if kind.startswith("ConvTranspose") else 0  # a transposed conv's weight is [in, out / groups, *k]
        stats = weight_statistics(weight.float().numpy(), out_axis)
        layers.append(
            LayerInfo(
                name=name,
                type=layer_type,
                weight_name=param_name,
                weight_shape=tuple(weight.shape),
                params=int(params),
                macs=int(recorder.macs.get(param_name, 0)) // len(example),  # per sample, also when padded
                out_axis=out_axis,
                **stats,
            )
        )
    return layers


# ---------------------------------------------------------------- ONNX


def embedding_nodes(model: onnx.ModelProto) -> list[WeightUse]:
    """``Gather`` nodes that look rows up (axis 0) in a constant 2-D float32 table with indices computed
    at run time, in graph order, as ``WeightUse`` (``out_axis`` 0: a row per index)."""
    constants = constant_tensors(model)
    uses = []
    for node in model.graph.node:
        if node.op_type != "Gather" or len(node.input) != 2 or node.input[1] in constants:
            continue
        if node.input[0] not in constants or next((a.i for a in node.attribute if a.name == "axis"), 0) != 0:
            continue
        array, source = constants[node.input[0]]
        if array.dtype == np.float32 and array.ndim == 2:
            uses.append(WeightUse(node.name, node.op_type, node.input[0], 0, source))
    return uses


def _onnx_inventory(handle: ModelHandle) -> list[LayerInfo]:
    model = handle.model
    uses = compressible_nodes(model) + embedding_nodes(model)
    quantized = quantized_layers(model)
    constants = constant_tensors(model)
    nodes = {node.name: node for node in model.graph.node}
    computing = [use for use in uses if use.op_type not in EMBEDDING_TYPES]  # a lookup has no MACs to measure
    output_shapes = _onnx_output_shapes(handle, [nodes[use.node_name].output[0] for use in computing])
    if quantized:
        output_shapes.update(
            _typed_output_shapes(handle, {nodes[q.node_name].output[0]: q.output_type for q in quantized})
        )
    layers = []
    for use in uses:
        node = nodes[use.node_name]
        weight = constants[use.weight_name][0]
        layers.append(
            _onnx_layer(
                use.node_name, use.op_type, use.weight_name, weight, use.out_axis, node, constants, output_shapes
            )
        )
    for layer in quantized:
        node = nodes[layer.node_name]
        layers.append(
            _onnx_layer(
                layer.node_name,
                layer.op_type,
                layer.weight_name,
                layer.weight,
                layer.out_axis,
                node,
                constants,
                output_shapes,
                layer.precision,
            )
        )
    order = {node.name: index for index, node in enumerate(model.graph.node)}
    return sorted(layers, key=lambda layer: order[layer.name])


def _onnx_layer(
    name: str,
    op_type: str,
    weight_name: str,
    weight: np.ndarray,
    out_axis: int,
    node: onnx.NodeProto,
    constants: dict[str, tuple[np.ndarray, str]],
    output_shapes: dict[str, tuple[int, ...]],
    precision: str = FLOAT_PRECISION,
) -> LayerInfo:
    """One ONNX layer; ``weight`` is the float weight (dequantized for an integer layer)."""
    bias = _bias_name(node)
    bias_params = constants[bias][0].size if bias in constants else 0
    conv = op_type in ("Conv", "ConvInteger", "QLinearConv")
    lookup = op_type in EMBEDDING_TYPES
    return LayerInfo(
        name=name,
        type=op_type,
        weight_name=weight_name,
        weight_shape=tuple(int(d) for d in weight.shape),
        params=int(weight.size + bias_params),
        macs=0 if lookup else _onnx_macs(conv, weight, out_axis, output_shapes[node.output[0]]),
        out_axis=out_axis,
        **weight_statistics(weight, out_axis),
        precision=precision,
    )


def _bias_name(node: onnx.NodeProto) -> str:
    """The bias input of a float or integer layer node ("" when it has none)."""
    index = {"QLinearConv": 8, "QGemm": 6, "DynamicQuantizeMatMul": 4, "MatMulIntegerToFloat": 6, "MatMulNBits": 5}
    position = index.get(node.op_type, 2 if node.op_type in ("Conv", "Gemm") else -1)
    return node.input[position] if 0 <= position < len(node.input) else ""


def _onnx_macs(conv: bool, weight: np.ndarray, out_axis: int, out_shape: tuple[int, ...]) -> int:
    outputs = int(np.prod(out_shape))
    if conv:
        return outputs * int(np.prod(weight.shape[1:]))
    return outputs * int(weight.shape[1 - out_axis])


def _typed_output_shapes(handle: ModelHandle, outputs: dict[str, int]) -> dict[str, tuple[int, ...]]:
    """Like ``_onnx_output_shapes`` for tensors of other element types (an integer layer's int32 or
    uint8 output): each exposed with its own type, as ONNX Runtime requires."""
    from compress_core.models.sessions import make_session

    probe = onnx.ModelProto()
    probe.CopyFrom(handle.model)
    existing = {output.name for output in probe.graph.output}
    for name, elem_type in outputs.items():
        if name not in existing:
            probe.graph.output.append(onnx.helper.make_tensor_value_info(name, elem_type, None))
    session = make_session(probe, optimize=False, label=f"'{handle.name}'")
    names = list(outputs)
    values = session.run(names, handle.padded(handle.data.inputs[:1]).feed())
    return {name: tuple(value.shape) for name, value in zip(names, values, strict=True)}


def _onnx_output_shapes(handle: ModelHandle, names: list[str]) -> dict[str, tuple[int, ...]]:
    """Run one example with the given intermediate tensors exposed as outputs; return their shapes."""
    from compress_core.models.sessions import make_session

    probe = onnx.ModelProto()
    probe.CopyFrom(handle.model)
    existing = {output.name for output in probe.graph.output}
    for name in names:
        if name not in existing:
            probe.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
            existing.add(name)
    session = make_session(probe, optimize=False, label=f"'{handle.name}'")
    values = session.run(names, handle.padded(handle.data.inputs[:1]).feed())
    return {name: tuple(value.shape) for name, value in zip(names, values)}
