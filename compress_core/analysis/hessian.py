"""Hessian traces of the loss with respect to each layer's weight: a second view of sensitivity."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from compress_core.errors import CompressError, first_line
from compress_core.models.handle import ModelHandle
from compress_core.models.inventory import LayerInfo, layer_inventory
from compress_core.transform.torch_backend import copy_module


def hessian_traces(
    handle: ModelHandle, layers: list[LayerInfo] | None = None, samples: int = 8, max_inputs: int = 256, seed: int = 0
) -> dict[str, float]:
    """Hutchinson estimate of the trace of the loss Hessian for each layer's weight.

    The loss is cross-entropy to the labels for a classification model with labels, else the mean
    squared error to the original outputs; ``samples`` Rademacher probes on the first
    ``max_inputs`` inputs. A larger trace means a more sensitive layer.
    """
    if handle.backend != "torch" or isinstance(handle.model, torch.jit.ScriptModule):
        raise CompressError(f"Hessian traces need a torch nn.Module; '{handle.name}' is a {handle.kind} model")
    layers = layers if layers is not None else layer_inventory(handle)
    work = copy_module(handle.model)
    named = dict(work.named_parameters())
    for parameter in named.values():
        parameter.requires_grad_(False)
    weights = [named[layer.weight_name].requires_grad_(True) for layer in layers]
    inputs = handle.data.inputs[:max_inputs]
    labels = handle.data.labels
    generator = torch.Generator().manual_seed(seed)
    with torch.enable_grad():
        batches = handle.input_batches(inputs, len(inputs))  # one batch, or a fixed-batch program's batches
        output = torch.cat([handle.call(work, batch) for batch in batches])[: len(inputs)]
        if handle.task == "classification" and labels is not None:
            loss = nn.functional.cross_entropy(output, torch.from_numpy(np.array(labels[:max_inputs])))
        else:
            loss = nn.functional.mse_loss(output, torch.from_numpy(handle.run(inputs)))
        try:
            gradients = torch.autograd.grad(loss, weights, create_graph=True)
            traces = torch.zeros(len(weights), dtype=torch.float64)
            for _ in range(samples):
                probes = [torch.randint(0, 2, w.shape, generator=generator).to(w.dtype) * 2 - 1 for w in weights]
                products = torch.autograd.grad(gradients, weights, grad_outputs=probes, retain_graph=True)
                traces += torch.stack([(p * v).sum().double() for p, v in zip(products, probes)])
        except RuntimeError as exc:
            raise CompressError(f"Hessian traces are not available for '{handle.name}': {first_line(exc)}") from exc
    return {layer.name: float(trace) / samples for layer, trace in zip(layers, traces)}
