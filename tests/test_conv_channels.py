"""Conv inputs padded to a multiple of 4 channels for ORT's symmetric int8 conv kernels: which convolutions,
how the graph changes, and that nothing else does (the float and the int8 results)."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from compress_core import load_model
from compress_core.ort.conv_channels import pad_in_floats, pad_in_integers, pad_input_channels, paddable_convs
from compress_core.ort.int8 import Int8Options, quantize_int8
from compress_core.pipeline import compress
from compress_core.plan import Plan

RNG = np.random.default_rng(4)


def _conv(
    name: str, source: str, outputs: int, channels: int, group: int = 1
) -> tuple[onnx.NodeProto, onnx.TensorProto]:
    weight = numpy_helper.from_array(
        RNG.normal(size=(outputs, channels // group, 3, 3)).astype(np.float32), f"{name}.w"
    )
    node = helper.make_node("Conv", [source, weight.name], [f"{name}.out"], name=name, pads=[1, 1, 1, 1], group=group)
    return node, weight


def _model() -> onnx.ModelProto:
    """Two convolutions reading the same 3-channel image (16 and 32 outputs), one with too few outputs (8),
    one reading 4 channels already, and a grouped one."""
    specs = [("rgb_a", "image", 16, 3, 1), ("rgb_b", "image", 32, 3, 1), ("narrow", "image", 8, 3, 1)]
    specs += [("four", "rgb_a.out", 16, 16, 4), ("aligned", "wide", 16, 4, 1)]
    nodes, weights = zip(*(_conv(*spec) for spec in specs), strict=True)
    wide = helper.make_node("Concat", ["image", "image_gray"], ["wide"], axis=1, name="concat")
    graph = helper.make_graph(
        [nodes[0], nodes[1], nodes[2], nodes[3], wide, nodes[4]],
        "convs",
        [
            helper.make_tensor_value_info("image", TensorProto.FLOAT, [2, 3, 8, 8]),
            helper.make_tensor_value_info("image_gray", TensorProto.FLOAT, [2, 1, 8, 8]),
        ],
        [helper.make_tensor_value_info(f"{spec[0]}.out", TensorProto.FLOAT, [2, spec[2], 8, 8]) for spec in specs],
        list(weights),
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _run(model: onnx.ModelProto, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feed)


def test_only_one_group_convs_with_unaligned_inputs_and_enough_outputs_are_padded():
    model = _model()
    nodes = {name: name for name in ("rgb_a", "rgb_b", "narrow", "four", "aligned")}
    assert paddable_convs(model, nodes) == {"rgb_a": 3, "rgb_b": 3}
    padded, report = pad_input_channels(model, nodes)
    assert [(conv.layer, conv.channels, conv.padded) for conv in report] == [("rgb_a", 3, 4), ("rgb_b", 3, 4)]
    pads = [node for node in padded.graph.node if node.op_type == "Pad"]
    assert len(pads) == 1 and list(pads[0].input)[0] == "image"  # one Pad serves both readers of the image
    shapes = {init.name: list(init.dims) for init in padded.graph.initializer}
    assert shapes["rgb_a.w"] == [16, 4, 3, 3] and shapes["rgb_b.w"] == [32, 4, 3, 3]
    assert (
        shapes["narrow.w"] == [8, 3, 3, 3]
        and shapes["four.w"] == [16, 4, 3, 3]
        and shapes["aligned.w"] == [16, 4, 3, 3]
    )
    weights = {init.name: numpy_helper.to_array(init) for init in padded.graph.initializer}
    assert not weights["rgb_a.w"][:, 3:].any()  # the added channels are read by zero weights
    onnx.checker.check_model(padded)  # still topologically sorted and well typed
    feed = {"image": RNG.normal(size=(2, 3, 8, 8)).astype(np.float32)}
    feed["image_gray"] = RNG.normal(size=(2, 1, 8, 8)).astype(np.float32)
    for before, after in zip(_run(model, feed), _run(padded, feed), strict=True):
        np.testing.assert_allclose(after, before, rtol=1e-5, atol=1e-5)
    assert [list(init.dims) for init in model.graph.initializer if init.name == "rgb_a.w"] == [[16, 3, 3, 3]]  # copy


@pytest.fixture(scope="module")
def cnn():
    return load_model("digits_cnn")


def test_a_static_export_pads_the_one_channel_conv_and_keeps_its_results(cnn, tmp_path, cpu_has_vnni):
    compressed = compress(cnn, Plan.from_text("version: 1\ndefault: {bits: 8}\n")).compressed
    options = Int8Options(calibration_samples=16, weights="int8")  # U8S8 on any CPU: the kernels padding is for
    padded = quantize_int8(compressed, tmp_path / "padded.onnx", options)
    plain = quantize_int8(
        compressed,
        tmp_path / "plain.onnx",
        Int8Options(calibration_samples=16, weights="int8", pad_conv_channels=False),
    )
    assert [(conv.layer, conv.padded) for conv in padded.padded] == [("conv1", 4)] and not plain.padded
    written = onnx.load(str(padded.path))
    stored = {init.name: list(init.dims) for init in written.graph.initializer}
    assert [dims for name, dims in stored.items() if name.endswith("_quantized") and dims[:2] == [16, 4]]
    producer = {output: node for node in written.graph.node for output in node.output}
    (pad,) = [node for node in written.graph.node if node.op_type == "Pad"]
    assert producer[pad.input[0]].op_type == "QuantizeLinear"  # the Pad works on the integers
    assert pad.input[2] == producer[pad.input[0]].input[2]  # and pads with the input's zero point
    feed = cnn.data.inputs[:128].feed()
    with_pad = ort.InferenceSession(str(padded.path), providers=["CPUExecutionProvider"]).run(None, feed)[0]
    without = ort.InferenceSession(str(plain.path), providers=["CPUExecutionProvider"]).run(None, feed)[0]
    assert (with_pad.argmax(1) == cnn.data.labels[:128]).mean() >= 0.95  # digits_cnn is about 98% in fp32
    if cpu_has_vnni:  # exact integer sums both ways: the same integers, the same outputs
        np.testing.assert_array_equal(with_pad, without)
    # without VNNI the unpadded conv1 saturates (its pairs are two pixels) and the padded one does not


def _qdq_pad(
    scale: float, zero_point: int, pad_scale: float, dtype: type = np.uint8, source_out: bool = False
) -> onnx.ModelProto:
    """x -> Q -> DQ -> Pad (to 4 channels, zeros) -> Q -> DQ, as a static export leaves a padded input;
    ``source_out``: the first DQ's output is also a graph output."""
    quantization = [
        numpy_helper.from_array(np.array(scale, np.float32), "s"),
        numpy_helper.from_array(np.array(zero_point, dtype), "zp"),
        numpy_helper.from_array(np.array(pad_scale, np.float32), "s2"),
        numpy_helper.from_array(np.array(zero_point, dtype), "zp2"),
        numpy_helper.from_array(np.array([0, 0, 0, 0, 0, 3, 0, 0], np.int64), "pads"),
    ]
    padded = "x_channels_padded4"
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "s", "zp"], ["xq"], name="q"),
        helper.make_node("DequantizeLinear", ["xq", "s", "zp"], ["xd"], name="dq"),
        helper.make_node("Pad", ["xd", "pads"], [padded], name=f"{padded}_Pad", mode="constant"),
        helper.make_node("QuantizeLinear", [padded, "s2", "zp2"], ["pq"], name="q2"),
        helper.make_node("DequantizeLinear", ["pq", "s2", "zp2"], ["y"], name="dq2"),
    ]
    graph = helper.make_graph(
        nodes,
        "qdq_pad",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 1, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4, 4, 4])]
        + ([helper.make_tensor_value_info("xd", TensorProto.FLOAT, [2, 1, 4, 4])] if source_out else []),
        quantization,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize(("dtype", "zero_point"), [(np.uint8, 50), (np.int8, -20)])  # U8S8 and S8S8 activations
