"""Input smoothing before int8 quantization (``compress_core.ort.smooth``, the plan's ``smooth``)."""

from __future__ import annotations

import re

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import compress_core as cc
from compress_core.errors import CompressError
from compress_core.ort.int8 import Int8Options, quantize_int8
from compress_core.ort.smooth import input_ranges, smooth_inputs
from compress_core.pipeline import compress
from compress_core.plan import Plan

LOUD = np.array([40.0, 25.0] + [1.0] * 14, dtype=np.float32)  # two input channels far above the rest


def _graph(nodes, initializers, inputs=("x",), width=16, outputs=("y",)) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes,
        "smooth",
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, ["N", width]) for name in inputs],
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, ["N", None]) for name in outputs],
        [numpy_helper.from_array(array, name) for name, array in initializers.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return model


def _two_readers_and_a_gemm() -> onnx.ModelProto:
    """x -> Mul(loud) -> two MatMuls (one input, shared); their sum -> Relu -> Gemm with transB."""
    rng = np.random.default_rng(1)
    weights = {
        "loud": LOUD,
        "W1": rng.standard_normal((16, 8)).astype(np.float32),
        "W2": rng.standard_normal((16, 8)).astype(np.float32),
        "G": rng.standard_normal((4, 8)).astype(np.float32),
    }
    nodes = [
        helper.make_node("Mul", ["x", "loud"], ["h"], name="scale"),
        helper.make_node("MatMul", ["h", "W1"], ["a"], name="left"),
        helper.make_node("MatMul", ["h", "W2"], ["b"], name="right"),
        helper.make_node("Add", ["a", "b"], ["s"], name="sum"),
        helper.make_node("Relu", ["s"], ["r"], name="relu"),
        helper.make_node("Gemm", ["r", "G"], ["y"], name="head", transB=1),
    ]
    return _graph(nodes, weights)


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})[0]


def test_smoothing_keeps_the_float_output_and_flattens_the_input():
    model = _two_readers_and_a_gemm()
    x = np.random.default_rng(2).standard_normal((32, 16)).astype(np.float32)
    batches = [{"x": x[:16]}, {"x": x[16:]}]
    strengths = {"left": 0.8, "right": 0.8, "head": 0.5}
    ranges = input_ranges(model, strengths, batches)
    smoothed, layers = smooth_inputs(model, strengths, {"left": "fc.left"}, ranges)
    np.testing.assert_allclose(_run(smoothed, x), _run(model, x), rtol=1e-4, atol=1e-4)
    muls = [node for node in smoothed.graph.node if node.op_type == "Mul" and node.name != "scale"]
    assert len(muls) == 2  # one shared by the two readers of h (same strength), one for the Gemm
    readers = {node.name: node.input[0] for node in smoothed.graph.node if node.op_type in ("MatMul", "Gemm")}
    assert readers["left"] == readers["right"] != "h"
    by_node = {layer.node: layer for layer in layers}
    assert by_node["left"].layer == "fc.left" and by_node["head"].layer == "head"
    assert by_node["left"].spread_before > 20 and by_node["left"].spread_after < by_node["left"].spread_before / 4
    assert {node.name for node in model.graph.node} == {"scale", "left", "right", "sum", "relu", "head"}  # unchanged
    onnx.checker.check_model(smoothed)


def test_smoothing_factors_are_powers_of_two_so_the_weights_stay_exact():
    model = _two_readers_and_a_gemm()
    x = np.random.default_rng(2).standard_normal((32, 16)).astype(np.float32)
    strengths = {"left": 0.8, "right": 0.8}
    smoothed, _ = smooth_inputs(model, strengths, {}, input_ranges(model, strengths, [{"x": x}]))
    stored = {init.name: numpy_helper.to_array(init) for init in smoothed.graph.initializer}
    inverse = next(value for name, value in stored.items() if name.endswith("_inverse_scale"))
    exponents = np.log2(inverse)
    assert np.array_equal(exponents, np.round(exponents)) and len(set(exponents)) > 1
    original = {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}
    for name in ("W1", "W2"):  # each row times its factor, exactly: dividing back gives the original bits
        assert np.array_equal(stored[name] * inverse[:, None], original[name])


@pytest.mark.parametrize(
    ("node", "message"),
    [
        (helper.make_node("Conv", ["x4", "K"], ["y"], name="conv"), "smooth applies to MatMul and Gemm layers"),
        (helper.make_node("MatMul", ["x", "W"], ["y"], name="shared"), "shared with other nodes"),
    ],
)
def test_smoothing_refuses_what_it_cannot_rescale(node, message):
    weights = {"K": np.ones((2, 1, 1, 1), np.float32), "W": np.ones((16, 16), np.float32)}
    extra = [helper.make_node("MatMul", ["x", "W"], ["z"], name="other")] if node.name == "shared" else []
    model = _graph([node, *extra], weights, inputs=("x", "x4"), outputs=("y", *(["z"] if extra else [])))
    with pytest.raises(CompressError, match=message):
        smooth_inputs(model, {node.name: 0.8}, {node.name: "layer_a"}, {})


