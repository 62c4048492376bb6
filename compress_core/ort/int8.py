"""Integer ONNX models from a compressed handle, through ONNX Runtime's own quantizer.

The plan maps onto ORT's controls, layer by layer (the pipeline's layer map, ``ort.layer_map``,
gives each layer's node and weight tensor in the fp32 export):

- a layer kept float (``bits: null``) goes to ``nodes_to_exclude``;
- 8-bit weights are stored as ``QInt8``, 4-bit as ``QInt4`` and 16-bit as ``QInt16`` through
  ``extra_options["TensorQuantOverrides"]``, per channel where the plan says ``granularity: channel``;
- 2, 3, 5, 6 and 7 bits are stored in ``QInt8`` holding the plan's grid.

For the uniform schemes (symmetric, asymmetric) the override carries the plan's own scale and zero
point, rescaled by whatever the exporter folded into the weight (BatchNorm), so that the integers
ORT stores are exactly the plan's levels. ``pow2`` and ``kmeans`` grids are not uniform: ORT picks
a uniform grid of the storage type, which approximates them (the result's notes say so).

Static quantization (QDQ, activations calibrated on the evaluation data) is the default;
``dynamic=True`` uses ``quantize_dynamic`` (weights only, activations quantized at run time), the
usual choice for transformers: exactly the planned layers are quantized, their weights per channel
or per tensor as the plan says.

Static calibration feeds every input of the model (``EvalDataReader`` over ``Inputs``, in batches of
the model's static batch size where it has one) and computes the activation ranges itself
(``ort.calibration``: only the float tensors of the nodes being quantized, batch by batch), so that
entropy and percentile work wherever minmax does.

A model that is already quantized (ConvInteger, QLinearConv, QDQ pairs, ...) is not quantized
again: its int8 file is the model as it is, and the result's notes say so.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from compress_core.atomic import atomic_write
from compress_core.errors import CompressError, first_line
from compress_core.models.handle import ModelHandle
from compress_core.models.inputs import Inputs, in_batches
from compress_core.models.onnx_graph import compressible_nodes
from compress_core.models.onnx_quantized import quantized_op_counts
from compress_core.ort.calibration import (
    Calibration,
    calibrate,
    calibrated_tensors,
    quantized_op_types,
    save_ranges,
    supports_calibration_cache,
)
from compress_core.ort.conv_channels import PaddedConv, pad_in_integers, pad_input_channels
from compress_core.ort.cpu import cpu_features
from compress_core.ort.int8_path import Int8Path, narrow_convs, resolve_path, unsigned_overrides, with_exact_layers
from compress_core.ort.layer_map import LayerTarget
from compress_core.ort.prep import INT4_OPSET, MIN_OPSET, prepare_for_quantization
from compress_core.ort.saturation import LayerSaturation
from compress_core.ort.smooth import SMOOTHED_OPS, input_ranges, smooth_inputs, uneven_inputs
from compress_core.pipeline import PreparedModel

CALIBRATION_METHODS = ("minmax", "entropy", "percentile")
ACTIVATION_TYPES = ("uint8", "int8")
CALIBRATION_BATCH = 16
STORAGE_BITS = {4: "QInt4", 16: "QInt16"}  # every other bit width is stored in QInt8
UNIFORM_SCHEMES = ("symmetric", "asymmetric")
HINTED_LAYERS = 5  # the most uneven inputs a smoothing hint names
TABLE_BLOCK = 32  # block size of an embedding table whose plan grid cannot be stored exactly


@dataclass(frozen=True)
class Int8Options:
    """How to quantize: calibration ``method`` and ``calibration_samples`` (static only), and
    ``dynamic`` for ``quantize_dynamic``. The int8 path is chosen for this CPU by a rule
    (``ort.int8_path``); each of the following, when not None, overrides its choice: the activation
    type (``uint8``: U8S8 with int8 weights; ``int8``: S8S8, static only), the ``weights`` type
    (``uint8``: U8U8, exact on x86 without VNNI), ``reduce_range`` (7-bit weights),
    ``per_channel`` weights (None: as the plan says), ``float_narrow_convs`` (static: keep float
    the Conv layers that read a single input channel) and ``pad_conv_channels`` (static: pad Conv
    inputs to a multiple of 4 channels for ORT's fast int8 conv kernels, ``ort.conv_channels``)."""

    method: str = "minmax"
    calibration_samples: int = 64
    activations: str | None = None
    dynamic: bool = False
    weights: str | None = None
    reduce_range: bool | None = None
    per_channel: bool | None = None
    float_narrow_convs: bool | None = None
    pad_conv_channels: bool | None = None

    def __post_init__(self) -> None:
        if self.method not in CALIBRATION_METHODS:
            raise CompressError(
                f"calibration method '{self.method}' is not allowed; use one of {', '.join(CALIBRATION_METHODS)}"
            )
        if (
            isinstance(self.calibration_samples, bool)
            or not isinstance(self.calibration_samples, int)
            or self.calibration_samples < 1
        ):
            raise CompressError(f"calibration samples {self.calibration_samples!r} is not allowed; use an integer >= 1")
        for name, value in (("activation", self.activations), ("weight", self.weights)):
            if value is not None and value not in ACTIVATION_TYPES:
                raise CompressError(f"{name} type '{value}' is not allowed; use uint8 or int8")


@dataclass(frozen=True)
class Int8Layer:
    """What happened to one layer: its node, planned bits and ONNX storage (``float`` when excluded)."""

    layer: str
    node: str
    bits: int | None
    storage: str


@dataclass
class Int8Result:
    """The written model's path, one ``Int8Layer`` per mapped layer, and sentences for the report."""

    path: Path
    mode: str
    layers: list[Int8Layer]
    notes: list[str] = field(default_factory=list)
    choice: Int8Path | None = None  # the int8 path taken, and the rule that chose it
    saturation: list[LayerSaturation] = field(default_factory=list)  # U8S8 measured where it can saturate
    padded: list[PaddedConv] = field(default_factory=list)  # Conv layers whose input channels were padded


class EvalDataReader:
    """ORT's ``CalibrationDataReader`` protocol over evaluation inputs: ``get_next()`` -> ``{name: batch}``
    for every input of the model.

    Batches hold ``batch`` samples, or ``fixed_batch`` for a model with a static batch size (the last
    one filled up by repeating its last sample, as ``ModelHandle.input_batches`` does). ``check`` is
    called before each batch is handed out: it raises to stop a long calibration (``Tracker.check``).
    """

    def __init__(
        self,
        inputs: Inputs,
        batch: int = CALIBRATION_BATCH,
        fixed_batch: int | None = None,
        check: Callable[[], None] | None = None,
    ) -> None:
        self.batches = [part.feed() for part in in_batches(inputs, batch, fixed_batch)]
        self.position = 0
        self.check = check or (lambda: None)

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self.position >= len(self.batches):
            return None
        self.check()
        self.position += 1
        return self.batches[self.position - 1]

    def rewind(self) -> None:
        self.position = 0

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        for feed in self.batches:
            self.check()
            yield feed

    def __len__(self) -> int:
        return len(self.batches)


def calibration_inputs(inputs: Inputs, samples: int) -> Inputs:
    """``samples`` samples spread evenly over the evaluation inputs (all of them when there are fewer)."""
    if samples >= len(inputs):
        return inputs
    return inputs[np.linspace(0, len(inputs) - 1, samples).round().astype(int)]


def quantize_int8(
    compressed: PreparedModel,
    path: str | Path,
    options: Int8Options = Int8Options(),
    check: Callable[[], None] | None = None,
) -> Int8Result:
    """Write the integer ONNX model of ``compressed`` (``CompressedModel.compressed``) to ``path``.

    Quantizes the model's cached fp32 export, with its cached inventory and layer map. Raises
    ``CompressError`` naming the op and layer when a planned layer cannot be quantized. ``check``
    is called between calibration batches and may raise to stop (``budget.Stopped``: nothing is
    written then).
    """
    from onnxruntime.quantization import QuantType

    handle = compressed.handle
    if handle.compression is None:
        raise CompressError(f"model '{handle.name}' carries no plan; apply a plan (compress) before int8 export")
    already = quantized_op_counts(compressed.onnx_model)
    if already:
        return _as_loaded(compressed, path, already)
    layers, targets = compressed.inventory, compressed.layer_targets
    quantized = handle.compression.quantized
    tables_of = {layer.weight_name for layer in layers if layer.embedding}  # stored by block_quant at any opset
    wide = not options.dynamic and any(
        grid.bits in STORAGE_BITS for name, grid in quantized.items() if name not in tables_of
    )
    model, notes = prepare_for_quantization(compressed.onnx_model, INT4_OPSET if wide else MIN_OPSET)
    layer_of_node = {target.node: target.layer for target in targets.values()}
    strengths, unsmoothable = _smooth_strengths(compressed, quantized)
    if unsmoothable:
        notes.append(
            f"smooth, set by a default or pattern entry, skips {', '.join(unsmoothable)}: it rescales MatMul and Gemm inputs only"
        )
    if strengths and not options.dynamic:
        raise CompressError(
            f"smooth is set on {', '.join(layer_of_node.get(node, node) for node in list(strengths)[:3])}"
            f"{' and more' if len(strengths) > 3 else ''}: it acts on dynamic int8 exports (export --int8 "
            "--dynamic, or Dynamic on the Export page), whose inputs ONNX Runtime quantizes at run time; a "
            "static export would quantize the smoothing itself. Export dynamic, or remove smooth from the plan"
        )
    ranges: dict[str, np.ndarray] = {}
    if options.dynamic:  # one pass over the calibration data measures the inputs to smooth, and to hint at
        probed = set(strengths) | {target.node for target in targets.values() if target.op_type in SMOOTHED_OPS}
        ranges = input_ranges(model, probed, _calibration_reader(handle, options, check))
    if strengths:
        model, smoothed = smooth_inputs(model, strengths, layer_of_node, ranges)
        notes.extend(layer.describe() for layer in smoothed)
    weights = {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}
    out_axes = {use.node_name: use.out_axis for use in compressible_nodes(model)}
    unmapped = [layer.name for layer in layers if layer.name not in targets]
    if unmapped:
        notes.append(f"no ONNX node for {', '.join(unmapped)} (the export dropped it: its output is unused)")
    choice = options_path(options)
    narrow = narrow_convs(model, {name: t.node for name, t in targets.items()}) if choice.float_narrow_convs else []
    excluded, overrides, report = [], {}, []
    symmetric_int8: dict[str, str] = {}  # layer -> node: int8 weights whose zero points are all 0
    dynamic_nodes: dict[bool, list[str]] = {True: [], False: []}  # per channel? -> nodes
    tables: dict[str, Any] = {}  # embedding Gather node -> the plan's grid (GatherBlockQuantized after ORT)
    for layer in layers:
        target = targets.get(layer.name)
        if target is None:
            continue
        grid = quantized.get(layer.weight_name, quantized.get(layer.name))
        if layer.embedding:
            excluded.append(target.node)  # ORT's own Gather quantization is per tensor, 8-bit: never used
            if grid is not None:
                tables[target.node] = grid
            report.append(Int8Layer(layer.name, target.node, None if grid is None else grid.bits, "float"))
            continue
        if grid is None or layer.name in narrow:
            excluded.append(target.node)
            report.append(Int8Layer(layer.name, target.node, None if grid is None else grid.bits, "float"))
            continue
        storage = STORAGE_BITS.get(grid.bits, "QInt8")
        report.append(Int8Layer(layer.name, target.node, grid.bits, storage))
        per_channel = grid.granularity == "channel" if choice.per_channel is None else choice.per_channel
        if options.dynamic:
            dynamic_nodes[per_channel].append(target.node)
            continue
        _check_static_support(target, out_axes)
        override, exact = weight_override(
            weights[target.weight_tensor], out_axes[target.node], grid, getattr(QuantType, storage), per_channel
        )
        overrides[target.weight_tensor] = override
        if storage == "QInt8" and all(entry.get("zero_point", 0) == 0 for entry in override):
            symmetric_int8[layer.name] = target.node
        if not exact:
            notes.append(
                f"{layer.name}: the {grid.bits}-bit {grid.scheme} grid is stored as {storage} on ORT's uniform grid (approximated)"
            )
        elif storage == "QInt8" and grid.bits != 8:
            notes.append(
                f"{layer.name}: {grid.bits}-bit weights are stored in int8, holding the plan's {2**grid.bits}-level grid exactly"
            )
    if options.dynamic:
        notes.extend(_dynamic_notes(report, model, weights, set(tables)))
        notes.extend(_smoothing_hint(dynamic_nodes, strengths, layer_of_node, ranges))

    if narrow:
        notes.append(
            f"{', '.join(narrow)} stay{'s' if len(narrow) == 1 else ''} float: a Conv reading one input channel "
            "gains nothing in int8 (its dot products are kh*kw long) and costs a quantize and a layout change"
        )

    file_notes: list[str] = []  # what writing the file says: replaced, not added to, when it is written again
    padded: list[PaddedConv] = []

    def write(temporary: Path) -> None:
        file_notes.clear()
        padded.clear()
        exact = {targets[layer].weight_tensor for layer in choice.exact_layers if layer in targets}
        if options.dynamic:
            try:
                quantize_dynamic_by_granularity(
                    model,
                    temporary,
                    dynamic_nodes[True],
                    dynamic_nodes[False],
                    choice.weights,
                    choice.reduce_range,
                    exact,
                )
            except Exception as exc:  # ORT raises many types; the message names where it failed
                raise CompressError(_failure_message(exc, model, targets)) from exc
        else:
            static_model = model
            if choice.pad_conv_channels and choice.weights == "int8":  # U8U8 has no symmetric conv kernels
                unsigned = set(choice.exact_layers)
                eligible = {layer: node for layer, node in symmetric_int8.items() if layer not in unsigned}
                static_model, convs = pad_input_channels(model, eligible)
                padded.extend(convs)
            file_notes.extend(
                quantize_static_calibrated(
                    choice,
                    static_model,
                    temporary,
                    _calibration_reader(handle, options, check),
                    options,
                    excluded,
                    stored_overrides(overrides, choice.weights, exact),
                    layer_of_node,
                    targets,
                )
            )
        if padded:
            quantized = onnx.load(str(temporary))
            if pad_in_integers(quantized):
                onnx.save(quantized, str(temporary))
        if tables:
            file_notes.extend(quantize_embedding_tables(temporary, tables, report))

    written = atomic_write(path, write)
    saturation: list[LayerSaturation] = []
    if choice.measure_saturation:
        saturation, choice = _measure_u8s8(written, handle, options, targets, choice, notes)
        if choice.exact_layers:  # the saturating layers go U8U8: write the file again
            written = atomic_write(path, write)
    _check_weights_quantized(onnx.load(str(written)), targets, report)
    notes.extend(file_notes)
    notes.extend(conv.describe() for conv in padded)
    notes.insert(0, f"int8 path: {choice.describe()}")
    return Int8Result(written, "dynamic" if options.dynamic else "static", report, notes, choice, saturation, padded)


def stored_overrides(overrides: dict[str, Any], weights: str, exact: set[str]) -> dict[str, Any]:
    """The ``TensorQuantOverrides`` to write: ``overrides`` (int8 weights), all restated for uint8 storage
    when ``weights`` is ``uint8`` (U8U8), else those of the weight tensors in ``exact`` only."""
    from onnxruntime.quantization import QuantType

    if weights == "uint8":
        return unsigned_overrides(overrides, QuantType.QUInt8)
    moved = unsigned_overrides({name: overrides[name] for name in exact if name in overrides}, QuantType.QUInt8)
    return {**overrides, **moved}


def options_path(options: Int8Options) -> Int8Path:
    """The int8 path for this CPU (``ort.int8_path``), with the overrides that ``options`` sets."""
    return resolve_path(
        cpu_features(),
        options.dynamic,
        options.activations,
        options.weights,
        options.reduce_range,
        options.per_channel,
        options.float_narrow_convs,
        options.pad_conv_channels,
    )


def _measure_u8s8(
    written: Path,
    handle: Any,
    options: Int8Options,
    targets: dict[str, LayerTarget],
    choice: Int8Path,
    notes: list[str],
) -> tuple[list[LayerSaturation], Int8Path]:
    """Measure the U8S8 file's saturation on this CPU kind (``ort.saturation``, on the calibration
    samples): the path, measured, with the layers whose output moves by more than
    ``SATURATION_TOLERANCE`` to be stored U8U8 (exact). Says which, with the figures, in ``notes``."""
    from compress_core.ort.int8_path import SATURATION_TOLERANCE
    from compress_core.ort.saturation import measure_saturation

    rows = measure_saturation(
        written,
        calibration_inputs(handle.data.inputs, options.calibration_samples),
        {layer: target.node for layer, target in targets.items()},
    )
    worst = rows[0] if rows else None
    if worst is None or worst.relative_error <= SATURATION_TOLERANCE:
        moved = f"{worst.relative_error:.2%} at most ({worst.layer or worst.node})" if worst else "nothing"
        notes.append(
            f"U8S8 kept: without VNNI its 16-bit pair sums move the layers' outputs by {moved} on the evaluation "
            f"data, within {SATURATION_TOLERANCE:.1%}"
        )
        return rows, replace(choice, measure_saturation=False)
    over = [row for row in rows if row.relative_error > SATURATION_TOLERANCE]
    movable = [row.layer for row in over if row.layer is not None]  # a node outside the plan has no override
    unplanned = [row.node for row in over if row.layer is None]
    kept = next((row for row in rows if row.relative_error <= SATURATION_TOLERANCE), None)
    notes.append(
        f"U8S8 would saturate on this CPU in {len(over)} layer(s): {worst.layer or worst.node}'s output moves by "
        f"{worst.relative_error:.2%} (16-bit pair sums against the exact integer sums, on the evaluation data; "
        f"{SATURATION_TOLERANCE:.1%} allowed). "
        + (f"The weights of {', '.join(movable)} are stored in uint8 (U8U8, exact here)" if movable else "")
        + (
            f"{'; ' if movable else ''}{', '.join(unplanned)} (no layer of the plan) cannot be moved and keep U8S8"
            if unplanned
            else ""
        )
        + "; the other layers keep U8S8"
        + (f" (the most moved: {kept.layer or kept.node}, {kept.relative_error:.2%})" if kept else "")
    )
    return rows, with_exact_layers(choice, movable)


def quantize_embedding_tables(path: Path, tables: dict[str, Any], report: list[Int8Layer]) -> list[str]:
    """Store the planned embedding tables of the ONNX file at ``path`` (Gather node -> the plan's grid) as
    ``GatherBlockQuantized`` (``ort.block_quant``), in place; update their ``report`` rows' storage and
    return sentences for the notes."""
    from compress_core.ort.block_quant import replace_gather, table_codes

    model = onnx.load(str(path))
    weights = {init.name: init for init in model.graph.initializer}
    nodes = {node.name: node for node in model.graph.node}
    notes = []
    for node_name, grid in tables.items():
        table = numpy_helper.to_array(weights[nodes[node_name].input[0]])
        codes = table_codes(table, grid, TABLE_BLOCK)
        replace_gather(model, node_name, codes)
        position = next(i for i, row in enumerate(report) if row.node == node_name)
        storage = f"{codes.bits}-bit GatherBlockQuantized"
        report[position] = Int8Layer(report[position].layer, node_name, grid.bits, storage)
        if not codes.exact:
            notes.append(
                f"{report[position].layer}: the {grid.bits}-bit {grid.scheme} table is stored in {codes.bits} bits "
                f"with min/max per block of {TABLE_BLOCK} (approximated)"
            )
    onnx.save(model, str(path))
    return notes


def quantize_dynamic_by_granularity(
    model: onnx.ModelProto,
    path: Path,
    per_channel: list[str],
    per_tensor: list[str],
    weights: str = "int8",
    reduce_range: bool = False,
    exact: set[str] | None = None,
) -> None:
    """``quantize_dynamic`` of exactly the named nodes, weights per channel or per tensor as listed.

    ORT's ``per_channel`` flag holds for a whole call, so a plan that mixes both takes two passes:
    the per-channel nodes first, then the per-tensor ones of that result. Nodes in neither list
    stay float. ``weights`` is the weight type and ``reduce_range`` ORT's flag. ``uint8`` weights
    (U8U8) are the int8 ones moved up by 128 with their zero points (``unsigned_integer_weights``):
    quantizing straight to ORT's uint8 grid would round the plan's symmetric grid a second time. With
    ``int8`` weights, those of the weight tensors in ``exact`` are stored so all the same.
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic

    passes = [(nodes, flag) for nodes, flag in ((per_channel, True), (per_tensor, False)) if nodes]
    if not passes:
        onnx.save(model, str(path))
        return
    with tempfile.TemporaryDirectory() as scratch:
        source: onnx.ModelProto | str = model
        for index, (nodes, flag) in enumerate(passes):
            target = path if index == len(passes) - 1 else Path(scratch) / "first_pass.onnx"
            quantize_dynamic(
                source,
                target,
                per_channel=flag,
                reduce_range=reduce_range,
                weight_type=QuantType.QInt8,
                nodes_to_quantize=nodes,
            )
            source = str(target)
    if weights == "uint8" or exact:
        only = None if weights == "uint8" else {f"{name}_quantized" for name in exact or ()}
        shifted = unsigned_integer_weights(onnx.load(str(path)), only)
        onnx.save(shifted, str(path))


def unsigned_integer_weights(model: onnx.ModelProto, only: set[str] | None = None) -> onnx.ModelProto:
    """``model`` with the int8 weights of its ``MatMulInteger`` / ``ConvInteger`` nodes (those whose
    weight is named in ``only``, when given) stored as uint8 on the same grid (values and zero points
    + 128), in place: ORT then runs its U8U8 kernels for them."""
    initializers = {init.name: init for init in model.graph.initializer}
    names = set()
    for node in model.graph.node:
        operands = list(node.input[1:4:2])  # B and its zero point (a node without one is left as it is)
        if (
            node.op_type in ("MatMulInteger", "ConvInteger")
            and len(operands) == 2
            and (only is None or operands[0] in only)
            and all(name in initializers and initializers[name].data_type == onnx.TensorProto.INT8 for name in operands)
        ):
            names.update(operands)
    for name in names:
        values = numpy_helper.to_array(initializers[name]).astype(np.int16) + 128
        initializers[name].CopyFrom(numpy_helper.from_array(values.astype(np.uint8), name))
    return model


def quantize_static_calibrated(
    choice: Int8Path,
    model: onnx.ModelProto,
    path: Path,
    reader: EvalDataReader,
    options: Int8Options,
    excluded: list[str],
    overrides: dict[str, Any],
    layer_of_node: dict[str, str],
    targets: dict[str, LayerTarget],
) -> list[str]:
    """Static QDQ ``quantize_static`` of ``model`` on the int8 path ``choice`` (activation and weight
    types, reduce_range), with activation ranges from ``ort.calibration``; returns sentences for the
    result's notes.

    Older ONNX Runtime releases, whose ``quantize_static`` takes no precomputed ranges, calibrate
    minmax themselves; entropy and percentile then need a newer release.
    """
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    op_types = quantized_op_types()
    arguments: dict[str, Any] = {
        "quant_format": QuantFormat.QDQ,
        "op_types_to_quantize": op_types,
        "activation_type": QuantType.QUInt8 if choice.activations == "uint8" else QuantType.QInt8,
        "weight_type": QuantType.QInt8 if choice.weights == "int8" else QuantType.QUInt8,
        "reduce_range": choice.reduce_range,
        "nodes_to_exclude": excluded,
        "calibrate_method": _calibration_method(options.method),
        "extra_options": {"TensorQuantOverrides": overrides},
    }
    if not supports_calibration_cache():
        if options.method != "minmax":
            raise CompressError(
                f"{options.method} calibration needs an ONNX Runtime whose quantize_static takes precomputed ranges "
                "(calibration_cache_path); upgrade onnxruntime or use the minmax method"
            )
        try:
            quantize_static(model, path, reader, **arguments)
        except Exception as exc:  # ORT raises many types; the message names where it failed
            raise CompressError(_failure_message(exc, model, targets)) from exc
        return []
    tensors = calibrated_tensors(model, op_types, excluded)
    calibration = calibrate(model, reader, options.method, tensors, layer_of_node)
    notes = []
    if calibration.float_nodes:
        _check_fill_values(calibration, layer_of_node)
        arguments["nodes_to_exclude"] = [*excluded, *calibration.float_nodes]
        shown = ", ".join(calibration.fill_tensors[:2]) + (", ..." if len(calibration.fill_tensors) > 2 else "")
        notes.append(
            f"{len(calibration.float_nodes)} node(s) stay float around {len(calibration.fill_tensors)} tensor(s) "
            f"holding values near float32's limits, as attention masks do ({shown}): int8 cannot hold them"
        )
    with tempfile.TemporaryDirectory() as scratch:
        cache = save_ranges(calibration.ranges, Path(scratch) / "ranges.json")
        try:
            quantize_static(model, path, None, calibration_cache_path=cache, **arguments)
        except Exception as exc:  # ORT raises many types; the message names where it failed
            raise CompressError(_failure_message(exc, model, targets)) from exc
    return notes


def _check_fill_values(calibration: Calibration, layer_of_node: dict[str, str]) -> None:
    """A planned layer (excluded ones are not calibrated) that reads or writes a tensor of fill values
    cannot be static int8: say to keep it float."""
    planned = [layer_of_node[node] for node in calibration.float_nodes if node in layer_of_node]
    if planned:
        entries = ", ".join(f"{layer}: null" for layer in planned)
        raise CompressError(
            f"layer '{planned[0]}' reads or writes a tensor holding values near float32's limits "
            f"({calibration.fill_tensors[0]}), which static int8 cannot hold; keep it float in the recipe "
            f"(layers: {{{entries}}}) or use dynamic quantization"
        )


def quantize_ort_default(
    fp32_path: str | Path, path: str | Path, inputs: Inputs, samples: int = 64, batch: int = CALIBRATION_BATCH
) -> Path:
    """ORT's ``quantize_static`` with its defaults (QDQ, S8S8, per-tensor, MinMax, its own calibration):
    the reference to beat. Every input is fed, in batches of ``batch`` (pass the model's static batch
    size where it has one); the last batch is filled up to ``batch`` by repeating its last sample,
    which leaves MinMax ranges unchanged."""
    from onnxruntime.quantization import quantize_static

    model, _ = prepare_for_quantization(onnx.load(str(fp32_path)))
    reader = EvalDataReader(calibration_inputs(inputs, samples), batch, batch)
    return atomic_write(path, lambda temporary: quantize_static(model, temporary, reader))


def weight_override(
    weight: np.ndarray, out_axis: int, grid: Any, quant_type: Any, per_channel: bool | None = None
) -> tuple[list[dict[str, Any]], bool]:
    """The ``TensorQuantOverrides`` entry for one exported weight and whether it keeps the plan's grid exactly.

    ``per_channel`` other than the plan's granularity (an override of the int8 path) stores the
    weight on ORT's own grid of that granularity (not exact).

    ``grid`` is the layer's ``QuantizedWeight`` (output channels on ``grid.axis``). The exported
    weight may be transposed (MatMul) and scaled per output channel (BatchNorm folding); the scale
    of each channel is recovered as the least-squares factor between the two.
    """
    planned = grid.granularity == "channel"
    if per_channel is not None and per_channel != planned:
        return ([{"quant_type": quant_type, "axis": out_axis}] if per_channel else [{"quant_type": quant_type}]), False
    per_channel = planned
    if grid.scheme not in UNIFORM_SCHEMES:
        return ([{"quant_type": quant_type, "axis": out_axis}] if per_channel else [{"quant_type": quant_type}]), False
    exported = np.moveaxis(weight, out_axis, 0).reshape(weight.shape[out_axis], -1).astype(np.float64)
    planned = np.moveaxis(grid.values.detach().double().numpy(), grid.axis, 0).reshape(exported.shape[0], -1)
    energy = (planned**2).sum(axis=1)
    factor = np.where(energy > 0, (exported * planned).sum(axis=1) / np.where(energy > 0, energy, 1.0), 1.0)
    scale = np.broadcast_to(grid.scale.double().numpy(), factor.shape) * np.abs(factor)
    scale = np.where(scale > 0, scale, 1.0)
    if grid.scheme == "asymmetric":
        zero = np.broadcast_to(grid.zero_point.numpy(), factor.shape).astype(np.int64)
        zero = np.where(factor < 0, 2**grid.bits - 1 - zero, zero) - 2 ** (grid.bits - 1)
    else:
        zero = np.zeros(factor.shape, dtype=np.int64)
    if not per_channel and np.allclose(scale, scale[0], rtol=1e-6) and (zero == zero[0]).all():
        return [{"quant_type": quant_type, "scale": float(scale[0]), "zero_point": int(zero[0])}], True
    return [
        {"quant_type": quant_type, "axis": out_axis, "scale": float(s), "zero_point": int(z)}
        for s, z in zip(scale, zero, strict=True)
    ], True


def _smooth_strengths(compressed: PreparedModel, quantized: dict[str, Any]) -> tuple[dict[str, float], list[str]]:
    """Node name -> migration strength of the quantized layers whose plan entry sets ``smooth``, and the
    layers a default or pattern entry sets it on that smoothing cannot rescale (not MatMul / Gemm).
    An exact entry on such a layer stays in: ``smooth_inputs`` refuses it, naming the layer."""
    plan = compressed.handle.compression.plan if compressed.handle.compression else None
    strengths, unsmoothable = {}, []
    for layer in compressed.inventory:
        config = plan.config_for(layer.name) if plan is not None else None
        target = compressed.layer_targets.get(layer.name)
        planned = layer.weight_name in quantized or layer.name in quantized
        if config is None or config.smooth is None or target is None or not planned or layer.embedding:
            continue
        if target.op_type not in SMOOTHED_OPS and plan is not None and layer.name not in plan.layers:
            unsmoothable.append(layer.name)
            continue
        strengths[target.node] = config.smooth
    return strengths, unsmoothable


def _smoothing_hint(
    dynamic_nodes: dict[bool, list[str]],
    strengths: dict[str, float],
    layer_of_node: dict[str, str],
    ranges: dict[str, np.ndarray],
) -> list[str]:
    """A sentence naming the dynamically quantized layers left unsmoothed whose inputs are uneven
    (``smooth.uneven_inputs``), when there are any."""
    unsmoothed = {
        node: layer_of_node[node] for nodes in dynamic_nodes.values() for node in nodes if node not in strengths
    }
    uneven = uneven_inputs(unsmoothed, ranges)
    if not uneven:
        return []
    shown = ", ".join(f"{layer} ({spread:.0f}x)" for layer, spread in uneven[:HINTED_LAYERS])
    more = f" and {len(uneven) - HINTED_LAYERS} more" if len(uneven) > HINTED_LAYERS else ""
    return [
        f"inputs with outlier channels (largest / median channel maximum): {shown}{more}; one grid per tensor "
        "rounds their other channels coarsely: smooth: 0.8 on these layers may help (it costs one Mul each)"
    ]


def _calibration_reader(handle: ModelHandle, options: Int8Options, check: Callable[[], None] | None) -> EvalDataReader:
    """The calibration feeds of ``handle``: ``options.calibration_samples`` of its evaluation inputs,
    in batches of ``CALIBRATION_BATCH`` (or of its static batch size)."""
    return EvalDataReader(
        calibration_inputs(handle.data.inputs, options.calibration_samples),
        CALIBRATION_BATCH,
        handle.fixed_batch,
        check,
    )


def _check_static_support(target: LayerTarget, out_axes: dict[str, int]) -> None:
    if target.node not in out_axes:
        raise CompressError(
            f"layer '{target.layer}': ONNX Runtime's static quantizer does not quantize {target.op_type} weights "
            f"(node '{target.node}'); keep the layer float in the recipe (layers: {{{target.layer}: null}}) "
            "or use dynamic quantization"
        )


def _dynamic_notes(
    report: list[Int8Layer], model: onnx.ModelProto, weights: dict[str, np.ndarray], tables: set[str]
) -> list[str]:
    """What dynamic quantization stores differently from the plan, and the weights it leaves float
    (``tables``: the embedding Gather nodes stored by ``quantize_embedding_tables``)."""
    notes = []
    odd = [f"{row.layer} ({row.bits}-bit)" for row in report if row.bits not in (None, 8) and row.node not in tables]
    if odd:
        notes.append(f"dynamic quantization stores every weight in int8 on ORT's grid: {', '.join(odd)} approximated")
    float_tables = {
        node.input[0]
        for node in model.graph.node
        if node.op_type == "Gather" and node.input[0] in weights and node.name not in tables
    }
    table_bytes = sum(weights[name].nbytes for name in float_tables if weights[name].dtype == np.float32)
    if table_bytes:
        notes.append(
            f"embedding tables kept float stay float32 ({table_bytes / 2**20:.1f} MiB): give them bits in the plan to shrink them"
        )
    return notes


def _calibration_method(name: str) -> Any:
    from onnxruntime.quantization import CalibrationMethod

    return {
        "minmax": CalibrationMethod.MinMax,
        "entropy": CalibrationMethod.Entropy,
        "percentile": CalibrationMethod.Percentile,
    }[name]


def _failure_message(exc: Exception, model: onnx.ModelProto, targets: dict[str, LayerTarget]) -> str:
    """One line naming the op and layer the quantizer choked on, with the remedy that fits the cause:
    a layer of the plan can be kept float; another node is left alone only by dynamic quantization."""
    text = first_line(exc, 200)
    for target in targets.values():
        if target.node in text or target.weight_tensor in text:
            return (
                f"int8 quantization failed at {target.op_type} node '{target.node}' (layer '{target.layer}'): {text}; "
                f"keep the layer float in the recipe (layers: {{{target.layer}: null}})"
            )
    for node in model.graph.node:
        if node.name and node.name in text:
            return (
                f"int8 quantization failed at {node.op_type} node '{node.name}', which is no layer of the plan: {text}; "
                "dynamic quantization quantizes only the plan's layers and leaves it float"
            )
    return f"int8 quantization failed in ONNX Runtime's quantizer: {text}"


def _as_loaded(compressed: PreparedModel, path: str | Path, counts: dict[str, int]) -> Int8Result:
    """The int8 file of a model that is already quantized: the model as it is."""
    model = compressed.onnx_model
    written = atomic_write(path, lambda temporary: onnx.save(model, str(temporary)))
    ops = ", ".join(f"{count} {op}" for op, count in counts.items())
    layers = [Int8Layer(layer.name, layer.name, None, layer.precision) for layer in compressed.inventory]
    note = f"the model is already quantized ({ops}): the int8 file is the model as loaded, not quantized again"
    return Int8Result(written, "as loaded", layers, [note])


def _check_weights_quantized(model: onnx.ModelProto, targets: dict[str, LayerTarget], report: list[Int8Layer]) -> None:
    """Every layer planned with bits must have its weight stored as integers: ORT skips some ops silently."""
    initializers = {init.name for init in model.graph.initializer}
    for row in report:
        target = targets[row.layer]
        if row.storage.endswith("GatherBlockQuantized"):
            continue  # written by quantize_embedding_tables itself
        if row.bits is not None and row.storage != "float" and f"{target.weight_tensor}_quantized" not in initializers:
            raise CompressError(
                f"layer '{row.layer}': ONNX Runtime left {target.op_type} node '{target.node}' unquantized; "
                f"keep the layer float in the recipe (layers: {{{row.layer}: null}})"
            )
