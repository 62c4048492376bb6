"""Conv inputs padded to a multiple of 4 channels for ORT's symmetric int8 conv kernels: which convolutions,
how the graph changes, and that nothing else does (the float and the int8 results)."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from compress_core import load_model
from compress_core.ort.conv_channels import pad_input_channels, paddable_convs
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
    stored = {init.name: list(init.dims) for init in onnx.load(str(padded.path)).graph.initializer}
    assert [dims for name, dims in stored.items() if name.endswith("_quantized") and dims[:2] == [16, 4]]
    feed = cnn.data.inputs[:128].feed()
    with_pad = ort.InferenceSession(str(padded.path), providers=["CPUExecutionProvider"]).run(None, feed)[0]
    without = ort.InferenceSession(str(plain.path), providers=["CPUExecutionProvider"]).run(None, feed)[0]
    assert (with_pad.argmax(1) == cnn.data.labels[:128]).mean() >= 0.95  # digits_cnn is about 98% in fp32
    if cpu_has_vnni:  # exact integer sums both ways: the same integers, the same outputs
        np.testing.assert_array_equal(with_pad, without)
    # without VNNI the unpadded conv1 saturates (its pairs are two pixels) and the padded one does not
