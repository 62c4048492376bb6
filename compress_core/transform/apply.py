"""``apply_plan``: check a plan against a model, then apply it to a copy.

The order is fixed: low-rank factorization, then pruning (structured first, then unstructured and
N:M), then quantization. Quantization keeps exact zeros, so pruned weights stay pruned. The input
handle is never mutated; the result is a new handle whose ``compression`` record keeps the masks
and quantization grids for fine-tuning and export.
"""

from __future__ import annotations

import math

from compress_core.errors import CompressError
from compress_core.models.handle import ModelHandle
from compress_core.models.inventory import LayerInfo, layer_inventory
from compress_core.ops.lowrank import resolve_rank
from compress_core.plan import LayerConfig, Plan
from compress_core.plan.quoting import quoted, written
from compress_core.transform.aliases import layer_aliases
from compress_core.transform.weights import check_n_m_fits

REWRITABLE_KINDS = ("sample", "state_dict", "pickle")
RNN_TYPES = ("LSTM", "GRU", "RNN")


def apply_plan(handle: ModelHandle, plan: Plan, layers: list[LayerInfo] | None = None) -> ModelHandle:
    """Apply ``plan`` to a copy of the handle's model and return the compressed handle.

    ``layers`` may pass the handle's inventory when the caller already has it. Raises
    ``CompressError`` naming the layer, the value and what is allowed for anything the model
    cannot take.
    """
    layers = layers if layers is not None else layer_inventory(handle)
    by_name = {layer.name: layer for layer in layers}
    plan = plan.with_aliases(layer_aliases(handle, layers))
    configs = plan.resolve([layer.name for layer in layers])
    check_not_quantized([by_name[name] for name in configs])
    for name, config in configs.items():
        check_layer_config(handle, by_name[name], config)
    model: object  # an onnx.ModelProto or a torch.nn.Module, as ``handle.model``
    if handle.backend == "onnx":
        from compress_core.transform.onnx_backend import apply_onnx

        model, record = apply_onnx(handle, plan, configs, by_name)
    else:
        from compress_core.transform.torch_backend import apply_torch

        model, record = apply_torch(handle, plan, configs, by_name, output_layer=layers[-1].name)
    return handle.replace(model=model, compression=record, name=f"{handle.name} (compressed)")


def full_rank(layer: LayerInfo) -> int:
    """The rank of the layer's weight seen as a matrix [out, in * kernel]."""
    out = layer.weight_shape[layer.out_axis]
    return min(out, math.prod(layer.weight_shape) // out)


def check_not_quantized(layers: list[LayerInfo]) -> None:
    """Refuse a plan that touches layers the model already stores as integers: their weights are not
    float values a plan could round, prune or factorize."""
    quantized = [layer for layer in layers if layer.quantized]
    if not quantized:
        return
    first = quantized[0]
    others = f" (and {len(quantized) - 1} more already-quantized layers)" if len(quantized) > 1 else ""
    raise CompressError(
        f"layer {quoted(first.name)} is already {first.precision}{others}; compress the float original instead, "
        f"or leave it out of the plan (layers: {{{written(first.name)}: null}})"
    )


def _check_embedding_config(where: str, config: LayerConfig) -> None:
    """An embedding table takes bits (per row or per tensor) and unstructured or N:M pruning (zeros in
    the table, its shape unchanged); low-rank and structured pruning are refused, saying why."""
    if config.rank is not None:
        raise CompressError(
            f"{where}: low-rank is not supported for embedding tables (a lookup, not a matrix product); use bits"
        )
    if config.prune is not None and config.prune.kind == "structured" and config.prune.ratio > 0:
        raise CompressError(
            f"{where}: structured pruning is not supported for embedding tables (removing rows removes tokens, "
            "removing columns changes the hidden size); use bits, or unstructured or N:M pruning"
        )


def check_layer_config(handle: ModelHandle, layer: LayerInfo, config: LayerConfig) -> None:
    """Refuse settings this layer or this kind of model cannot take, with a specific message."""
    where = f"layer '{layer.name}'"
    if layer.embedding:
        _check_embedding_config(where, config)
    if config.rank is not None:
        if layer.type in RNN_TYPES:
            raise CompressError(f"{where}: low-rank is not supported for {layer.type} weights; use bits or pruning")
        if handle.backend == "torch" and handle.kind not in REWRITABLE_KINDS:
            raise CompressError(
                f"{where}: low-rank needs to rewrite the model, which a {handle.kind} file does not allow; "
                "load it as ONNX or as a state_dict of a built-in architecture"
            )
        try:
            resolve_rank(config.rank, full_rank(layer))
        except ValueError as exc:
            raise CompressError(f"{where}: {exc}") from exc
    if config.prune is None or config.prune.ratio == 0:
        return
    if config.prune.kind == "structured":
        if handle.backend == "onnx":
            raise CompressError(
                f"{where}: structured pruning is not supported for ONNX inputs: removing channels means rewriting "
                "every consumer of the layer (BatchNorm, Add, Reshape); use unstructured or N:M pruning"
            )
        if handle.kind not in REWRITABLE_KINDS:
            raise CompressError(
                f"{where}: structured pruning needs to rewrite the model, which a {handle.kind} file does not allow"
            )
        if layer.type in RNN_TYPES or not layer.weight_name.endswith(".weight"):
            raise CompressError(
                f"{where}: structured pruning applies to Conv and Linear layers, not {layer.type} weights"
            )
        channels = layer.weight_shape[layer.out_axis]
        if round(config.prune.ratio * channels) >= channels:
            raise CompressError(
                f"{where}: prune ratio {config.prune.ratio} would remove all {channels} output channels; "
                f"use a ratio below {1 - 0.5 / channels:.3f}"
            )
    check_n_m_fits(where, config.prune, layer.weight_shape, layer.out_axis)
