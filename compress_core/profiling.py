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

import numpy as np
import onnx

from .latency import batch_of, make_session

FLOAT_COMPUTE_OPS = ("Conv", "MatMul", "Gemm", "FusedConv", "FusedMatMul", "FusedGemm")
INTEGER_COMPUTE_OPS = (
    "QLinearConv", "ConvInteger", "MatMulInteger", "QLinearMatMul", "QGemm", "MatMulIntegerToFloat",
    "DynamicQuantizeMatMul", "DynamicQuantizeLSTM", "QAttention",
)


@dataclass(frozen=True)
class NodeTime:
    """Mean kernel time per run of one node of the optimized graph, and the layer it belongs to."""

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


def profile_nodes(
    path: str | Path, inputs: np.ndarray, layer_nodes: dict[str, str], threads: int = 2, batch: int = 32, runs: int = 10
) -> list[NodeTime]:
    """Kernel time per node (mean over ``runs`` after one warm-up run), slowest first."""
    with tempfile.TemporaryDirectory() as folder:
        session = make_session(path, threads, profile_prefix=str(Path(folder) / "profile"))
        name = session.get_inputs()[0].name
        feed = batch_of(inputs, batch)
        session.run(None, {name: feed})
        for _ in range(runs):
            session.run(None, {name: feed})
        events = json.loads(Path(session.end_profiling()).read_text())
    totals: Counter[str] = Counter()
    ops: dict[str, str] = {}
    for event in events:
        if event.get("cat") == "Node" and event.get("name", "").endswith("_kernel_time"):
            node = event["name"][: -len("_kernel_time")]
            totals[node] += event["dur"] / 1000
            ops[node] = event.get("args", {}).get("op_name", "")
    total = sum(totals.values()) or 1.0
    runs_seen = runs + 1
    return [
        NodeTime(node, ops[node], layer_of(node, layer_nodes), ms / runs_seen, ms / total)
        for node, ms in totals.most_common()
    ]


def op_census(path: str | Path, layer_nodes: dict[str, str], threads: int = 1) -> OpCensus:
    """Count integer and float compute nodes in the graph ORT actually runs."""
    with tempfile.TemporaryDirectory() as folder:
        optimized = Path(folder) / "optimized.onnx"
        make_session(path, threads, optimized_path=optimized)
        model = onnx.load(str(optimized))
    integer = Counter(node.op_type for node in model.graph.node if node.op_type in INTEGER_COMPUTE_OPS)
    floating = [node for node in model.graph.node if node.op_type in FLOAT_COMPUTE_OPS]
    layers = [layer for layer in (layer_of(node.name, layer_nodes) for node in floating) if layer is not None]
    return OpCensus(dict(integer), dict(Counter(node.op_type for node in floating)), layers)
