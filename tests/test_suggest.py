"""Suggested plans: budgets met and measured, uniform comparison, one-line errors, CLI recipe."""

from __future__ import annotations

import pytest

from compress_core import CompressError, load_model
from compress_core.cli import main
from compress_core.plan import LayerConfig, Plan
from compress_core.analysis.sensitivity import Sweep, run_sensitivity
from compress_core.analysis.suggest import measure_plan, suggest_plan, uniform_plan

SWEEP = Sweep(kinds=("bits", "prune"))


@pytest.fixture(scope="module")
def cnn():
    handle = load_model("digits_cnn")
    return handle, run_sensitivity(handle, SWEEP, cache=False)


def test_suggest_meets_its_size_budget(cnn):
    handle, table = cnn
    suggestion = suggest_plan(handle, table, target_size=1 / 6)
    assert suggestion.met and not suggestion.notes
    assert suggestion.metrics["size_ratio"] <= 1 / 6
    assert suggestion.metrics["drop"] <= 1.5
    assert set(suggestion.plan.layers) <= {"conv1", "conv2", "conv3", "fc1", "head"} and suggestion.plan.layers
    again = measure_plan(handle, suggestion.plan)
    assert again["plan_bytes"] == suggestion.metrics["plan_bytes"] and again["float_bytes"] == 40506 * 4


def test_tighter_size_budget_uses_fewer_bits(cnn):
    handle, table = cnn
    loose = suggest_plan(handle, table, target_size=0.25)
    tight = suggest_plan(handle, table, target_size=0.1)
    assert tight.metrics["size_ratio"] <= 0.1 < loose.metrics["size_ratio"] <= 0.25
    assert tight.estimated_drop >= loose.estimated_drop


def test_max_drop_alone_bounds_the_estimate(cnn):
    handle, table = cnn
    suggestion = suggest_plan(handle, table, max_drop=0.5)
    assert suggestion.estimated_drop <= 0.5
    assert suggestion.metrics["size_ratio"] < 0.2


def test_uniform_plan_is_the_widest_bit_width_within_the_target():
    handle = load_model("digits_mlp")
    plan, metrics = uniform_plan(handle, 1 / 6)
    assert plan.default.bits == 4 and metrics["size_ratio"] <= 1 / 6
    wider = measure_plan(handle, Plan(default=LayerConfig(bits=5)))
    assert wider["size_ratio"] > 1 / 6


@pytest.mark.parametrize(
    ("budget", "message"),
    [
        (dict(target_size=0.0), "target size 0.0 is not allowed; use a ratio in (0, 1], e.g. 0.15"),
        (dict(target_macs=1.5), "target MACs 1.5 is not allowed; use a ratio in (0, 1], e.g. 0.15"),
        (dict(max_drop=-1), "max drop -1 is not allowed; use points of metric >= 0, e.g. 1.0"),
        ({}, "give at least one budget: a target size, a target MACs ratio or a maximum drop"),
    ],
)
def test_bad_budgets_are_one_line_errors(cnn, budget, message):
    handle, table = cnn
    with pytest.raises(CompressError) as error:
        suggest_plan(handle, table, **budget)
    assert str(error.value) == message


def test_cli_writes_a_recipe(tmp_path, capsys):
    out = tmp_path / "plan.yaml"
    code = main(["suggest", "digits_mlp", "--target-size", "0.15", "--max-drop", "3", "--out", str(out), "--cache-dir", str(tmp_path), "--compare-uniform"])
    assert code == 0
    plan = Plan.load(out)
    assert set(plan.layers) <= {"fc1", "fc2", "fc3", "head"} and plan.layers
    printed = capsys.readouterr().out
    assert "suggested" in printed and "uniform 4-bit" in printed and "all budgets met" in printed
