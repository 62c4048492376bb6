"""Weight-only block-wise integer models: ONNX Runtime's ``MatMulNBits`` for the plan's low-bit layers.

``quantize_nbits`` writes the compressed model with every planned MatMul / Gemm weight stored
block-wise by ``onnxruntime.quantization.matmul_nbits_quantizer.MatMulNBitsQuantizer`` (its default
round-to-nearest algorithm, asymmetric, ``block_size`` values of the input axis per scale): 2-4-bit
layers in 4 bits, 5-8-bit layers in 8 bits. Planned embedding tables are stored as in the int8 file
(``ort.block_quant``). Layers kept float stay float; 16-bit layers stay float too (the notes say so).

How the kernel computes (``NBitsOptions.compute``, ORT's ``accuracy_level``): ``int8`` (the default,
level 4) quantizes each block of a MatMul's input to int8 at run time, with its own scale, and takes
the integer dot-product kernels; ``float`` (level 1) widens the weights to float and multiplies in
float. Speed and cosine of both on MiniLM: ``benchmarks/results/latency.md``. The int8 kernels do not
saturate without VNNI either: over large all-positive inputs, a 4-bit and an 8-bit MatMul stay within
0.01 of float compute's relative error under AVX2-only emulation (qemu, Haswell), as natively
(``tests/test_nbits.py``; ``benchmarks/results/avx2_emulated.md``).

A Gemm is first rewritten as MatMul (+ Add of its bias), which ``MatMulNBits`` replaces; a Gemm with
``transA``, ``alpha`` or ``beta`` other than the defaults stays float.

Which weights are rounded: the plan's per-channel grid is coarser than MatMulNBits' block-wise one, and
rounding a weight twice loses more than once (MiniLM, all layers 4-bit: min cosine 0.83 re-rounding the
plan's grid, 0.96 from the float weights). So a layer whose compressed weight is still what
``apply_plan`` made of the original (same shape, and its weight SQNR to the original is the one the
plan recorded: not fine-tuned since) is rounded from the original float weight, with the plan's
pruned zeros kept; any other (fine-tuned, low-rank) is re-rounded from the compressed weight. The
notes say which.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from compress_core.atomic import atomic_write
from compress_core.errors import CompressError, first_line
from compress_core.models.onnx_graph import constant_tensors
from compress_core.ort.block_quant import check_block_size, storage_bits
from compress_core.ort.int8 import Int8Layer, Int8Result, quantize_embedding_tables
from compress_core.ort.prep import prepare_for_quantization
from compress_core.pipeline import CompressedModel

DEFAULT_BLOCK_SIZE = 32
NBITS_COMPUTE = {"int8": 4, "float": 1}  # NBitsOptions.compute -> ORT's MatMulNBits accuracy_level
COMPUTE_MEANS = {  # what each compute does, for the notes and the report
    "int8": "int8 compute: each block of a MatMul's input is quantized to int8 at run time, with its own scale",
    "float": "float compute: the weights are widened to float and multiplied in float; activations stay float",
}
NBITS_BLOCK_SIZES = (16, 32, 64, 128, 256)  # the block sizes the Export page offers
NBITS_WIDTHS = (4, 8)  # what MatMulNBits stores a plan's bit width in (storage_bits)
SQNR_MATCH_DB = 0.01  # a compressed weight this close to the SQNR the plan recorded is the plan's own


@dataclass(frozen=True)
class NBitsOptions:
    """``block_size``: weights per scale along a MatMul's input axis (a power of two >= 16; ORT's
    MatMulNBits takes 16, 32, 64, 128, ...). Smaller blocks: more accurate, slightly larger file,
    slower. ``compute``: ``int8`` (the input quantized block by block at run time) or ``float``."""

    block_size: int = DEFAULT_BLOCK_SIZE
    compute: str = "int8"

    def __post_init__(self) -> None:
        check_block_size(self.block_size, "MatMulNBits block size")
        if self.compute not in NBITS_COMPUTE:
            raise CompressError(
                f"MatMulNBits compute {self.compute!r} is not allowed; use {' or '.join(NBITS_COMPUTE)}"
            )


@dataclass
class _Selection:
    """The nodes to store per width, the report rows and notes, built from the plan."""

    nodes: dict[int, list[str]] = field(default_factory=lambda: {width: [] for width in NBITS_WIDTHS})
    tables: dict[str, Any] = field(default_factory=dict)
    report: list[Int8Layer] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def quantize_nbits(model: CompressedModel, path: str | Path, options: NBitsOptions = NBitsOptions()) -> Int8Result:
    """Write the weight-only block-wise file of ``model`` (from ``compress(original, plan)``) to ``path``;
    the result's ``mode`` is ``weight-only``. Raises ``CompressError`` when ONNX Runtime's quantizer
    fails (naming the node)."""
    graph, notes = prepare_for_quantization(model.compressed.onnx_model)
    selection = _select(model, graph, options)
    notes.extend(selection.notes)

    def write(temporary: Path) -> None:
        quantized = _matmul_nbits(graph, selection.nodes, options)
        onnx.save(quantized, str(temporary))
        if selection.tables:
            notes.extend(quantize_embedding_tables(temporary, selection.tables, selection.report))

    written = atomic_write(path, write)
    _check_replaced(onnx.load(str(written)), selection.report)
    return Int8Result(written, "weight-only", selection.report, notes)


def _select(source: CompressedModel, model: onnx.ModelProto, options: NBitsOptions) -> _Selection:
    """Which node gets which width; the weights to store are set to the float ones to round (see the
    module's docstring), and Gemm nodes rewritten as MatMul (+ Add), in ``model``."""
    compressed = source.compressed
    record = compressed.handle.compression
    quantized = record.quantized if record else {}
    nodes = {node.name: node for node in model.graph.node}
    selection = _Selection()
    rounded_from = {"original": 0, "compressed": 0}
    for layer in compressed.inventory:
        target = compressed.layer_targets.get(layer.name)
        if target is None:
            continue
        grid = quantized.get(layer.weight_name, quantized.get(layer.name))
        if grid is None or grid.bits > 8:
            if grid is not None:
                selection.notes.append(f"{layer.name}: 16-bit weights stay float (MatMulNBits stores 2-8 bits)")
            selection.report.append(Int8Layer(layer.name, target.node, None if grid is None else grid.bits, "float"))
            continue
        if layer.embedding:
            selection.tables[target.node] = grid
            selection.report.append(Int8Layer(layer.name, target.node, grid.bits, "float"))
            continue
        node = nodes[target.node]
        reason = _unsupported(node, model)
        if reason:
            selection.notes.append(f"{layer.name}: stays float ({reason})")
            selection.report.append(Int8Layer(layer.name, target.node, grid.bits, "float"))
            continue
        from_original = _use_original_weight(source, model, layer.name, target.weight_tensor)
        rounded_from["original" if from_original else "compressed"] += 1
        if node.op_type == "Gemm":
            _gemm_as_matmul(model, node)
        width = storage_bits(grid.bits)
        selection.nodes[width].append(target.node)
        storage = f"{width}-bit MatMulNBits (block {options.block_size}, {options.compute} compute)"
        selection.report.append(Int8Layer(layer.name, target.node, grid.bits, storage))
    if any(selection.nodes.values()):
        selection.notes.append(
            f"MatMul weights rounded in {options.block_size}-value blocks along the input axis (round to nearest, "
            f"asymmetric): {rounded_from['original']} layer(s) from the original float weights (pruned zeros kept), "
            f"{rounded_from['compressed']} from the compressed weights (fine-tuned or low-rank: rounded twice)"
        )
        selection.notes.append(COMPUTE_MEANS[options.compute])
    return selection


def _use_original_weight(source: CompressedModel, model: onnx.ModelProto, layer: str, tensor: str) -> bool:
    """Put the original float weight of ``layer`` (zeros where the compressed weight has them: pruning)
    into initializer ``tensor`` of ``model`` when the compressed weight is still the plan's rounding of
    it; return whether it did."""
    record = source.compressed.handle.compression
    original_target = source.original.layer_targets.get(layer)
    planned_sqnr = record.layer_sqnr.get(layer) if record else None
    if original_target is None or planned_sqnr is None:
        return False
    original = constant_tensors(source.original.onnx_model).get(original_target.weight_tensor)
    position = next((i for i, init in enumerate(model.graph.initializer) if init.name == tensor), None)
    if original is None or position is None:
        return False
    compressed = numpy_helper.to_array(model.graph.initializer[position])
    if original[0].shape != compressed.shape:
        return False
    reference = original[0].astype(np.float64)
    noise = float(((reference - compressed) ** 2).sum())
    sqnr = float("inf") if noise == 0 else 10 * float(np.log10(float((reference**2).sum()) / noise))
    if not (sqnr == planned_sqnr or abs(sqnr - planned_sqnr) <= SQNR_MATCH_DB):
        return False
    weight = np.where(compressed == 0, 0.0, original[0]).astype(np.float32)
    model.graph.initializer[position].CopyFrom(numpy_helper.from_array(weight, tensor))
    return True


def _unsupported(node: onnx.NodeProto, model: onnx.ModelProto) -> str:
    """Why ``MatMulNBits`` cannot take this node ("" when it can): it needs a 2-D constant weight as the
    second input of a MatMul, or a Gemm without transA / alpha / beta."""
    if node.op_type not in ("MatMul", "Gemm"):
        return f"MatMulNBits replaces MatMul and Gemm, not {node.op_type}"
    attributes = {attribute.name: helper.get_attribute_value(attribute) for attribute in node.attribute}
    if node.op_type == "Gemm" and (
        attributes.get("transA", 0) or attributes.get("alpha", 1.0) != 1.0 or attributes.get("beta", 1.0) != 1.0
    ):
        return "a Gemm with transA, alpha or beta"
    initializers = {init.name: init for init in model.graph.initializer}
    weight = initializers.get(node.input[1])
    if weight is None or len(weight.dims) != 2:
        return "its weight is no 2-D initializer"
    return ""


def _gemm_as_matmul(model: onnx.ModelProto, node: onnx.NodeProto) -> None:
    """Rewrite Gemm ``node`` (no transA, alpha = beta = 1) as MatMul with a [in, out] weight, then Add of
    its bias, in place; the node keeps its name, so the layer map still finds it."""
    initializers = {init.name: init for init in model.graph.initializer}
    weight = numpy_helper.to_array(initializers[node.input[1]])
    trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
    matrix_name = f"{node.input[1]}_matmul"
    model.graph.initializer.append(
        numpy_helper.from_array(np.ascontiguousarray(weight.T if trans_b else weight), matrix_name)
    )
    index = list(model.graph.node).index(node)
    output = node.output[0]
    bias = node.input[2] if len(node.input) > 2 and node.input[2] else ""
    product = f"{output}_matmul" if bias else output
    replacement = [helper.make_node("MatMul", [node.input[0], matrix_name], [product], name=node.name)]
    if bias:
        replacement.append(helper.make_node("Add", [product, bias], [output], name=f"{node.name}_bias"))
    del model.graph.node[index]
    for offset, new in enumerate(replacement):
        model.graph.node.insert(index + offset, new)


def _matmul_nbits(model: onnx.ModelProto, nodes: dict[int, list[str]], options: NBitsOptions) -> onnx.ModelProto:
    """``MatMulNBitsQuantizer`` of exactly the listed MatMul nodes, one pass per width."""
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    current = model
    matmuls = [node.name for node in model.graph.node if node.op_type == "MatMul"]
    quantizer_log = logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer")
    level = quantizer_log.level
    quantizer_log.setLevel(logging.WARNING)  # it logs every node it visits at INFO
    try:
        for width, names in nodes.items():
            if not names:
                continue
            quantizer = MatMulNBitsQuantizer(
                current,
                bits=width,
                block_size=options.block_size,
                is_symmetric=False,
                accuracy_level=NBITS_COMPUTE[options.compute],
                nodes_to_include=names,
                nodes_to_exclude=[name for name in matmuls if name not in names],
                op_types_to_quantize=("MatMul",),
            )
            quantizer.process()
            current = quantizer.model.model
    except Exception as exc:  # ORT raises many types; the message says where
        raise CompressError(
            f"MatMulNBits quantization failed in ONNX Runtime's quantizer: {first_line(exc, 200)}"
        ) from exc
    finally:
        quantizer_log.setLevel(level)
    return current


def _check_replaced(model: onnx.ModelProto, report: list[Int8Layer]) -> None:
    """Every node planned for MatMulNBits must be gone (the quantizer skips some weights silently)."""
    left = {node.name for node in model.graph.node if node.op_type == "MatMul"}
    for row in report:
        if "MatMulNBits" in row.storage and row.node in left:
            raise CompressError(
                f"layer '{row.layer}': ONNX Runtime's MatMulNBits quantizer left node '{row.node}' as MatMul; "
                f"keep the layer float in the recipe (layers: {{{row.layer}: null}})"
            )
