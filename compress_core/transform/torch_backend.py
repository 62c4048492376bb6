"""The plan applied to a copy of a torch model: low-rank, structured and unstructured pruning, quantization."""

from __future__ import annotations

import copy
import io
import warnings
from collections.abc import Callable

import torch
from torch import nn

from compress_core.errors import CompressError, first_line
from compress_core.models.handle import CompressionRecord, ModelHandle
from compress_core.models.inventory import LayerInfo, torch_layer_names
from compress_core.ops.lowrank import break_even_rank, resolve_rank, split_conv_weight, truncated_svd
from compress_core.ops.prune import channels_to_prune
from compress_core.ops.quantize import quantize_weight
from compress_core.ops.sqnr import sqnr_db
from compress_core.plan import Plan
from compress_core.plan.layer_config import LayerConfig
from compress_core.transform.weights import check_n_m_fits, prune_mask, quantize_table

CONV_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
TRANSPOSED_CONV_TYPES = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)


def apply_torch(
    handle: ModelHandle,
    plan: Plan,
    configs: dict[str, LayerConfig],
    layers: dict[str, LayerInfo],
    output_layer: str,
) -> tuple[nn.Module, CompressionRecord]:
    """Return the compressed copy of ``handle.model`` and what was done to it."""
    model = copy_module(handle.model)
    record = CompressionRecord(plan=plan)
    originals = {name: _parameter(model, layers[name].weight_name).detach().clone() for name in configs}
    # Each planned layer's weight parameters after low-rank: one, or the two factors.
    targets = {name: [layers[name].weight_name] for name in configs}
    for name, config in configs.items():
        if config.rank is not None:
            targets[name] = _factorize(model, layers[name], config.rank, record)
    structured = {
        n: c.prune.ratio
        for n, c in configs.items()
        if c.prune is not None and c.prune.kind == "structured" and c.prune.ratio > 0
    }
    if structured:
        _prune_structured(model, handle, structured, layers, targets, output_layer, record)
    for name, config in configs.items():
        if config.prune is not None and config.prune.kind != "structured" and config.prune.ratio > 0:
            for weight_name in targets[name]:
                parameter = _parameter(model, weight_name)
                where = f"layer '{name}' (weight '{weight_name}' of shape {tuple(parameter.shape)} after low-rank / structured pruning)"
                check_n_m_fits(where, config.prune, tuple(parameter.shape), layers[name].out_axis)
                mask = prune_mask(parameter.data, config.prune, out_axis=layers[name].out_axis)
                parameter.data.mul_(mask)
                record.masks[weight_name] = mask
                if config.prune.n_m:
                    record.nm_patterns[weight_name] = config.prune.n_m
    for name, config in configs.items():
        if config.bits is not None:
            for weight_name in targets[name]:
                parameter = _parameter(model, weight_name)
                quantized = (
                    quantize_table(parameter.data, config)
                    if layers[name].embedding
                    else quantize_weight(
                        parameter.data, config.bits, config.scheme, config.granularity, axis=layers[name].out_axis
                    )
                )
                parameter.data.copy_(quantized.values)
                record.quantized[weight_name] = quantized
    for name in configs:
        record.layer_sqnr[name] = _effective_sqnr(model, originals[name], targets[name])
    return model, record


def copy_module(model: nn.Module) -> nn.Module:
    """A deep copy; TorchScript modules are copied through a save/load round trip."""
    if isinstance(model, torch.jit.ScriptModule):
        buffer = io.BytesIO()
        torch.jit.save(model, buffer)
        buffer.seek(0)
        return torch.jit.load(buffer)
    return copy.deepcopy(model)


def _parameter(model: nn.Module, name: str) -> nn.Parameter:
    parameters = dict(model.named_parameters())
    if name not in parameters:
        raise CompressError(f"weight '{name}' is not a parameter of the model")
    return parameters[name]


def _set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, module)


def _factorize(model: nn.Module, layer: LayerInfo, rank: int | float, record: CompressionRecord) -> list[str]:
    """Replace a Linear / Conv by two thinner ones (truncated SVD); return the factors' weight names."""
    _, module_name = torch_layer_names(layer.weight_name)
    module = model.get_submodule(module_name)
    weight = _weight(module).detach()
    first: nn.Linear | nn.Conv1d | nn.Conv2d | nn.Conv3d
    second: nn.Linear | nn.Conv1d | nn.Conv2d | nn.Conv3d
    if isinstance(module, nn.Linear):
        first_weight, second_weight = _linear_factors(weight, rank)
        r = first_weight.shape[0]
        first = nn.Linear(module.in_features, r, bias=False)
        second = nn.Linear(r, module.out_features, bias=module.bias is not None)
    elif isinstance(module, CONV_TYPES):
        if module.groups != 1:
            raise CompressError(
                f"layer '{layer.name}': low-rank is not supported for grouped convolutions (groups={module.groups})"
            )
        first_weight, second_weight = split_conv_weight(weight, rank)
        r = first_weight.shape[0]
        conv = type(module)
        # _ConvNd types kernel_size, stride, padding and dilation as tuple[int, ...]; each ConvNd's
        # constructor wants its own N-tuple, which these are (they come from a module of that type).
        layout = (module.kernel_size, module.stride, module.padding, module.dilation)
        first = conv(module.in_channels, r, *layout, bias=False, padding_mode=module.padding_mode)  # type: ignore[arg-type]
        second = conv(r, module.out_channels, 1, bias=module.bias is not None)
    else:
        raise CompressError(
            f"layer '{layer.name}': low-rank applies to Linear and Conv1d/2d/3d layers, not {type(module).__name__}"
        )
    with torch.no_grad():
        first.weight.copy_(first_weight)
        second.weight.copy_(second_weight)
        if module.bias is not None and second.bias is not None:  # second has a bias exactly when module has
            second.bias.copy_(module.bias)
    _set_submodule(model, module_name, nn.Sequential(first, second))
    out_size = weight.shape[0]
    if r > break_even_rank(out_size, weight[0].numel()):
        record.notes.append(
            f"{layer.name}: rank {r} saves no parameters (break-even rank {break_even_rank(out_size, weight[0].numel())})"
        )
    return [f"{module_name}.0.weight", f"{module_name}.1.weight"]


