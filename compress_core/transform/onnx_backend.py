"""The plan applied to a copy of an ONNX graph: weights rewritten in place, low-rank as two nodes."""

from __future__ import annotations

import numpy as np
import onnx
import torch
from onnx import helper, numpy_helper

from compress_core.models.handle import CompressionRecord, ModelHandle
from compress_core.models.inventory import LayerInfo
from compress_core.models.onnx_graph import name_unnamed_nodes
from compress_core.ops.lowrank import truncated_svd
from compress_core.ops.quantize import quantize_weight
from compress_core.ops.sqnr import sqnr_db
from compress_core.plan import Plan
from compress_core.plan.layer_config import LayerConfig
from compress_core.transform.weights import prune_mask, quantize_table


def apply_onnx(
    handle: ModelHandle, plan: Plan, configs: dict[str, LayerConfig], layers: dict[str, LayerInfo]
) -> tuple[onnx.ModelProto, CompressionRecord]:
    """Return the compressed copy of the ONNX model and what was done to it."""
    model = onnx.ModelProto()
    model.CopyFrom(handle.model)
    constants_to_initializers(model, float_only=True)  # every weight is then edited the same way
    record = CompressionRecord(plan=plan)
    store = _WeightStore(model)
    for name, config in configs.items():
        layer = layers[name]
        original = store.get(layer.weight_name)
        # (weight name, output axis) of each weight the layer has after low-rank.
        targets = [(layer.weight_name, layer.out_axis)]
        if config.rank is not None:
            targets = _factorize(model, store, layer, config.rank)
        for weight_name, out_axis in targets:
            weight = torch.from_numpy(store.get(weight_name).copy())
            if config.prune is not None and config.prune.ratio > 0:
                mask = prune_mask(weight, config.prune, out_axis)
                weight = weight * mask
                record.masks[weight_name] = mask
                if config.prune.n_m:
                    record.nm_patterns[weight_name] = config.prune.n_m
            if config.bits is not None:
                quantized = (
                    quantize_table(weight, config)
                    if layer.embedding
                    else quantize_weight(weight, config.bits, config.scheme, config.granularity, axis=out_axis)
                )
                weight = quantized.values
                record.quantized[weight_name] = quantized
            store.set(weight_name, weight.numpy())
        record.layer_sqnr[name] = _effective_sqnr(store, original, layer.out_axis, targets)
    store.write_back()
    name_unnamed_nodes(model)
    onnx.checker.check_model(model)
    return model, record


class _WeightStore:
    """Initializer arrays by name, edited as numpy and written back once."""

    def __init__(self, model: onnx.ModelProto) -> None:
        self.model = model
        self.arrays = {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}
        self.changed: set[str] = set()

    def get(self, name: str) -> np.ndarray:
        return self.arrays[name]

    def set(self, name: str, array: np.ndarray) -> None:
        self.arrays[name] = np.ascontiguousarray(array.astype(np.float32))
        self.changed.add(name)

    def write_back(self) -> None:
        existing = {init.name for init in self.model.graph.initializer}
        kept = [init for init in self.model.graph.initializer if init.name not in self.changed]
        del self.model.graph.initializer[:]
        self.model.graph.initializer.extend(kept)
        for name in sorted(self.changed):
            self.model.graph.initializer.append(numpy_helper.from_array(self.arrays[name], name))
        assert existing <= {init.name for init in self.model.graph.initializer}


def constants_to_initializers(model: onnx.ModelProto, float_only: bool = False) -> int:
    """Replace the ``Constant`` nodes holding a tensor (``value``), or only a float32 one, by
    initializers of the same name, in place; return how many moved."""
    kept = []
    moved = 0
    for node in model.graph.node:
        value = next((a.t for a in node.attribute if a.name == "value"), None) if node.op_type == "Constant" else None
        if value is not None and (value.data_type == onnx.TensorProto.FLOAT or not float_only):
            tensor = onnx.TensorProto()
            tensor.CopyFrom(value)
            tensor.name = node.output[0]
            model.graph.initializer.append(tensor)
            moved += 1
        else:
            kept.append(node)
    del model.graph.node[:]
    model.graph.node.extend(kept)
    return moved


