"""Tests for the shipped sample models (``sample_models``)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import sample_models
from sample_models import SAMPLE_NAMES, build_model, digits_split, input_shape, load_sample

THRESHOLDS = {
    "digits_cnn": 0.97,
    "digits_mlp": 0.95,
    "digits_transformer": 0.93,
    "digits_lstm": 0.93,
    "digits_resnet": 0.97,
}

EXPECTED_SHAPES = {
    "digits_cnn": (1, 8, 8),
    "digits_mlp": (64,),
    "digits_transformer": (8, 8),
    "digits_lstm": (8, 8),
    "digits_resnet": (1, 32, 32),
}

ACCURACIES = Path(sample_models.__file__).resolve().parent / "accuracies.json"


def _accuracy(model: torch.nn.Module, x: np.ndarray, y: np.ndarray) -> float:
    with torch.no_grad():
        pred = model(torch.tensor(x)).argmax(1).numpy()
    return float((pred == y).mean())


def test_sample_names() -> None:
    assert SAMPLE_NAMES == tuple(THRESHOLDS)


@pytest.mark.parametrize("name", SAMPLE_NAMES)
def test_split_sizes_and_shapes(name: str) -> None:
    x_tr, y_tr, x_te, y_te = digits_split(name)
    assert len(x_tr) + len(x_te) == 1797
    assert len(x_tr) == len(y_tr) == 1347
    assert len(x_te) == len(y_te) == 450
    assert input_shape(name) == EXPECTED_SHAPES[name]
    assert x_tr.shape[1:] == x_te.shape[1:] == EXPECTED_SHAPES[name]
    assert x_tr.dtype == x_te.dtype == np.float32
    assert y_tr.dtype == y_te.dtype == np.int64
    assert 0.0 <= x_tr.min() and x_tr.max() <= 1.0
    assert set(np.unique(y_te)) == set(range(10))


def test_split_is_shared_across_samples() -> None:
    _, y_cnn, x_cnn, y_cnn_te = digits_split("digits_cnn")
    _, y_mlp, x_mlp, y_mlp_te = digits_split("digits_mlp")
    _, y_seq, x_seq, _ = digits_split("digits_lstm")
    np.testing.assert_array_equal(y_cnn, y_mlp)
    np.testing.assert_array_equal(y_cnn_te, y_mlp_te)
    np.testing.assert_array_equal(x_cnn.reshape(-1, 64), x_mlp)
    np.testing.assert_array_equal(x_cnn[:, 0], x_seq)


def test_split_arrays_are_read_only() -> None:
    x_tr, *_ = digits_split("digits_cnn")
    with pytest.raises(ValueError):
        x_tr[0, 0, 0, 0] = 1.0


@pytest.mark.parametrize("name", SAMPLE_NAMES)
def test_pretrained_accuracy(name: str) -> None:
    model = load_sample(name)
    assert not model.training
    _, _, x_te, y_te = digits_split(name)
    acc = _accuracy(model, x_te, y_te)
    assert acc >= THRESHOLDS[name], f"{name}: test accuracy {acc:.4f} < {THRESHOLDS[name]}"
    recorded = json.loads(ACCURACIES.read_text())[name]["test_accuracy"]
    assert abs(acc - recorded) <= 1.0 / len(y_te) + 1e-9


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning", "ignore::DeprecationWarning")
@pytest.mark.parametrize("name", SAMPLE_NAMES)
def test_forward_and_trace(name: str) -> None:
    model = build_model(name).eval()
    x = torch.rand(3, *input_shape(name))
    with torch.no_grad():
        out = model(x)
        assert out.shape == (3, 10)
        traced = torch.jit.trace(model, (torch.rand(2, *input_shape(name)),))
        torch.testing.assert_close(traced(x), out)  # batch size is not baked in


def test_params_recorded() -> None:
    recorded = json.loads(ACCURACIES.read_text())
    for name in SAMPLE_NAMES:
        n = sum(p.numel() for p in build_model(name).parameters())
        assert recorded[name]["params"] == n


def test_load_sample_returns_independent_models() -> None:
    a, b = load_sample("digits_mlp"), load_sample("digits_mlp")
    with torch.no_grad():
        a.fc1.weight.zero_()
    assert b.fc1.weight.abs().sum() > 0


@pytest.mark.parametrize("func", [build_model, load_sample, input_shape, digits_split])
def test_unknown_name_raises(func) -> None:
    with pytest.raises(ValueError, match="no_such_model") as info:
        func("no_such_model")
    assert "digits_cnn" in str(info.value)
