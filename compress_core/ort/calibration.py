"""Activation ranges for static int8: only the tensors the quantizer needs, collected batch by batch.

ONNX Runtime's calibrators (inside ``quantize_static``) keep every float tensor of every op type they
might quantize, for every batch, and their Entropy and Percentile collectors stack each tensor's
batches with ``np.asarray``. When two batches differ in shape (the last batch of 40 sentences in
batches of 16, a tensor whose shape follows the data) that stack fails with "inhomogeneous shape",
and the error names no tensor.

Here the calibrated tensors are the float activations going into and out of the nodes the quantizer
will quantize (its op types, minus the nodes kept float), each batch is run once in a session that
exposes just those tensors, and each tensor's values go into ORT's own histogram collector one batch
at a time (MinMax is a running minimum and maximum). The ranges reach ``quantize_static`` through
its calibration cache, so that its quantizer treats them exactly as ranges it computed itself.

A tensor holding values near float32's limits (an attention mask filled with ``finfo.min``, and
the scores it is added to) is not quantized at all: the nodes that read or write it stay float
(``Calibration.float_nodes``). No histogram spans such values, and with them in range every
ordinary value would round to zero. A failure names the tensor, and what works instead: minmax
where the values are finite, and, for values no method maps to integers (inf, NaN), keeping the
layers that touch them float.
"""

from __future__ import annotations

import contextlib
import inspect
import io
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from compress_core.errors import CompressError, first_line

HISTOGRAM_SETTINGS: dict[str, dict[str, Any]] = {  # ORT's create_calibrator defaults for each method
    "entropy": {"symmetric": False, "num_bins": 128, "num_quantized_bins": 128, "percentile": 99.999},
    "percentile": {"symmetric": True, "num_bins": 2048, "num_quantized_bins": 128, "percentile": 99.999},
}
FLOAT_TYPES = (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16)
FILL_LIMIT = float(np.finfo(np.float32).max) / 4  # a fill value (mask); beyond it a histogram's range overflows


def quantized_op_types() -> list[str]:
    """Every op type ORT's static quantizer (QDQ and QOperator) can quantize: its default selection."""
    from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry

    return sorted(set(QLinearOpsRegistry) | set(QDQRegistry))


def supports_calibration_cache() -> bool:
    """Whether this ONNX Runtime's ``quantize_static`` takes precomputed ranges (``calibration_cache_path``)."""
    from onnxruntime.quantization import quantize_static

    return "calibration_cache_path" in inspect.signature(quantize_static).parameters


def calibrated_tensors(
    model: onnx.ModelProto, op_types: Iterable[str], excluded: Iterable[str]
) -> dict[str, list[str]]:
    """The float activations (not initializers) in and out of every node ``quantize_static`` will
    quantize (an op type in ``op_types``, not a (De)QuantizeLinear, not in ``excluded``), in graph
    order, each with the names of those nodes that read or write it."""
    types = {value.name: value.type for value in [*model.graph.value_info, *model.graph.input, *model.graph.output]}
    initializers = {init.name for init in model.graph.initializer}
    wanted, skipped = set(op_types), set(excluded)
    tensors: dict[str, list[str]] = {}
    for node in model.graph.node:
        if node.op_type not in wanted or node.op_type in ("QuantizeLinear", "DequantizeLinear") or node.name in skipped:
            continue
        for name in [*node.input, *node.output]:
            kind = types.get(name)
            if (
                name
                and name not in initializers
                and kind is not None
                and kind.HasField("tensor_type")
                and kind.tensor_type.elem_type in FLOAT_TYPES
            ):
                users = tensors.setdefault(name, [])
                if node.name not in users:
                    users.append(node.name)
    return tensors


@dataclass
class Calibration:
    """Ranges for ``quantize_static`` (ORT ``TensorsData``), and the tensors holding values near
    float32's limits (``fill_tensors``: beyond ``FILL_LIMIT``, such as an attention mask filled with
    float32's lowest value) with the nodes that read or write them (``float_nodes``), which are to
    stay float: 256 levels cannot hold -3.4e38 and an attention score side by side."""

    ranges: Any
    fill_tensors: list[str] = field(default_factory=list)
    float_nodes: list[str] = field(default_factory=list)


