"""Why int8 is (not) faster, per layer: kernel times from ORT's profiler and a one-line verdict.

Both files are profiled (``ort.profiling.profile_nodes``: mean kernel time per node of the graph
ORT runs, mapped to our layers) and counted (``op_census``: the layers still running a float
kernel). Beyond the layers, the int8 file's QuantizeLinear / DequantizeLinear nodes and its layout
nodes (Transpose, and the NCHWc reorders ORT inserts) are summed: they are what int8 pays on top.

A layer's verdict, first match wins:

- planned float -> ``float: kept float by the plan``;
- planned int8, float kernel after ORT's optimization -> ``float: ORT cannot fuse this pattern``;
- int8 time above fp32 -> ``int8 slower``, with the likely cause: few input channels (at most
  ``FEW_CHANNELS``: the integer kernel's dot products are too short to gain), or a kernel too small
  to gain (fp32 under ``TINY_MS``);
- else ``int8 N.Nx faster``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import onnx
from onnx import numpy_helper

from compress_core.models.inputs import Inputs
from compress_core.ort.layer_map import LayerTarget
from compress_core.ort.profiling import NodeTime, op_census, profile_nodes

QDQ_OPS = ("QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear")
LAYOUT_OPS = ("Transpose", "ReorderInput", "ReorderOutput")
FEW_CHANNELS = 4
TINY_MS = 0.005
SLOWEST_EXTRA = 5


@dataclass(frozen=True)
class LayerSpeed:
    """One layer's kernel times (ms per run; None where the profiler saw no node of it) and verdict."""

    layer: str
    fp32_ms: float | None
    int8_ms: float | None
    verdict: str

    @property
    def speedup(self) -> float | None:
        if not self.fp32_ms or not self.int8_ms:
            return None
        return self.fp32_ms / self.int8_ms


@dataclass(frozen=True)
class SpeedReport:
    """Per-layer speeds, and what the int8 file spends outside its layers."""

    layers: list[LayerSpeed]
    fp32_total_ms: float
    int8_total_ms: float
    qdq_ms: float
    qdq_nodes: int
    layout_ms: float
    layout_nodes: int
    float_layers: list[str]
    slowest_extra: list[NodeTime]  # the slowest Q/DQ and layout nodes of the int8 file


def input_channels(model: onnx.ModelProto, target: LayerTarget) -> int | None:
    """The length of one output's dot product per group: a Conv weight's dim 1, a Gemm or MatMul
    weight's input dim (None for other ops or a weight that is not an initializer)."""
    weight = next((init for init in model.graph.initializer if init.name == target.weight_tensor), None)
    if weight is None:
        return None
    shape = numpy_helper.to_array(weight).shape
    if target.op_type == "Conv" and len(shape) >= 2:
        return int(shape[1])
    if target.op_type == "MatMul" and len(shape) == 2:
        return int(shape[0])
    if target.op_type == "Gemm" and len(shape) == 2:
        return int(shape[1])  # the exporter writes transB=1: weight [out, in]
    return None


def verdict(
    fp32_ms: float | None, int8_ms: float | None, planned_bits: int | None, runs_float: bool, channels: int | None
) -> str:
    """The one-line verdict for a layer (the rules in the module's docstring)."""
    if planned_bits is None:
        return "float: kept float by the plan"
    if runs_float:
        return "float: ORT cannot fuse this pattern (it runs between DequantizeLinear and QuantizeLinear)"
    if fp32_ms is None or int8_ms is None:
        return "no kernel time measured"
    if int8_ms > fp32_ms:
        if channels is not None and channels <= FEW_CHANNELS:
            return f"int8 slower: {channels} input channel{'s' if channels != 1 else ''}"
        if fp32_ms < TINY_MS:
            return f"int8 slower: too small to gain ({fp32_ms * 1000:.1f} µs in fp32)"
        return f"int8 slower: {int8_ms / fp32_ms:.2f}x the fp32 time"
    return f"int8 {fp32_ms / int8_ms:.1f}x faster"


def layer_speeds(
    fp32_path: str | Path,
    int8_path: str | Path,
    fp32: onnx.ModelProto,
    targets: dict[str, LayerTarget],
    planned_bits: dict[str, int | None],
    inputs: Inputs,
    threads: int = 2,
    batch: int = 32,
    runs: int = 10,
) -> SpeedReport:
    """Profile both files on one batch of ``inputs`` and give each layer of ``targets`` its verdict.

    ``fp32`` is the fp32 file's model (for each layer's input channels), ``planned_bits`` each
    layer's bits in the plan (None: float).
    """
    layer_nodes = {layer: target.node for layer, target in targets.items()}
    fp32_times = profile_nodes(fp32_path, inputs, layer_nodes, threads, batch, runs)
    int8_times = profile_nodes(int8_path, inputs, layer_nodes, threads, batch, runs)
    census = op_census(int8_path, layer_nodes, threads)
    fp32_by_layer, int8_by_layer = _by_layer(fp32_times), _by_layer(int8_times)
    rows = []
    for layer, target in targets.items():
        fp32_ms, int8_ms = fp32_by_layer.get(layer), int8_by_layer.get(layer)
        runs_float = layer in census.float_layers
        text = verdict(fp32_ms, int8_ms, planned_bits.get(layer), runs_float, input_channels(fp32, target))
        rows.append(LayerSpeed(layer, fp32_ms, int8_ms, text))
    qdq = [time for time in int8_times if time.op_type in QDQ_OPS and time.layer is None]
    layout = [time for time in int8_times if time.op_type in LAYOUT_OPS]
    return SpeedReport(
        layers=rows,
        fp32_total_ms=sum(time.ms for time in fp32_times),
        int8_total_ms=sum(time.ms for time in int8_times),
        qdq_ms=sum(time.ms for time in qdq),
        qdq_nodes=len(qdq),
        layout_ms=sum(time.ms for time in layout),
        layout_nodes=len(layout),
        float_layers=list(census.float_layers),
        slowest_extra=sorted(qdq + layout, key=lambda time: -time.ms)[:SLOWEST_EXTRA],
    )


def _by_layer(times: list[NodeTime]) -> dict[str, float]:
    """Kernel ms per layer: every node of the optimized graph that computes it (fused activations too)."""
    totals: dict[str, float] = {}
    for time in times:
        if time.layer is not None and time.op_type not in QDQ_OPS:
            totals[time.layer] = totals.get(time.layer, 0.0) + time.ms
    return totals