def test_the_pad_moves_onto_the_integers_with_the_same_result(dtype, zero_point):
    x = {"x": RNG.uniform(-1, 3, size=(2, 1, 4, 4)).astype(np.float32)}
    model = _qdq_pad(0.02, zero_point, 0.02, dtype)
    folded = onnx.ModelProto()
    folded.CopyFrom(model)
    assert pad_in_integers(folded) == 1
    assert [node.op_type for node in folded.graph.node] == ["QuantizeLinear", "Pad", "DequantizeLinear"]
    onnx.checker.check_model(folded)
    (before,), (after,) = _run(model, x), _run(folded, x)
    np.testing.assert_array_equal(after, before)
    assert (after[:, 1:] == 0).all() and after[:, 0].any()  # zeros padded, the image kept
    other_grid = _qdq_pad(0.02, 50, 0.03)  # a different scale after the Pad: not the same integers, left alone
    assert pad_in_integers(other_grid) == 0 and len(other_grid.graph.node) == 5
    assert pad_in_floats(folded) == 1  # back to the pairs the debugger reads, the padded float tensor named
    assert [node.op_type for node in folded.graph.node] == [
        "QuantizeLinear",
        "DequantizeLinear",
        "Pad",
        "QuantizeLinear",
        "DequantizeLinear",
    ]
    assert folded.graph.node[2].output[0] == "x_channels_padded4"
    onnx.checker.check_model(folded)
    np.testing.assert_array_equal(_run(folded, x)[0], before)


def test_a_dequantized_source_that_is_a_graph_output_stays():
    model = _qdq_pad(0.02, 50, 0.02, source_out=True)
    x = {"x": RNG.uniform(-1, 3, size=(2, 1, 4, 4)).astype(np.float32)}
    before = _run(model, x)
    assert pad_in_integers(model) == 1
    assert [node.op_type for node in model.graph.node] == [
        "QuantizeLinear",
        "DequantizeLinear",
        "Pad",
        "DequantizeLinear",
    ]
    onnx.checker.check_model(model)
    for expected, got in zip(before, _run(model, x), strict=True):
        np.testing.assert_array_equal(got, expected)
