"""The layer inventory: every compressible layer with its shape, size, MACs and weight statistics.

For torch models (``nn.Module``, TorchScript and ``torch.export`` alike) one example forward runs under
a dispatch mode that sees every ATen op: a weight counts as a layer when a convolution, a matrix
product or a recurrent op consumes it, and its MACs are that op's FLOPs / 2. For ONNX models the
layers are Conv / Gemm / MatMul nodes with a constant weight, and MACs come from the output shapes of
one example run in ONNX Runtime.
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

TRANSPOSED_CONVOLUTION = "convolution_transposed"
MATMUL_OPS = {"mm", "addmm", "bmm", "baddbmm", "matmul", "linear", "_addmm_activation"}
RNN_MARKERS = ("rnn", "lstm", "gru")


@dataclass
class LayerInfo:
    """One compressible layer, as plain data (``to_dict`` for JSON and tables).

    ``name`` is what a plan uses: a module name (``conv1``), a parameter name for weights that are
    not a module's ``weight`` (``lstm.weight_ih_l0``), or an ONNX node name. ``weight_name`` is the
    parameter / initializer holding the weight; ``out_axis`` its output-channel axis.
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
    """All float parameters: torch parameters, or ONNX float initializers and Constant tensors.

    BatchNormalization's running mean and variance are statistics (torch buffers), not parameters,
    and are left out on both sides so that a model and its ONNX export count alike.
    """
    if handle.backend == "onnx":
        statistics = {
            name for node in handle.model.graph.node if node.op_type == "BatchNormalization" for name in node.input[3:5]
        }
        return int(
            sum(
                array.size
                for name, (array, _) in constant_tensors(handle.model).items()
                if array.dtype == np.float32 and name not in statistics
            )
        )
    return int(sum(p.numel() for p in handle.model.parameters()))


def layer_weight_array(handle: ModelHandle, layer: LayerInfo) -> np.ndarray:
    """A copy of the layer's weight as float32, in its stored layout (``layer.out_axis`` says where
    the output channels are)."""
    if handle.backend == "onnx":
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


def _onnx_inventory(handle: ModelHandle) -> list[LayerInfo]:
    model = handle.model
    uses = compressible_nodes(model)
    constants = constant_tensors(model)
    nodes = {node.name: node for node in model.graph.node}
    output_shapes = _onnx_output_shapes(handle, [nodes[use.node_name].output[0] for use in uses])
    layers = []
    for use in uses:
        node = nodes[use.node_name]
        weight = constants[use.weight_name][0]
        bias_params = constants[node.input[2]][0].size if len(node.input) > 2 and node.input[2] in constants else 0
        out_shape = output_shapes[node.output[0]]
        stats = weight_statistics(weight, use.out_axis)
        layers.append(
            LayerInfo(
                name=use.node_name,
                type=use.op_type,
                weight_name=use.weight_name,
                weight_shape=tuple(int(d) for d in weight.shape),
                params=int(weight.size + bias_params),
                macs=_onnx_macs(use, weight, out_shape, node),
                out_axis=use.out_axis,
                **stats,
            )
        )
    return layers


def _onnx_macs(use: WeightUse, weight: np.ndarray, out_shape: tuple[int, ...], node: onnx.NodeProto) -> int:
    outputs = int(np.prod(out_shape))
    if use.op_type == "Conv":
        return outputs * int(np.prod(weight.shape[1:]))
    reduce_axis = 1 - use.out_axis
    return outputs * int(weight.shape[reduce_axis])


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
