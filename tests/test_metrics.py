"""Metrics: fidelity formulas, size at plan bit widths, zip size."""

from __future__ import annotations

import math

import numpy as np
import pytest

from compress_core import load_model
from compress_core.analysis.metrics import METRIC_KEYS, evaluate, output_fidelity
from compress_core.plan import Plan
from compress_core.plan.layer_config import LayerConfig, PruneConfig
from compress_core.transform.apply import apply_plan


@pytest.fixture(scope="module")
def mlp():
    return load_model("digits_mlp")


def test_output_fidelity_formulas():
    reference = np.array([[1.0, 0.0], [0.0, 2.0]])
    outputs = np.array([[1.0, 0.0], [0.0, 1.0]])
    result = output_fidelity(reference, outputs, np.array([0, 0]), "classification")
    assert result["accuracy"] == 0.5 and result["agreement"] == 1.0
    assert result["cosine"] == pytest.approx(1.0)
    assert result["sqnr_db"] == pytest.approx(10 * math.log10(5 / 1))
    embedding = output_fidelity(reference, outputs, None, "embedding")
    assert embedding["accuracy"] is None and embedding["agreement"] is None


def test_plan_bytes_count_bits_indices_and_scales(mlp):
    weights = {"fc1": 128 * 64, "fc2": 64 * 128, "fc3": 32 * 64, "head": 10 * 32}
    others = 128 + 64 + 32 + 10  # biases stay fp32
    plan = Plan(default=LayerConfig(bits=4), layers={"fc1": LayerConfig(bits=8, prune=PruneConfig(0.5))})
    compressed = apply_plan(mlp, plan)
    metrics = evaluate(mlp, compressed, with_zip=False)["compressed"]
    channels = {"fc1": 128, "fc2": 64, "fc3": 32, "head": 10}
    expected_bits = (
        others * 32
        + weights["fc1"] // 2 * 8
        + weights["fc1"]  # kept weights at 8 bits + one index bit per weight
        + sum(weights[n] * 4 for n in ("fc2", "fc3", "head"))
        + sum(channels.values()) * 32  # one fp32 scale per output channel
    )
    assert metrics["plan_bytes"] == math.ceil(expected_bits / 8)
    assert metrics["float_bytes"] == 4 * (sum(weights.values()) + others)
    stored_nonzero = sum(int((p != 0).sum()) for p in compressed.model.parameters())
    assert metrics["nonzero_params"] == stored_nonzero  # pruned weights and those 4 bits round to zero
    assert stored_nonzero < sum(weights.values()) + others - weights["fc1"] // 2


def test_evaluate_keys_and_zip_size(mlp):
    result = evaluate(mlp, apply_plan(mlp, Plan(default=LayerConfig(bits=4, prune=PruneConfig(0.8)))))
    assert set(METRIC_KEYS) <= set(result["original"]) and set(METRIC_KEYS) <= set(result["compressed"])
    assert result["original"]["sqnr_db"] == math.inf and result["original"]["agreement"] == 1.0
    assert result["compressed"]["zip_bytes"] < 0.6 * result["original"]["zip_bytes"]
    assert set(result["compressed"]["layer_sqnr"]) == {"fc1", "fc2", "fc3", "head"}
