"""Suggested plans: budgets met and measured, uniform comparison, one-line errors, CLI recipe."""

from __future__ import annotations

import pytest

from compress_core import CompressError, layer_inventory, load_model
from compress_core.analysis.sensitivity import run_sensitivity
from compress_core.analysis.suggest import Option, _Greedy, measure_plan, suggest_plan, uniform_plan
from compress_core.analysis.sweep import SensitivityResult, SensitivityRow, Sweep
from compress_core.cli import main
from compress_core.plan import Plan
from compress_core.plan.layer_config import LayerConfig

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
    code = main(
        [
            "suggest",
            "digits_mlp",
            "--target-size",
            "0.15",
            "--max-drop",
            "3",
            "--out",
            str(out),
            "--cache-dir",
            str(tmp_path),
            "--compare-uniform",
        ]
    )
    assert code == 0
    plan = Plan.load(out)
    assert set(plan.layers) <= {"fc1", "fc2", "fc3", "head"} and plan.layers
    printed = capsys.readouterr().out
    assert "suggested" in printed and "uniform 4-bit" in printed and "all budgets met" in printed


@pytest.mark.parametrize("granularity", ["channel", "tensor"])
@pytest.mark.parametrize(
    "option",
    [
        Option(bits=4),
        Option(bits=3, prune_kind="prune", ratio=0.5),
        Option(bits=4, prune_kind="structured", ratio=0.25),
        Option(bits=4, rank=0.5),
        Option(prune_kind="prune", ratio=0.5),
    ],
    ids=["bits", "bits+prune", "bits+structured", "bits+rank", "prune"],
)
@pytest.mark.parametrize("scheme", ["kmeans", "symmetric", "asymmetric", "pow2"])
def test_the_greedy_size_estimate_is_the_measured_plan_bytes(scheme, granularity, option):
    # One count of bytes: a kmeans layer stores a codebook of 2**bits floats per group, not a scale.
    handle = load_model("digits_mlp")
    layers = layer_inventory(handle)
    sweep = Sweep(bits=(option.bits or 8,), kinds=("bits",), scheme=scheme, granularity=granularity)
    cells = [
        (kind, level)
        for kind, level in (("bits", option.bits), (option.prune_kind, option.ratio), ("rank", option.rank))
        if kind and level
    ]
    rows = [SensitivityRow(layer.name, kind, level, 0.0, 0.0, 0.0) for layer in layers for kind, level in cells]
    greedy = _Greedy(handle, layers, SensitivityResult(handle.name, "accuracy", 0.0, sweep, rows=rows))
    last = layers[-1].name  # structured pruning leaves the model's outputs alone, as the sweep does
    greedy.choice = {
        layer.name: option if layer.name != last or option.prune_kind != "structured" else Option(bits=option.bits)
        for layer in layers
    }
    measured = measure_plan(handle, greedy.plan())
    if option.prune_kind == "structured":  # the next layer's inputs shrink too: the estimate ignores that coupling
        assert greedy.ratio("size") * measured["float_bytes"] >= measured["plan_bytes"]
    else:
        assert greedy.ratio("size") * measured["float_bytes"] == pytest.approx(measured["plan_bytes"], abs=1)


def test_a_layer_is_kept_float_only_when_int8_is_clearly_slower():
    from compress_core.analysis.suggest_latency import SLOWER_MARGIN, LayerTime

    assert LayerTime("conv1", 0.02, 0.06).int8_slower  # conv1 of digits_cnn, one input channel: about 2x slower
    assert not LayerTime("conv2", 0.11, 0.07).int8_slower
    assert not LayerTime("head", 0.010, 0.010 * SLOWER_MARGIN * 0.99).int8_slower  # within the profiler's noise
    assert not LayerTime("fc", None, 0.01).int8_slower


def test_suggest_for_latency_keeps_slow_int8_layers_float(tmp_path, capsys):
    recipe = tmp_path / "latency.yaml"
    assert main(["suggest", "digits_cnn", "--objective", "latency", "--out", str(recipe)]) == 0
    out = capsys.readouterr().out
    plan = Plan.load(recipe)
    table = {line.split()[0]: line.split() for line in out.splitlines() if line.split()[:1] in (["conv1"], ["conv2"])}
    kept = {name for name, config in plan.layers.items() if config is None}
    assert plan.default is not None and plan.default.bits == 8 and kept <= {"conv1", "conv2", "conv3", "fc1", "head"}
    for name, row in table.items():  # layer, fp32 ms, int8 ms, time with it float (if tried), plan
        assert (row[-1] == "float") == (name in kept)
        assert name not in kept or float(row[3]) <= 0.97  # a layer stays float only where its file ran faster
    assert "predicted speed-up" in out and "measured" in out and "latency plan" in out
    # accuracy of each file as ONNX Runtime measured it: keeping layers float costs no accuracy
    accuracy = {
        line.split()[0]: float(line.split()[-1]) for line in out.splitlines() if line.startswith(("fp32 ", "all int8"))
    }
    plan_accuracy = float(next(line for line in out.splitlines() if line.startswith("latency plan")).split()[-1])
    assert plan_accuracy >= accuracy["all"] - 0.01 and accuracy["fp32"] > 0.95


def test_model_page_suggests_for_latency_and_sets_the_plan():
    from apptest_helpers import button, first_run

    at = first_run()
    at.switch_page("pages/model.py").run()
    button(at, "Suggest for latency").click().run()
    assert not at.exception and not at.error
    summary = next(item.value for item in at.markdown if item.value.startswith("Predicted speed-up over fp32"))
    assert "measured on the exported file" in summary and "latency plan" in summary
    button(at, "Use this plan").click().run()
    plan = at.session_state["plans"]["digits_cnn"]
    assert plan["default"] == {"bits": 8} and all(config is None for config in plan.get("layers", {}).values())