def calibrate(
    model: onnx.ModelProto,
    batches: Iterable[dict[str, np.ndarray]],
    method: str,
    tensors: Mapping[str, list[str]],
    layer_of_node: Mapping[str, str] | None = None,
) -> Calibration:
    """The ``method`` range (``minmax``, ``entropy``, ``percentile``) of every tensor of ``tensors``
    (``calibrated_tensors``), over the ``batches`` (input feeds).

    ``layer_of_node`` (node name -> plan layer) lets an error say which layers to keep float. Raises
    ``CompressError`` naming the tensor when its values cannot be calibrated.
    """
    from onnxruntime.quantization.calibrate import CalibrationMethod, HistogramCollector, TensorData, TensorsData

    from compress_core.models.sessions import make_session

    graph_inputs = {value.name for value in model.graph.input}
    fetched = [name for name in tensors if name not in graph_inputs]
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    outputs = {output.name for output in probe.graph.output}
    types = {value.name: value for value in probe.graph.value_info}
    probe.graph.output.extend(types[name] for name in fetched if name not in outputs)
    session = make_session(probe, optimize=False, label="the model being calibrated")
    collector = None
    if method != "minmax":
        collector = HistogramCollector(method=method, scenario="same", **HISTOGRAM_SETTINGS[method])
    lowest: dict[str, float] = {}
    highest: dict[str, float] = {}
    beyond: dict[str, None] = {}  # tensors holding fill values
    batch_count = 0
    with contextlib.redirect_stdout(io.StringIO()):  # ORT's collector prints progress on every call
        for feed in batches:
            batch_count += 1
            try:  # (an empty list of names would fetch every output)
                values = dict(zip(fetched, session.run(fetched, feed) if fetched else [], strict=True))
            except Exception as exc:  # noqa: BLE001 - ORT's errors carry no common type
                raise CompressError(
                    f"int8 calibration: the model did not run on the calibration data ({first_line(exc, 200)})"
                ) from exc
            values.update({name: feed[name] for name in tensors if name in graph_inputs})
            for name in tensors:
                array = np.asarray(values[name])
                if not array.size:
                    continue
                if not np.isfinite(array).all():
                    raise CompressError(_non_finite_message(model, name, method, tensors[name], layer_of_node or {}))
                low, high = float(array.min()), float(array.max())
                lowest[name], highest[name] = min(lowest.get(name, low), low), max(highest.get(name, high), high)
                if max(-low, high) > FILL_LIMIT:
                    beyond[name] = None
                if collector is None or name in beyond:
                    continue
                try:
                    collector.collect({name: array})
                except Exception as exc:  # noqa: BLE001 - numpy and ORT raise many types
                    raise CompressError(_method_message(model, name, method, first_line(exc, 160))) from exc
        if batch_count == 0:
            raise CompressError("int8 calibration: there is no calibration data")
        ranges = {name: _tensor_data(TensorData, lowest.get(name, 0.0), highest.get(name, 0.0)) for name in tensors}
        float_nodes = list(dict.fromkeys(node for name in beyond for node in tensors[name]))
        if collector is None:
            return Calibration(TensorsData(CalibrationMethod.MinMax, ranges), list(beyond), float_nodes)
        try:
            found = collector.compute_collection_result() if collector.get_histogram_dict() else {}
        except Exception as exc:  # noqa: BLE001 - numpy and ORT raise many types
            raise CompressError(
                _method_message(model, _failing_histogram(collector, method), method, first_line(exc, 160))
            ) from exc
    for name, result in found.items():
        if name not in beyond:
            ranges[name] = _tensor_data(TensorData, result[0], result[1])
    enum = CalibrationMethod.Entropy if method == "entropy" else CalibrationMethod.Percentile
    return Calibration(TensorsData(enum, ranges), list(beyond), float_nodes)


def save_ranges(ranges: Any, path: Path) -> Path:
    """Write ``TensorsData`` where ``quantize_static(calibration_cache_path=path)`` reads it."""
    from onnxruntime.quantization.calibrate import save_tensors_data

    save_tensors_data(ranges, path)
    return path


def _tensor_data(tensor_data: Any, low: Any, high: Any) -> Any:
    return tensor_data(lowest=np.asarray(low, dtype=np.float32), highest=np.asarray(high, dtype=np.float32))


def _failing_histogram(collector: Any, method: str) -> str:
    """The tensor whose histogram the collector cannot turn into a range (tried one at a time)."""
    from onnxruntime.quantization.calibrate import HistogramCollector

    histograms = collector.get_histogram_dict()
    for name, histogram in histograms.items():
        single = HistogramCollector(method=method, scenario="same", **HISTOGRAM_SETTINGS[method])
        single.histogram_dict = {name: histogram}
        try:
            single.compute_collection_result()
        except Exception:  # noqa: BLE001 - this one fails: it is the one to name
            return str(name)
    return next(iter(histograms), "?")


def _where(model: onnx.ModelProto, tensor: str) -> str:
    """``output of Conv node 'x'``, ``input of the model``: where a tensor comes from."""
    for node in model.graph.node:
        if tensor in node.output:
            return f"output of {node.op_type} node '{node.name}'"
    return "input of the model"


def _method_message(model: onnx.ModelProto, tensor: str, method: str, reason: str) -> str:
    return (
        f"{method} calibration failed on tensor '{tensor}' ({_where(model, tensor)}): {reason}; "
        "minmax calibration handles this tensor (its values are finite): use the minmax method"
    )


def _non_finite_message(
    model: onnx.ModelProto, tensor: str, method: str, users: list[str], layer_of_node: Mapping[str, str]
) -> str:
    """The tensor holds inf or NaN, which no method maps to integers. It is calibrated because the
    quantized nodes in ``users`` touch it: when they are all layers of the plan, keeping them float
    is the remedy; otherwise only dynamic quantization (which quantizes the plan's layers alone) is."""
    text = (
        f"{method} calibration failed on tensor '{tensor}' ({_where(model, tensor)}): it holds inf or NaN values, "
        "which no calibration method maps to int8"
    )
    if users and all(user in layer_of_node for user in users):
        entries = ", ".join(f"{layer_of_node[user]}: null" for user in users)
        return f"{text}; keep the layers that read or write it float in the recipe (layers: {{{entries}}})"
    ops = {node.name: node.op_type for node in model.graph.node}
    others = ", ".join(f"{ops.get(user, '?')} node '{user}'" for user in users if user not in layer_of_node)
    return (
        f"{text}; static quantization quantizes {others}, which no recipe entry keeps float: "
        "use dynamic quantization, which quantizes only the plan's layers"
    )
