"""Models that are already quantized: each integer layer recognised with its precision and its weights
dequantized; inspect and the Layers page say so; evaluate and export work on the model as it is; a
plan that would change such a layer is refused, saying why."""

from __future__ import annotations

import importlib.util
import json
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import compress_core as cc
from compress_core.analysis.metrics import plan_bytes
from compress_core.cli import main
from compress_core.errors import CompressError
from compress_core.models.inventory import layer_inventory, layer_weight_array, total_params
from compress_core.models.onnx_quantized import dequantize, quantized_layers, quantized_op_counts, stored_bits
from compress_core.ort.export import to_onnx
from compress_core.ort.int8 import EvalDataReader, calibration_inputs
from compress_core.ort.prep import prepare_for_quantization
from compress_core.plan import Plan
from explorer_ui import layer_data

OCR_SHAPE = (1, 64, 160)
EMPTY = "version: 1\nlayers: {}\n"


def ddddocr_file(name: str) -> Path:
    """A model file shipped in the ddddocr wheel (the optional extra), or skip."""
    spec = importlib.util.find_spec("ddddocr")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("needs the optional ddddocr extra: pip install --no-deps ddddocr==1.6.1")
    path = Path(next(iter(spec.submodule_search_locations))) / name
    if not path.is_file():
        pytest.skip(f"the installed ddddocr has no {name}")
    return path


# ---------------------------------------------------------------- ddddocr's common_old.onnx


@pytest.fixture(scope="module")
def common_old() -> cc.ModelHandle:
    return cc.load_model(ddddocr_file("common_old.onnx"), input_shape=OCR_SHAPE)


@pytest.mark.ddddocr
def test_common_old_layers_and_their_precision(common_old):
    layers = layer_inventory(common_old)
    assert len(layers) == 22 and all(layer.quantized for layer in layers)
    assert Counter(layer.precision for layer in layers) == {"uint8 (ConvInteger)": 21, "uint8 (MatMulInteger)": 1}
    assert quantized_op_counts(common_old.model) == {
        "DynamicQuantizeLinear": 22,
        "ConvInteger": 21,
        "DynamicQuantizeLSTM": 1,
        "MatMulInteger": 1,
    }
    # The float common.onnx has the same architecture: the same layers, shapes and MACs.
    float_layers = layer_inventory(cc.load_model(ddddocr_file("common.onnx"), input_shape=OCR_SHAPE))
    assert [layer.macs for layer in layers] == [layer.macs for layer in float_layers]
    assert [sorted(layer.weight_shape) for layer in layers] == [sorted(layer.weight_shape) for layer in float_layers]
    head = layers[-1]
    assert (head.name, head.type, head.weight_shape, head.out_axis) == (
        "Gemm_220_MatMul_quant",
        "MatMulInteger",
        (1024, 8210),
        1,
    )
    for layer in layers:  # statistics of dequantized weights: real values, not 0..255
        assert layer.min < 0 < layer.max and 0 < layer.std < 5, layer.name
    assert total_params(common_old) > sum(layer.params for layer in layers) > 9_000_000


@pytest.mark.ddddocr
def test_common_old_size_counts_its_integer_weights_at_their_width(common_old):
    layers = layer_inventory(common_old)
    weights = sum(layer.params for layer in layers)
    other = total_params(common_old) - weights
    size = plan_bytes(common_old, layers)
    # 8 bits per stored weight, a scale and zero point per layer, everything else float32
    assert weights + 4 * other <= size <= weights + 4 * other + 8 * len(layers)
    assert [stored_bits(text) for text in ("float32", "uint8 (ConvInteger)", "int4 QDQ", "4-bit MatMulNBits")] == [
        None,
        8,
        4,
        4,
    ]


@pytest.mark.ddddocr
def test_common_old_weights_are_dequantized_with_their_scale(common_old):
    layer = layer_inventory(common_old)[0]
    inits = {init.name: numpy_helper.to_array(init) for init in common_old.model.graph.initializer}
    stored, zero, scale = inits["391_quantized"], inits["391_zero_point"], inits["391_scale"]
    expected = (stored.astype(np.float64) - float(zero)) * float(scale)
    assert layer.weight_name == "391_quantized"
    np.testing.assert_allclose(layer_weight_array(common_old, layer), expected, rtol=1e-6)


