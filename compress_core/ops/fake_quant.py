"""Fake quantization with a straight-through estimator (STE), for quantization-aware fine-tuning.

A quantized layer keeps a float *latent* weight. Inside :func:`straight_through` every listed
parameter temporarily holds its latent weight quantized on the layer's grid (same bits, scheme,
granularity and axis, with scales, zero points or codebooks recomputed from the latent weight), so
the forward pass sees exactly what the exported model will compute. The backward pass, run inside
the same block, computes the gradient at the quantized weight; on leaving the block the latent
weight is put back, and the optimizer applies that gradient to it unchanged: the gradient of the
rounding is taken as the identity (Bengio et al. 2013, "straight-through"; Jacob et al. 2018 for
quantization-aware training). This works for any module type (including LSTMs and TorchScript)
because it only swaps parameter values, never the modules' code.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager

import torch
from torch import nn

from compress_core.ops.quantize import QuantizedWeight


@contextmanager
def straight_through(parameters: Mapping[str, nn.Parameter], grids: Mapping[str, QuantizedWeight]) -> Iterator[None]:
    """Within the block, each parameter named in ``grids`` holds its quantized value; run forward
    *and* backward inside it. On exit the latent float values are restored (also on error).

    The swap bumps the parameters' version counters, so autograd refuses a backward pass run after
    the block over a graph built inside it instead of silently using the wrong weights.
    """
    latent = {name: parameters[name].detach().clone() for name in grids}
    try:
        with torch.no_grad():
            for name, grid in grids.items():
                parameters[name].copy_(grid.requantize(latent[name]).values)
        yield
    finally:
        with torch.no_grad():
            for name, value in latent.items():
                parameters[name].copy_(value)


def snap_to_grids(
    parameters: Mapping[str, nn.Parameter], grids: Mapping[str, QuantizedWeight]
) -> dict[str, QuantizedWeight]:
    """Replace each latent weight by its quantized value, for good; return the new grids by name."""
    snapped = {name: grid.requantize(parameters[name]) for name, grid in grids.items()}
    with torch.no_grad():
        for name, quantized in snapped.items():
            parameters[name].copy_(quantized.values)
    return snapped
