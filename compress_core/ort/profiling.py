"""Where an ONNX model spends its time, and which of its layers still run in float after ORT's optimization.

A user whose int8 model is no faster than fp32 wants exactly this: per-node kernel time from ORT's
profiler (``SessionOptions.enable_profiling``), mapped back to our layer names, and the count of
compute nodes that ORT fused into integer kernels (``QLinearConv``, ``MatMulInteger``, ...) versus
those that still run in float (``Conv``, ``MatMul``, ``Gemm``) between DequantizeLinear and
QuantizeLinear, read from the model ORT saves through ``optimized_model_filepath``.
"""

from __future__ import annotations

import json
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from compress_core.errors import CompressError
from compress_core.models.inputs import Inputs
from compress_core.models.sessions import make_session
from compress_core.ort.latency import timing_feed

FLOAT_COMPUTE_OPS = ("Conv", "MatMul", "Gemm", "FusedConv", "FusedMatMul", "FusedGemm")
FUSED_PREFIX = "fused "  # ORT's name for a node it fused another into, e.g. ``fused /fc1/Gemm``
INTEGER_COMPUTE_OPS = (
    "QLinearConv",
    "ConvInteger",
    "MatMulInteger",
    "QLinearMatMul",
    "QGemm",
    "MatMulIntegerToFloat",
    "DynamicQuantizeMatMul",
    "DynamicQuantizeLSTM",
    "QAttention",
)
COMPUTE_OPS = FLOAT_COMPUTE_OPS + INTEGER_COMPUTE_OPS


@dataclass(frozen=True)
class NodeTime:
    """Median kernel time per run of one node of the optimized graph, and the layer it belongs to."""

    node: str
    op_type: str
    layer: str | None
    ms: float
    share: float


@dataclass(frozen=True)
class OpCensus:
    """Compute nodes after ORT's optimization: integer kernels, and float ones with their layers."""

    integer: dict[str, int]
    float: dict[str, int]
    float_layers: list[str]

    @property
    def float_nodes(self) -> int:
        return sum(self.float.values())


def layer_of(node_name: str, layer_nodes: dict[str, str]) -> str | None:
    """The layer whose node name the (possibly renamed, e.g. ``/conv1/Conv_quant``) node starts with."""
    best = None
    for layer, node in layer_nodes.items():
        if node_name.startswith(node) and (best is None or len(node) > len(layer_nodes[best])):
            best = layer
    return best


def node_layers(optimized: onnx.ModelProto, source: onnx.ModelProto, layer_nodes: dict[str, str]) -> dict[str, str]:
    """Each node of ORT's ``optimized`` graph of ``source`` -> the layer it computes, where known.

    By name first: ORT keeps or extends most names (``/conv1/Conv_quant``, ``fused /fc1/Gemm``).
    Then by the initializers a node reads: a node ORT renamed still reads its layer's bias or weight
    (``/Relu_output_0_nchwc`` is conv1 fused with its Relu, in the blocked NCHWc layout).
    """
    by_tensor = _layer_tensors(source, layer_nodes)
    found = {}
    for node in optimized.graph.node:
        layer = layer_of(node.name.removeprefix(FUSED_PREFIX), layer_nodes)
        if layer is None:
            layer = next((by_tensor[name] for name in node.input if name in by_tensor), None)
        if layer is not None:
            found[node.name] = layer
    return found


def _layer_tensors(model: onnx.ModelProto, layer_nodes: dict[str, str]) -> dict[str, str]:
    """Initializer -> layer, for the weight and bias each layer's node reads (directly or through a
    DequantizeLinear) and the bias of the Add that follows a MatMul; an initializer that more than
    one layer reads names none of them."""
    initializers = {init.name for init in model.graph.initializer}
    producers = {output: node for node in model.graph.node for output in node.output}
    bias_adds: dict[str, list[str]] = {}  # tensor -> initializers of the Adds that read it
    for node in model.graph.node:
        if node.op_type == "Add":
            for name in node.input:
                bias_adds.setdefault(name, []).extend(other for other in node.input if other in initializers)
    owners: dict[str, set[str]] = {}
    for node in model.graph.node:
        layer = layer_of(node.name, layer_nodes) if node.op_type in COMPUTE_OPS else None
        if layer is None:
            continue
        read = list(node.input[1:3])  # weight and bias of Conv, Gemm and MatMul
        if node.op_type == "MatMul":
            read += bias_adds.get(node.output[0], [])
        for name in read:
            producer = producers.get(name)
            for tensor in producer.input if producer is not None and producer.op_type == "DequantizeLinear" else [name]:
                if tensor in initializers:
                    owners.setdefault(tensor, set()).add(layer)
    return {tensor: layers.pop() for tensor, layers in owners.items() if len(layers) == 1}