def _factorize(
    model: onnx.ModelProto, store: _WeightStore, layer: LayerInfo, rank: int | float
) -> list[tuple[str, int]]:
    """Split the layer's node into two nodes by truncated SVD; return the factors' (weight, out axis)."""
    nodes = list(model.graph.node)
    index = next(i for i, node in enumerate(nodes) if node.name == layer.name)
    node = nodes[index]
    weight = store.get(layer.weight_name)
    first_name, second_name = f"{layer.name}/lowrank_0", f"{layer.name}/lowrank_1"
    hidden = f"{layer.name}/lowrank_hidden"
    first_w, second_w = f"{layer.weight_name}/lowrank_0", f"{layer.weight_name}/lowrank_1"
    if node.op_type == "Conv":
        a, b = truncated_svd(torch.from_numpy(weight.reshape(weight.shape[0], -1).copy()), rank)
        r = a.shape[1]
        kernel_dims = weight.ndim - 2
        store.set(first_w, b.reshape(r, *weight.shape[1:]).numpy())
        store.set(second_w, a.reshape(weight.shape[0], r, *([1] * kernel_dims)).numpy())
        keep = {a.name: a for a in node.attribute if a.name in ("strides", "pads", "dilations", "auto_pad")}
        first = helper.make_node("Conv", [node.input[0], first_w], [hidden], name=first_name)
        first.attribute.extend(keep.values())
        second = helper.make_node("Conv", [hidden, second_w, *node.input[2:]], list(node.output), name=second_name)
        targets = [(first_w, 0), (second_w, 0)]
    elif node.op_type == "Gemm":
        matrix = weight if layer.out_axis == 0 else weight.T  # [out, in]
        a, b = truncated_svd(torch.from_numpy(np.ascontiguousarray(matrix)), rank)
        store.set(first_w, b.numpy())  # [r, in]
        store.set(second_w, a.numpy())  # [out, r]
        attributes = {a.name: a for a in node.attribute}
        first = helper.make_node("Gemm", [node.input[0], first_w], [hidden], name=first_name, transB=1)
        if "transA" in attributes:
            first.attribute.append(attributes["transA"])
        second = helper.make_node(
            "Gemm", [hidden, second_w, *node.input[2:]], list(node.output), name=second_name, transB=1
        )
        second.attribute.extend(a for n, a in attributes.items() if n in ("alpha", "beta"))
        targets = [(first_w, 0), (second_w, 0)]
    else:  # MatMul with weight [in, out]
        a, b = truncated_svd(torch.from_numpy(np.ascontiguousarray(weight)), rank)  # weight = a @ b
        store.set(first_w, a.numpy())  # [in, r]
        store.set(second_w, b.numpy())  # [r, out]
        first = helper.make_node("MatMul", [node.input[0], first_w], [hidden], name=first_name)
        second = helper.make_node("MatMul", [hidden, second_w], list(node.output), name=second_name)
        targets = [(first_w, 1), (second_w, 1)]
    del model.graph.node[index]
    model.graph.node.insert(index, second)
    model.graph.node.insert(index, first)
    if not any(layer.weight_name in n.input for n in model.graph.node):
        store.changed.discard(layer.weight_name)
        store.arrays.pop(layer.weight_name)
        kept = [init for init in model.graph.initializer if init.name != layer.weight_name]
        del model.graph.initializer[:]
        model.graph.initializer.extend(kept)
    return targets


def _effective_sqnr(store: _WeightStore, original: np.ndarray, out_axis: int, targets: list[tuple[str, int]]) -> float:
    """Weight SQNR of the layer's final effective weight against the original, as [out, in] matrices."""
    reference = np.moveaxis(original, out_axis, 0).reshape(original.shape[out_axis], -1)
    if len(targets) == 1:
        final = store.get(targets[0][0])
        effective = np.moveaxis(final, out_axis, 0).reshape(reference.shape)
    else:
        (first, factor_axis), (second, _) = targets
        a, b = store.get(first), store.get(second)
        if factor_axis == 1:  # MatMul: x @ a @ b
            effective = (a @ b).T
        else:  # Conv / Gemm: second [out, r] @ first [r, in]
            effective = b.reshape(b.shape[0], -1) @ a.reshape(a.shape[0], -1)
    return sqnr_db(torch.from_numpy(np.array(reference)), torch.from_numpy(np.array(effective)))
