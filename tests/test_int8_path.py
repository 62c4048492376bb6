"""The int8 path by CPU (rules, overrides) and the saturation measurement against an exact integer reference."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import compress_core as cc
from compress_core.models.inputs import Inputs
from compress_core.ort import int8 as int8_module
from compress_core.ort.cpu import CpuInfo
from compress_core.ort.int8 import Int8Options, quantize_dynamic_by_granularity, quantize_int8, unsigned_integer_weights
from compress_core.ort.int8_path import (
    SATURATION_TOLERANCE,
    choose_path,
    resolve_path,
    rule_for,
    unsigned_overrides,
    with_exact_layers,
)
from compress_core.ort.saturation import exact_sums, im2col, measure_saturation, pair_sums
from compress_core.pipeline import compress
from compress_core.plan import Plan

VNNI = CpuInfo("Xeon 8272CL", "x86_64", 2, 2, avx2=True, avx512f=True, avx512_vnni=True, source="/proc/cpuinfo")
AVX2 = CpuInfo("EPYC 7551", "x86_64", 2, 2, avx2=True, source="/proc/cpuinfo")
AVX512_NO_VNNI = CpuInfo("Xeon 6148", "x86_64", 2, 2, avx2=True, avx512f=True, source="/proc/cpuinfo")
AVX_VNNI = CpuInfo("Core i7-12700", "x86_64", 2, 2, avx2=True, avx_vnni=True, source="/proc/cpuinfo")
AMX = CpuInfo("Xeon 8480+", "x86_64", 2, 2, avx2=True, avx512f=True, avx512_vnni=True, amx=True, source="/proc/cpuinfo")
SSE = CpuInfo("Atom", "x86_64", 2, 2, source="/proc/cpuinfo")
GRAVITON3 = CpuInfo("Neoverse-V1", "aarch64", 2, 2, dotprod=True, i8mm=True, source="/proc/cpuinfo")
A72 = CpuInfo("Cortex-A72", "aarch64", 4, 4, source="/proc/cpuinfo")
UNKNOWN = CpuInfo("unknown CPU", "x86_64", 2, 2)


@pytest.mark.parametrize(
    ("cpu", "rule", "static_kernel", "measured", "padded"),
    [
        (VNNI, "vnni", "U8S8", False, True),
        (AVX_VNNI, "vnni", "U8S8", False, True),
        (AMX, "vnni", "U8S8", False, True),
        (AVX2, "avx2-no-vnni", "U8S8", True, True),
        (AVX512_NO_VNNI, "avx2-no-vnni", "U8S8", True, True),
        (SSE, "x86-sse", "U8S8", True, False),
        (GRAVITON3, "arm-i8mm", "S8S8", False, False),
        (A72, "arm", "U8S8", False, False),
        (UNKNOWN, "unknown", "U8S8", True, False),
    ],
)
def test_rule_by_cpu(cpu, rule, static_kernel, measured, padded):
    assert rule_for(cpu) == rule
    static, dynamic = choose_path(cpu, dynamic=False), choose_path(cpu, dynamic=True)
    assert (static.rule, static.kernel, static.measure_saturation) == (rule, static_kernel, measured)
    # x86 with AVX2 has ORT's symmetric int8 conv kernels, which need Conv inputs in multiples of 4 channels
    assert static.pad_conv_channels == padded and not dynamic.pad_conv_channels
    assert (dynamic.kernel, dynamic.measure_saturation) == ("U8S8", measured)  # ORT's dynamic activations are uint8
    assert not static.reduce_range and not dynamic.reduce_range and static.per_channel is None
    assert not static.float_narrow_convs and not dynamic.float_narrow_convs  # float layers are measured, not ruled
    assert f"rule {rule}" in static.describe() and "set by the user" not in static.describe()


def test_overrides_are_named_and_stop_the_measurement():
    path = resolve_path(AVX2, dynamic=False, activations="int8", per_channel=False)
    assert (path.kernel, path.per_channel, path.overridden) == ("S8S8", False, ("activations", "per_channel"))
    assert not path.measure_saturation and "set by the user: activations, per_channel" in path.describe()
    assert not resolve_path(AVX2, dynamic=True, reduce_range=True).measure_saturation
    assert resolve_path(AVX2, dynamic=True, per_channel=True).measure_saturation  # granularity does not saturate
    assert resolve_path(VNNI, dynamic=True, activations="int8").activations == "uint8"  # static-only option
    exact = with_exact_layers(choose_path(AVX2, False), ["conv1"])
    assert (exact.kernel, exact.exact_layers, exact.measure_saturation) == ("U8S8", ("conv1",), False)
    assert "U8U8 for conv1 (U8S8 saturates there)" in exact.describe() and exact.to_dict()["exact_layers"] == ["conv1"]
    assert resolve_path(VNNI, dynamic=False, float_narrow_convs=True).float_narrow_convs is True


def test_unsigned_overrides_move_zero_points_by_128():
    from onnxruntime.quantization import QuantType

    overrides = {
        "w": [{"quant_type": QuantType.QInt8, "axis": 0, "scale": 0.1, "zero_point": 0}],
        "w4": [{"quant_type": QuantType.QInt4, "scale": 0.2, "zero_point": 0}],
    }
    moved = unsigned_overrides(overrides, QuantType.QUInt8)
    assert moved["w"] == [{"quant_type": QuantType.QUInt8, "axis": 0, "scale": 0.1, "zero_point": 128}]
    assert moved["w4"] == overrides["w4"]


def reference_pair_sums(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """vpmaddubsw then vpmaddwd, one output at a time: the plainest statement of the kernel."""
    out = np.zeros((a.shape[0], b.shape[1]), dtype=np.int64)
    for i in range(a.shape[0]):
        for n in range(b.shape[1]):
            for k in range(0, a.shape[1], 2):
                pair = sum(int(a[i, j]) * int(b[j, n]) for j in range(k, min(k + 2, a.shape[1])))
                out[i, n] += min(32767, max(-32768, pair))
    return out


def test_pair_sums_saturate_where_two_products_exceed_int16():
    a = np.full((2, 4), 255, dtype=np.uint8)
    b = np.full((4, 3), 127, dtype=np.int8)
    emulated, clipped = pair_sums(a, b)
    assert (exact_sums(a, b) == 4 * 255 * 127).all()  # 129,540: each pair is 64,770 > 32,767
    assert (emulated == 2 * 32767).all() and clipped == 2 * 2 * 3
    small = np.full((2, 4), 100, dtype=np.uint8)  # pairs of 25,400: no saturation
    assert (pair_sums(small, b)[0] == exact_sums(small, b)).all() and pair_sums(small, b)[1] == 0


def test_pair_sums_match_the_plain_reference_on_random_integers():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (5, 7), dtype=np.int64).astype(np.uint8)  # odd K: the last product pairs with 0
    b = rng.integers(-128, 128, (7, 4), dtype=np.int64).astype(np.int8)
    emulated, clipped = pair_sums(a, b)
    assert (emulated == reference_pair_sums(a, b)).all()
    assert clipped > 0 and (emulated != exact_sums(a, b)).any()


def test_im2col_is_channel_innermost_and_pads_with_the_zero_point():
    x = np.arange(2 * 3 * 3, dtype=np.int64).reshape(1, 2, 3, 3)
    conv = {"pads": [1, 1, 1, 1], "strides": [1, 1], "dilations": [1, 1], "group": [1]}
    rows = im2col(x, (3, 3), conv, pad_value=7)
    assert rows.shape == (9, 18)
    assert rows[4].tolist() == np.stack([x[0, 0], x[0, 1]], axis=-1).reshape(-1).tolist()  # centre pixel
    assert rows[0, :2].tolist() == [7, 7]  # top-left tap of the corner pixel is padding


def integer_matmul_model(weight: np.ndarray) -> onnx.ModelProto:
    """x -> DynamicQuantizeLinear -> MatMulInteger with int8 weights, as quantize_dynamic writes it."""
    nodes = [
        helper.make_node("DynamicQuantizeLinear", ["x"], ["x_q", "x_scale", "x_zero"], name="quantize"),
        helper.make_node("MatMulInteger", ["x_q", "w_quantized", "x_zero", "w_zero_point"], ["acc"], name="mm_quant"),
        helper.make_node("Cast", ["acc"], ["y"], to=TensorProto.FLOAT, name="cast"),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", weight.shape[0]])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", weight.shape[1]])],
        [
            numpy_helper.from_array(weight.astype(np.int8), "w_quantized"),
            numpy_helper.from_array(np.zeros(1, dtype=np.int8).reshape(()), "w_zero_point"),
            numpy_helper.from_array(np.array(0.01, dtype=np.float32), "w_scale"),
        ],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def test_measure_saturation_finds_the_saturating_layer(tmp_path):
    path = tmp_path / "mm.onnx"
    onnx.save(integer_matmul_model(np.full((8, 4), 120)), path)
    rng = np.random.default_rng(1)
    large = Inputs.single(rng.uniform(0.9, 1.0, (32, 8)).astype(np.float32), "x")  # quantized near 255
    rows = measure_saturation(path, large, {"mm": "mm_quant"})
    assert [row.layer for row in rows] == ["mm"]
    assert rows[0].saturated_pairs == 1.0 and rows[0].changed_outputs == 1.0
    assert rows[0].relative_error > 0.4  # 2 x 32,767 against about 2 x 2 x 245 x 120 per pair
    onnx.save(integer_matmul_model(np.full((8, 4), 20)), path)
    assert measure_saturation(path, large, {"mm": "mm_quant"})[0].relative_error == 0.0  # pairs below 2 x 255 x 20


@pytest.fixture(scope="module")
def cnn() -> cc.ModelHandle:
    return cc.load_model("digits_cnn")


def test_float_narrow_convs_keeps_the_one_channel_conv_float(cnn, tmp_path, monkeypatch):
    monkeypatch.setattr(int8_module, "cpu_features", lambda: VNNI)
    compressed = compress(cnn, Plan.from_text("version: 1\ndefault: {bits: 8}\n")).compressed
    options = Int8Options(calibration_samples=16, float_narrow_convs=True)
    result = quantize_int8(compressed, tmp_path / "int8.onnx", options)
    assert result.choice is not None and (result.choice.rule, result.choice.kernel) == ("vnni", "U8S8")
    assert result.choice.overridden == ("float_narrow_convs",)
    assert [(row.layer, row.bits) for row in result.layers if row.storage == "float"] == [("conv1", 8)]
    assert result.notes[0].startswith("int8 path: U8S8") and any("conv1 stays float" in n for n in result.notes)
    assert not result.saturation  # VNNI: nothing to measure


def test_without_vnni_a_saturating_layer_is_stored_u8u8_and_the_others_keep_u8s8(cnn, tmp_path, monkeypatch):
    monkeypatch.setattr(int8_module, "cpu_features", lambda: AVX2)
    compressed = compress(cnn, Plan.from_text("version: 1\ndefault: {bits: 8}\n")).compressed
    options = Int8Options(calibration_samples=16, pad_conv_channels=False)
    result = quantize_int8(compressed, tmp_path / "int8.onnx", options)
    # conv1 reads one channel: its im2col pairs neighbouring pixels, near 255, times large weights, and the pair
    # sums leave int16 (0.36 of its output on digits_resnet's stem)
    assert result.saturation[0].layer == "conv1" and result.saturation[0].relative_error > SATURATION_TOLERANCE
    assert all(row.relative_error <= SATURATION_TOLERANCE for row in result.saturation[1:])
    choice = result.choice
    assert choice is not None and (choice.kernel, choice.exact_layers, choice.rule) == (
        "U8S8",
        ("conv1",),
        "avx2-no-vnni",
    )
    note = next(
        note for note in result.notes if note.startswith("U8S8 would saturate on this CPU in 1 layer(s): conv1")
    )
    assert "The weights of conv1 are stored in uint8 (U8U8, exact here); the other layers keep U8S8" in note
    model = onnx.load(str(result.path))
    targets = compressed.layer_targets
    stored = {init.name: init.data_type for init in model.graph.initializer if init.name.endswith("_quantized")}
    assert stored[f"{targets['conv1'].weight_tensor}_quantized"] == TensorProto.UINT8  # exact
    assert {stored[f"{targets[layer].weight_tensor}_quantized"] for layer in ("conv2", "conv3", "fc1", "head")} == {
        TensorProto.INT8
    }
    session = ort.InferenceSession(str(result.path), providers=["CPUExecutionProvider"])
    outputs = session.run(None, cnn.data.inputs[:64].feed())[0]
    assert (outputs.argmax(1) == cnn.data.labels[:64]).mean() >= 0.9  # digits_cnn is about 98% in fp32
    unsaturated = quantize_int8(compressed, tmp_path / "u8s8.onnx", replace(options, weights="int8"))
    assert not unsaturated.saturation and unsaturated.choice is not None and not unsaturated.choice.exact_layers


def _exact_dynamic_matmul(model: onnx.ModelProto, x: np.ndarray, weight: str) -> np.ndarray:
    """What ``x``, quantized as ORT's ``DynamicQuantizeLinear`` does, times the stored integer ``weight``
    gives in exact integer arithmetic: the reference both U8S8 and U8U8 must give where nothing saturates."""
    stored = {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}
    integers = stored[f"{weight}_quantized"].astype(np.int64) - stored[f"{weight}_zero_point"].astype(np.int64)
    low, high = np.float32(min(x.min(), 0.0)), np.float32(max(x.max(), 0.0))
    scale = np.float32((high - low) / np.float32(255))
    zero = np.clip(np.rint(-low / scale), 0, 255)
    quantized = np.clip(np.rint(x / scale) + zero, 0, 255).astype(np.int64) - int(zero)
    return (quantized @ integers) * np.float64(scale) * stored[f"{weight}_scale"].astype(np.float64)


def _two_matmuls() -> onnx.ModelProto:
    rng = np.random.default_rng(2)
    weights = [numpy_helper.from_array(rng.normal(size=(16, 8)).astype(np.float32), name) for name in ("a", "b")]
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", name], [f"y_{name}"], name=f"mm_{name}") for name in ("a", "b")],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 16])],
        [helper.make_tensor_value_info(f"y_{name}", TensorProto.FLOAT, ["n", 8]) for name in ("a", "b")],
        weights,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def test_dynamic_u8u8_holds_the_same_grid_as_u8s8(tmp_path):
    quantize_dynamic_by_granularity(_two_matmuls(), tmp_path / "u8s8.onnx", ["mm_a", "mm_b"], [])
    unsigned = unsigned_integer_weights(onnx.load(str(tmp_path / "u8s8.onnx")))
    node = next(node for node in unsigned.graph.node if node.op_type == "MatMulInteger")
    types = {init.name: init.data_type for init in unsigned.graph.initializer}
    assert types[node.input[1]] == types[node.input[3]] == TensorProto.UINT8
    x = np.random.default_rng(5).normal(size=(32, 16)).astype(np.float32)
    u8u8 = ort.InferenceSession(unsigned.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})
    # the same integers, + 128, computed exactly (U8S8 would match only where no 16-bit pair sum saturates)
    np.testing.assert_allclose(u8u8[0], _exact_dynamic_matmul(unsigned, x, "a"), rtol=1e-4, atol=1e-4)


def test_a_dynamic_export_stores_only_the_named_weights_in_uint8(tmp_path):
    quantize_dynamic_by_granularity(_two_matmuls(), tmp_path / "mixed.onnx", ["mm_a", "mm_b"], [], exact={"b"})
    mixed = onnx.load(str(tmp_path / "mixed.onnx"))
    types = {init.name: init.data_type for init in mixed.graph.initializer}
    assert (types["a_quantized"], types["b_quantized"]) == (TensorProto.INT8, TensorProto.UINT8)
    x = np.random.default_rng(5).normal(size=(32, 16)).astype(np.float32)
    outputs = ort.InferenceSession(mixed.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})
    np.testing.assert_allclose(outputs[1], _exact_dynamic_matmul(mixed, x, "b"), rtol=1e-4, atol=1e-4)  # U8U8: exact


def test_padded_channels_pair_each_pixel_with_a_zero_and_keep_u8s8_without_vnni(cnn, tmp_path, monkeypatch):
    monkeypatch.setattr(int8_module, "cpu_features", lambda: AVX2)
    compressed = compress(cnn, Plan.from_text("version: 1\ndefault: {bits: 8}\n")).compressed
    result = quantize_int8(compressed, tmp_path / "int8.onnx", Int8Options(calibration_samples=16))
    assert [(conv.layer, conv.channels, conv.padded) for conv in result.padded] == [("conv1", 1, 4)]
    by_layer = {row.layer: row.relative_error for row in result.saturation}
    assert by_layer["conv1"] == 0.0  # each pair is a pixel and a padded zero channel: no sum leaves int16
    assert max(by_layer.values()) <= SATURATION_TOLERANCE  # digits_cnn's other layers move by under 1%
    assert result.choice is not None and result.choice.kernel == "U8S8" and result.choice.rule == "avx2-no-vnni"
    assert any("conv1: input channels padded with zeros from 1 to 4" in note for note in result.notes)