def profile_nodes(
    path: str | Path, inputs: Inputs, layer_nodes: dict[str, str], threads: int = 2, batch: int = 32, runs: int = 10
) -> list[NodeTime]:
    """Kernel time per node (median over ``runs`` after one warm-up run: a run slowed by another
    process moves it less than a mean), slowest first."""
    if runs < 1:
        raise CompressError(f"runs {runs} is not allowed; profile at least 1 run")
    with tempfile.TemporaryDirectory() as folder:
        session, _, layers = _optimized_session(path, threads, Path(folder), layer_nodes, profile=True)
        feed = timing_feed(inputs, batch)
        session.run(None, feed)
        for _ in range(runs):
            session.run(None, feed)
        events = json.loads(Path(session.end_profiling()).read_text())
    durations: dict[str, list[float]] = {}
    ops: dict[str, str] = {}
    for event in events:
        if event.get("cat") == "Node" and event.get("name", "").endswith("_kernel_time"):
            node = event["name"][: -len("_kernel_time")]
            if node in ops:  # the first event of each node is the warm-up run's (profiling is on from the start)
                durations.setdefault(node, []).append(event["dur"] / 1000)
            ops[node] = event.get("args", {}).get("op_name", "")
    medians = Counter({node: float(np.median(values)) for node, values in durations.items()})
    total = sum(medians.values()) or 1.0
    return [NodeTime(node, ops[node], layers.get(node), ms, ms / total) for node, ms in medians.most_common()]


QDQ_OPS = ("QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear")


def layer_times(times: list[NodeTime]) -> dict[str, float]:
    """Kernel ms per layer: every node of the optimized graph that computes it (its fused activation
    too), quantize / dequantize nodes left out."""
    totals: dict[str, float] = {}
    for time in times:
        if time.layer is not None and time.op_type not in QDQ_OPS:
            totals[time.layer] = totals.get(time.layer, 0.0) + time.ms
    return totals


def op_census(path: str | Path, layer_nodes: dict[str, str], threads: int = 1) -> OpCensus:
    """Count integer and float compute nodes in the graph ORT actually runs."""
    with tempfile.TemporaryDirectory() as folder:
        _, model, layers = _optimized_session(path, threads, Path(folder), layer_nodes)
    integer = Counter(node.op_type for node in model.graph.node if node.op_type in INTEGER_COMPUTE_OPS)
    floating = [node for node in model.graph.node if node.op_type in FLOAT_COMPUTE_OPS]
    return OpCensus(
        dict(integer),
        dict(Counter(node.op_type for node in floating)),
        [layers[n.name] for n in floating if n.name in layers],
    )


def _optimized_session(
    path: str | Path, threads: int, folder: Path, layer_nodes: dict[str, str], profile: bool = False
) -> tuple[Any, onnx.ModelProto, dict[str, str]]:
    """A session on ``path`` (profiling into ``folder`` when asked), the graph ORT optimized from it,
    and ``node_layers`` of that graph."""
    optimized = folder / "optimized.onnx"
    session = make_session(
        path, threads, profile_prefix=str(folder / "profile") if profile else None, optimized_path=optimized
    )
    model = _graph(optimized)
    return session, model, node_layers(model, _graph(path), layer_nodes)


def _graph(path: str | Path) -> onnx.ModelProto:
    """The graph of an ONNX file, without loading external weight data (only names are needed)."""
    return onnx.load(str(path), load_external_data=False)