@pytest.mark.ddddocr
def test_inspect_says_common_old_is_already_quantized(capsys):
    path = str(ddddocr_file("common_old.onnx"))
    assert main(["inspect", path, "--input", "input1=1,64,160"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].split()[-1] == "precision"
    assert sum("uint8 (ConvInteger)" in line for line in out.splitlines()) == 21
    assert (
        "already quantized: 22 of 22 layers are stored as integers (22 DynamicQuantizeLinear, 21 ConvInteger, "
        "1 DynamicQuantizeLSTM, 1 MatMulInteger); a plan can change only the float layers: "
        "compress the float original instead"
    ) in out
    assert main(["inspect", path, "--input", "input1=1,64,160", "--json"]) == 0
    payload = json.loads(capsys.readouterr().out)
    assert payload["already_quantized"] is True and payload["quantized_layers"] == 22
    assert payload["layer_table"][0]["precision"] == "uint8 (ConvInteger)"


@pytest.mark.ddddocr
def test_a_plan_on_common_old_is_refused_saying_why(common_old):
    with pytest.raises(CompressError) as caught:
        cc.apply_plan(common_old, Plan.from_text("version: 1\nlayers:\n  Conv_3_quant: {bits: 4}\n"))
    assert str(caught.value) == (
        "layer 'Conv_3_quant' is already uint8 (ConvInteger); compress the float original instead, "
        "or leave it out of the plan (layers: {Conv_3_quant: null})"
    )
    with pytest.raises(CompressError) as caught:
        cc.apply_plan(common_old, Plan.from_text("version: 1\ndefault: {prune: {ratio: 0.5, kind: unstructured}}\n"))
    assert str(caught.value) == (
        "layer 'Conv_0_quant' is already uint8 (ConvInteger) (and 21 more already-quantized layers); "
        "compress the float original instead, or leave it out of the plan (layers: {Conv_0_quant: null})"
    )
    assert cc.apply_plan(common_old, Plan.from_text(EMPTY)).compression is not None


@pytest.mark.ddddocr
def test_evaluate_and_export_int8_of_common_old(common_old, tmp_path, capsys):
    path = str(ddddocr_file("common_old.onnx"))
    (tmp_path / "empty.yaml").write_text(EMPTY)
    data = np.random.default_rng(0).random((4, *OCR_SHAPE), dtype=np.float32)
    np.savez(tmp_path / "data.npz", input1=data)  # a few samples keep the runs short
    model = [path, "--data", str(tmp_path / "data.npz"), "--recipe", str(tmp_path / "empty.yaml")]
    assert main(["evaluate", *model]) == 0
    capsys.readouterr()
    out = tmp_path / "export"
    args = ["export", *model, "--out", str(out)]
    assert main([*args, "--int8", "--json"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["int8"]["mode"] == "as loaded"
    assert metrics["int8"]["notes"] == [
        "the model is already quantized (22 DynamicQuantizeLinear, 21 ConvInteger, 1 DynamicQuantizeLSTM, "
        "1 MatMulInteger): the int8 file is the model as loaded, not quantized again"
    ]
    assert {row["storage"] for row in metrics["int8"]["layers"]} == {"uint8 (ConvInteger)", "uint8 (MatMulInteger)"}
    feed = common_old.data.inputs[:1].feed()
    written = ort.InferenceSession(str(out / "model_int8.onnx"), providers=["CPUExecutionProvider"])
    original = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    np.testing.assert_array_equal(written.run(None, feed)[0], original.run(None, feed)[0])


# ---------------------------------------------------------------- every format, made from a float model


def _float_and_quantized(tmp_path: Path, sample: str, kind: str) -> tuple[onnx.ModelProto, cc.ModelHandle]:
    """A sample's float ONNX export and the same model quantized by ONNX Runtime in format ``kind``."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_dynamic, quantize_static

    handle = cc.load_model(sample)
    model, _ = prepare_for_quantization(to_onnx(handle))
    onnx.save(model, tmp_path / "float.onnx")
    target = tmp_path / f"{kind}.onnx"
    if kind == "dynamic":
        quantize_dynamic(tmp_path / "float.onnx", target, weight_type=QuantType.QUInt8)
    elif kind == "dynamic_per_channel":
        quantize_dynamic(tmp_path / "float.onnx", target, per_channel=True, weight_type=QuantType.QInt8)
    else:
        reader = EvalDataReader(calibration_inputs(handle.data.inputs, 32))
        quantize_static(
            tmp_path / "float.onnx", target, reader, quant_format=getattr(QuantFormat, kind), per_channel=True
        )
    return model, cc.load_model(target)


@pytest.mark.parametrize(
    ("sample", "kind", "precisions"),
    [
        ("digits_cnn", "dynamic", {"uint8 (ConvInteger)": 3, "uint8 (MatMulInteger)": 2}),
        ("digits_cnn", "dynamic_per_channel", {"int8 (ConvInteger)": 3, "int8 (MatMulInteger)": 2}),
        ("digits_cnn", "QOperator", {"int8 (QLinearConv)": 3, "int8 (QGemm)": 2}),
        ("digits_cnn", "QDQ", {"int8 QDQ": 5}),
        ("digits_transformer", "QOperator", {"int8 (QLinearMatMul)": 13, "int8 (QGemm)": 1}),
        ("digits_transformer", "QDQ", {"int8 QDQ": 14}),
    ],
)
def test_each_format_is_recognised_with_its_dequantized_weights(tmp_path, sample, kind, precisions):
    float_model, handle = _float_and_quantized(tmp_path, sample, kind)
    float_layers = layer_inventory(cc.load_model(tmp_path / "float.onnx"))
    layers = layer_inventory(handle)
    assert Counter(layer.precision for layer in layers) == precisions
    assert [layer.macs for layer in layers] == [layer.macs for layer in float_layers]
    for layer, original in zip(layers, float_layers, strict=True):
        reference = layer_weight_array(cc.load_model(tmp_path / "float.onnx"), original)
        weight = layer_weight_array(handle, layer)
        if weight.shape != reference.shape:  # a Gemm weight [out, in] became a MatMul weight [in, out]
            reference = reference.T
        step = np.abs(reference).max() / 127  # the widest int8 step any of these schemes takes
        assert np.abs(weight - reference).max() <= 0.51 * step, (layer.name, kind)


def test_a_partly_quantized_model_compresses_only_its_float_layers(tmp_path):
    from onnxruntime.quantization import QuantFormat, quantize_static

    handle = cc.load_model("digits_cnn")
    model, _ = prepare_for_quantization(to_onnx(handle))
    onnx.save(model, tmp_path / "float.onnx")
    float_names = [layer.name for layer in layer_inventory(cc.load_model(tmp_path / "float.onnx"))]
    reader = EvalDataReader(calibration_inputs(handle.data.inputs, 32))
    quantize_static(
        tmp_path / "float.onnx",
        tmp_path / "qdq.onnx",
        reader,
        quant_format=QuantFormat.QDQ,
        nodes_to_exclude=float_names[-1:],
    )
    partly = cc.load_model(tmp_path / "qdq.onnx")
    layers = layer_inventory(partly)
    assert [layer.precision for layer in layers] == ["int8 QDQ"] * 4 + ["float32"]
    compressed = cc.apply_plan(partly, Plan.from_text(f"version: 1\nlayers:\n  {float_names[-1]}: {{bits: 4}}\n"))
    assert list(compressed.compression.quantized) == [layers[-1].weight_name]
    with pytest.raises(CompressError, match=r"^layer '.*' is already int8 QDQ \(and 3 more already-quantized layers\)"):
        cc.apply_plan(partly, Plan.from_text("version: 1\ndefault: {bits: 4}\n"))
    texts = (
        layer_data.precision_summary(layers),
        layer_data.precision_note(layers[0]),
        layer_data.precision_note(layers[-1]),
    )
    assert texts[0] == (
        "This model is already quantized: 4 of 5 layers are stored as integers (int8 QDQ). Their statistics and "
        "views are of the dequantized weights; a plan cannot change them."
    )
    assert texts[1].startswith(f"`{layers[0].name}` is already int8 QDQ in this file") and texts[2] is None
    assert layer_data.precision_summary(layer_inventory(handle)) is None


# ---------------------------------------------------------------- MatMulNBits


def _pack(values: np.ndarray, bits: int) -> np.ndarray:
    """Rows of small unsigned ints -> uint8 rows holding them, lowest bits first (MatMulNBits' layout)."""
    per_byte = 8 // bits
    rows, count = values.shape
    padded = np.zeros((rows, -(-count // per_byte) * per_byte), dtype=np.uint16)
    padded[:, :count] = values
    grouped = padded.reshape(rows, -1, per_byte)
    return (grouped << (np.arange(per_byte, dtype=np.uint16) * bits)).sum(-1).astype(np.uint8)


def _nbits_model(weight: np.ndarray, bits: int, block: int, zero_points: bool) -> onnx.ModelProto:
    """One MatMulNBits node holding ``weight`` [K, N] in ``bits``-bit blocks (asymmetric with packed
    zero points, or symmetric around the default zero point)."""
    k, n = weight.shape
    blocks = -(-k // block)
    padded = np.zeros((blocks * block, n), dtype=np.float32)
    padded[:k] = weight
    grouped = padded.T.reshape(n, blocks, block)
    top = 2**bits - 1
    if zero_points:
        scale = (grouped.max(-1) - grouped.min(-1)) / top
        zero = np.clip(np.round(-grouped.min(-1) / scale), 0, top).astype(np.uint8)
    else:
        scale = np.abs(grouped).max(-1) / (2 ** (bits - 1) - 1)
        zero = np.full((n, blocks), 2 ** (bits - 1), dtype=np.uint8)
    levels = np.clip(np.round(grouped / scale[..., None] + zero[..., None]), 0, top).astype(np.uint8)
    packed = _pack(levels.reshape(n, -1), bits).reshape(n, blocks, block * bits // 8)
    initializers = [
        numpy_helper.from_array(packed, "B"),
        numpy_helper.from_array(scale.reshape(-1).astype(np.float32), "scales"),
    ]
    names = ["x", "B", "scales"]
    if zero_points:
        initializers.append(numpy_helper.from_array(_pack(zero, bits).reshape(-1), "zero_points"))
        names.append("zero_points")
    node = helper.make_node(
        "MatMulNBits", names, ["y"], name="proj", domain="com.microsoft", K=k, N=n, bits=bits, block_size=block
    )
    graph = helper.make_graph(
        [node],
        "nbits",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["M", k])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["M", n])],
        initializers,
    )
    return helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]
    )


@pytest.mark.parametrize("bits", (2, 4, 8))
@pytest.mark.parametrize("zero_points", (False, True))
def test_matmul_nbits_weights_are_what_onnx_runtime_computes(bits, zero_points, tmp_path):
    weight = np.random.default_rng(bits).standard_normal((72, 48)).astype(np.float32)  # 72 = 2 blocks of 32 + 8
    model = _nbits_model(weight, bits, 32, zero_points)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    computed = session.run(None, {"x": np.eye(72, dtype=np.float32)})[0]  # identity in: the weight ORT uses
    (layer,) = quantized_layers(model)
    assert (layer.precision, layer.weight.shape, layer.out_axis) == (f"{bits}-bit MatMulNBits", (72, 48), 1)
    np.testing.assert_array_equal(layer.weight, computed)
    onnx.save(model, tmp_path / "nbits.onnx")
    (info,) = layer_inventory(cc.load_model(tmp_path / "nbits.onnx"))
    assert (info.precision, info.weight_shape, info.macs) == (f"{bits}-bit MatMulNBits", (72, 48), 72 * 48)


def test_dequantize_scales_per_tensor_per_axis_and_per_block():
    stored = np.arange(12, dtype=np.int8).reshape(3, 4)
    np.testing.assert_allclose(dequantize(stored, np.float32(0.5), np.int8(2), 0), (stored - 2) * 0.5)
    per_row = dequantize(stored, np.array([1, 2, 3], np.float32), np.array([0, 1, 2], np.int8), 0)
    np.testing.assert_allclose(per_row, (stored - [[0], [1], [2]]) * [[1], [2], [3]])
    blocked = dequantize(stored, np.array([[1, 10]] * 3, np.float32), None, 1, block_size=2)
    np.testing.assert_allclose(blocked, stored * np.array([1, 1, 10, 10]))
    with pytest.raises(ValueError, match="does not fit"):
        dequantize(stored, np.ones(5, np.float32), None, 0)