def _loud_matmul_file(tmp_path) -> cc.ModelHandle:
    nodes = [
        helper.make_node("Mul", ["x", "loud"], ["h"], name="scale"),
        helper.make_node("MatMul", ["h", "W"], ["y"], name="proj"),
    ]
    path = tmp_path / "loud.onnx"
    weight = np.random.default_rng(3).standard_normal((16, 32)).astype(np.float32)
    onnx.save(_graph(nodes, {"loud": LOUD, "W": weight}), path)
    return cc.load_model(path)


def _sqnr_db(reference: np.ndarray, output: np.ndarray) -> float:
    return float(10 * np.log10((reference**2).sum() / ((reference - output) ** 2).sum()))


def test_smoothing_raises_the_int8_outputs_sqnr(tmp_path):
    handle = _loud_matmul_file(tmp_path)
    reference = handle.run(handle.data.inputs)
    quality = {}
    for smooth in (None, 0.8):
        entry = "{bits: 8}" if smooth is None else f"{{bits: 8, smooth: {smooth}}}"
        compressed = compress(handle, Plan.from_text(f"version: 1\ndefault: {entry}\n")).compressed
        # U8U8: exact integer kernels on every CPU, so the figure does not depend on VNNI
        result = quantize_int8(compressed, tmp_path / f"int8_{smooth}.onnx", Int8Options(dynamic=True, weights="uint8"))
        session = ort.InferenceSession(str(result.path), providers=["CPUExecutionProvider"])
        quality[smooth] = _sqnr_db(reference, session.run(None, handle.data.inputs.feed())[0])
        notes = [note for note in result.notes if "input smoothed" in note]
        assert len(notes) == (0 if smooth is None else 1)
        hints = [note for note in result.notes if note.startswith("inputs with outlier channels")]
        if smooth is None:  # the export points at the layer to smooth
            assert len(hints) == 1 and re.search(r": proj \((\d+)x\);", hints[0]), result.notes
            assert int(re.search(r"proj \((\d+)x\)", hints[0]).group(1)) > 10
        else:
            assert not hints
    # One grid for 16 channels of which two are 25-40x the rest: smoothing gives the quiet ones their bits back.
    assert quality[0.8] > quality[None] + 5, quality


def test_static_export_refuses_smooth_and_a_default_skips_convs(tmp_path):
    handle = _loud_matmul_file(tmp_path)
    smoothed = compress(handle, Plan.from_text("version: 1\ndefault: {bits: 8, smooth: 0.8}\n")).compressed
    with pytest.raises(CompressError, match=r"smooth is set on proj: it acts on dynamic int8 exports .*--dynamic"):
        quantize_int8(smoothed, tmp_path / "static.onnx", Int8Options(calibration_samples=8))
    assert not (tmp_path / "static.onnx").exists()
    rng = np.random.default_rng(4)
    nodes = [
        helper.make_node("Conv", ["x", "K"], ["c"], name="conv"),
        helper.make_node("Flatten", ["c"], ["f"], name="flat"),
        helper.make_node("MatMul", ["f", "W"], ["y"], name="proj"),
    ]
    weights = {
        "K": rng.standard_normal((4, 2, 1, 1)).astype(np.float32),
        "W": rng.standard_normal((64, 8)).astype(np.float32),
    }
    graph = helper.make_graph(
        nodes,
        "conv_then_matmul",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 8])],
        [numpy_helper.from_array(array, name) for name, array in weights.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, tmp_path / "mixed.onnx")
    mixed = cc.load_model(tmp_path / "mixed.onnx")
    by_default = compress(mixed, Plan.from_text("version: 1\ndefault: {bits: 8, smooth: 0.8}\n")).compressed
    result = quantize_int8(by_default, tmp_path / "mixed_int8.onnx", Int8Options(dynamic=True))
    assert [note.split(":")[0] for note in result.notes if "input smoothed" in note] == ["proj"]
    assert (
        "smooth, set by a default or pattern entry, skips conv: it rescales MatMul and Gemm inputs only" in result.notes
    )
    exact = compress(mixed, Plan.from_text("version: 1\nlayers:\n  conv: {bits: 8, smooth: 0.8}\n")).compressed
    with pytest.raises(CompressError, match=r"layer 'conv': smooth applies to MatMul and Gemm layers"):
        quantize_int8(exact, tmp_path / "conv_int8.onnx", Int8Options(dynamic=True))