def _linear_factors(weight: torch.Tensor, rank: int | float) -> tuple[torch.Tensor, torch.Tensor]:
    """(first [r, in], second [out, r]) with second @ first the best rank-r approximation."""
    resolve_rank(rank, min(weight.shape))
    a, b = truncated_svd(weight, rank)
    return b, a


def _prune_structured(
    model: nn.Module,
    handle: ModelHandle,
    ratios: dict[str, float],
    layers: dict[str, LayerInfo],
    targets: dict[str, list[str]],
    output_layer: str,
    record: CompressionRecord,
) -> None:
    """Remove whole output channels (``ratios``: of each layer) with torch-pruning's DepGraph, so coupled layers shrink too."""
    import torch_pruning as tp

    sample = handle.data.inputs[:1]
    example = tuple(sample.tensors())
    with torch.no_grad():
        expected_shape = handle.call(model, sample).shape
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch-pruning warns about parameters outside modules (positions)
        graph = tp.DependencyGraph().build_dependency(model, example_inputs=example)
    output_module = (
        model.get_submodule(torch_layer_names(targets[output_layer][-1])[1]) if output_layer in targets else None
    )
    for name, ratio in ratios.items():
        module = model.get_submodule(torch_layer_names(targets[name][-1])[1])
        if name == output_layer:
            record.notes.append(
                f"{name}: output channels left alone (they are the model's outputs); structured pruning skipped"
            )
            continue
        handler = _out_channel_handler(module, name, tp)
        axis = layers[name].out_axis  # the last factor of a low-rank layer is a Linear or Conv: axis 0 too
        planned_channels = layers[name].weight_shape[axis] if len(targets[name]) == 1 else _weight(module).shape[axis]
        if _weight(module).shape[axis] < planned_channels:
            record.notes.append(
                f"{name}: its output channels are coupled to a layer pruned before it (residual add); not pruned again"
            )
            continue
        indices = channels_to_prune(_weight(module).detach(), ratio, axis=axis).tolist()
        group = graph.get_pruning_group(module, handler, idxs=indices)
        if output_module is not None and _group_touches_outputs(group, output_module, tp):
            record.notes.append(f"{name}: its channels are coupled to the model's outputs; structured pruning skipped")
            continue
        if not graph.check_pruning_group(group):
            record.notes.append(f"{name}: torch-pruning refused this group (it would empty a coupled layer); skipped")
            continue
        group.prune()
        record.notes.append(
            f"{name}: removed {len(indices)} of {len(indices) + _weight(module).shape[axis]} output channels"
        )
    try:
        with torch.no_grad():
            shape = handle.call(model, sample).shape
    except RuntimeError as exc:
        raise CompressError(
            f"structured pruning of {_some(list(ratios))} broke the model's forward pass ({first_line(exc)}): "
            "the channel dependencies go through reshapes torch-pruning cannot follow (attention heads, for example); "
            "prune these layers unstructured or N:M instead"
        ) from exc
    if shape != expected_shape:
        raise CompressError(
            f"structured pruning changed the output shape from {tuple(expected_shape)} to {tuple(shape)}"
        )


def _weight(module: nn.Module) -> torch.Tensor:
    """``module.weight`` (``nn.Module`` types an attribute as a tensor or a module)."""
    weight = module.weight
    if not isinstance(weight, torch.Tensor):
        raise CompressError(f"{type(module).__name__}.weight is a {type(weight).__name__}, not a tensor")
    return weight


def _out_channel_handler(module: nn.Module, name: str, tp) -> Callable:
    """torch-pruning's function that removes the module's output channels; other modules are refused."""
    if isinstance(module, nn.Linear):
        return tp.prune_linear_out_channels
    if isinstance(module, CONV_TYPES) or (isinstance(module, TRANSPOSED_CONV_TYPES) and module.groups == 1):
        return tp.prune_conv_out_channels
    grouped = f" with groups={module.groups}" if isinstance(module, TRANSPOSED_CONV_TYPES) else ""
    raise CompressError(
        f"layer '{name}': structured pruning applies to Linear, Conv and ungrouped ConvTranspose layers, not {type(module).__name__}{grouped}; "
        "prune it unstructured or N:M instead"
    )


def _some(names: list[str], limit: int = 4) -> str:
    return ", ".join(names[:limit]) + (f" and {len(names) - limit} more layers" if len(names) > limit else "")


def _group_touches_outputs(group, output_module: nn.Module, tp) -> bool:
    out_handlers = (tp.prune_linear_out_channels, tp.prune_conv_out_channels)
    return any(dep.target.module is output_module and dep.handler in out_handlers for dep, _ in group)


def _effective_sqnr(model: nn.Module, original: torch.Tensor, weight_names: list[str]) -> float | None:
    """Weight SQNR of the layer after all steps, or None when channels were removed."""
    weights = [_parameter(model, name).detach() for name in weight_names]
    if len(weights) == 2:
        first, second = weights
        effective = second.reshape(second.shape[0], -1) @ first.reshape(first.shape[0], -1)
        reference = original.reshape(original.shape[0], -1)
    else:
        effective, reference = weights[0], original
    if effective.shape != reference.shape:
        return None
    return sqnr_db(reference, effective)
