"""Per-layer sensitivity: ranking, table shape, skips, activation cache, disk cache, cancellation, CLI."""

from __future__ import annotations

import csv
import threading

import pytest
import torch
from torch import nn

from compress_core import CompressError, load_model
from compress_core.analysis.activation_cache import StagedModel
from compress_core.analysis.sensitivity import run_sensitivity
from compress_core.analysis.sweep import CSV_COLUMNS, Sweep
from compress_core.cli import main
from compress_core.models.handle import RUN_BATCH, as_numpy
from compress_core.transform.torch_backend import copy_module

BITS = Sweep(kinds=("bits",))


@pytest.fixture(scope="module")
def mlp():
    return load_model("digits_mlp")


def test_outlier_layer_ranks_most_sensitive_to_low_bits(mlp):
    model = copy_module(mlp.model)
    with torch.no_grad():
        model.fc1.weight[:, 0] = 50.0  # input pixel 0 is always 0 in digits: the outputs do not change
    fragile = mlp.replace(model=model)
    plain = run_sensitivity(mlp, Sweep(bits=(3, 2), kinds=("bits",)), cache=False)
    result = run_sensitivity(fragile, Sweep(bits=(3, 2), kinds=("bits",)), cache=False)
    assert result.baseline == pytest.approx(plain.baseline)
    assert plain.ranking("bits")[0] != "fc1"
    assert result.ranking("bits")[0] == "fc1" and result.ranking("bits", level=3)[0] == "fc1"
    fc1 = result.ranked_rows("bits")[0]
    # The outlier keeps the weight SQNR high (33 dB): the measured drop, not the proxy, finds it.
    assert fc1.drop > 50 and fc1.proxy > 20


def test_one_row_per_layer_and_level_in_layer_order(mlp):
    result = run_sensitivity(mlp, Sweep(kinds=("bits", "prune")), cache=False)
    assert len(result.rows) == 4 * (5 + 9) and not result.skipped and not result.cancelled
    assert len({(row.layer, row.kind, row.level) for row in result.rows}) == len(result.rows)
    assert [row.layer for row in result.rows[::14]] == ["fc1", "fc2", "fc3", "head"]
    assert result.rows[0].kind == "bits" and result.rows[0].level == 8 and result.rows[5].level == 0.1
    for row in result.rows:
        assert row.drop == pytest.approx(result.baseline - row.metric)
    drops = [row.drop for row in result.rows if row.layer == "head" and row.kind == "prune"]
    assert drops[-1] > drops[0]
    assert result.metric_name == "accuracy" and result.seconds > 0 and result.evaluations == 56


def test_kinds_a_layer_cannot_take_are_skipped_not_errors():
    lstm = load_model("digits_lstm")
    result = run_sensitivity(lstm, Sweep(prune=(0.5,), ranks=(0.5,), kinds=("structured", "rank")), cache=False)
    assert [(row.layer, row.kind) for row in result.rows] == [("head", "rank")]
    reasons = {(cell.layer, cell.kind): cell.reason for cell in result.skipped}
    assert len(reasons) == 5
    assert "low-rank is not supported for LSTM" in reasons[("lstm.weight_ih_l0", "rank")]
    assert "structured pruning applies to Conv and Linear layers" in reasons[("lstm.weight_hh_l0", "structured")]
    assert reasons[("head", "structured")] == "its output channels are the model's outputs"


def test_activation_cache_matches_full_passes():
    cnn = load_model("digits_cnn")
    sweep = Sweep(bits=(2,), prune=(0.8,), ranks=(0.25,), kinds=("bits", "prune", "rank"))
    staged = run_sensitivity(cnn, sweep, cache=False)
    full = run_sensitivity(cnn, sweep, cache=False, staged=False)
    assert staged.strategy == "staged activation cache" and full.strategy == "weight swap, full passes"
    assert [(r.layer, r.kind, r.level, r.metric, r.proxy) for r in staged.rows] == [
        (r.layer, r.kind, r.level, r.metric, r.proxy) for r in full.rows
    ]


def test_structured_rows_match_apply_plan():
    cnn = load_model("digits_cnn")
    result = run_sensitivity(cnn, Sweep(prune=(0.5,), kinds=("structured",)), cache=False)
    assert [row.layer for row in result.rows] == ["conv1", "conv2", "conv3", "fc1"]
    assert result.rows[0].drop > 0 and 0 < result.rows[0].proxy < 10


def test_inplace_stages_do_not_corrupt_the_cache():
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(inplace=True), nn.Linear(8, 2)).eval()
    inputs = torch.randn(16, 4)
    staged = StagedModel.build(model, inputs)
    assert staged is not None and staged.mutates
    cut = staged.cut_for(model[2].weight)
    state = staged.advance(staged.start([inputs]), staged.cut_for(model[0].weight))
    with torch.inference_mode():
        first, second = as_numpy(staged.run_from(state)), as_numpy(staged.run_from(state))
        assert (first == second).all() and (first == model(inputs).numpy()).all()
    assert cut == 3


def test_untraceable_model_falls_back_to_full_passes():
    class Branchy(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 2)

        def forward(self, x):
            return self.fc(x) if x.sum() > 0 else -self.fc(x)

    assert StagedModel.build(Branchy(), torch.randn(3, 4)) is None


def test_cached_repeat_reads_the_disk_cache_and_evaluates_nothing(mlp, tmp_path, monkeypatch):
    # Whether the repeat is fast is for the benchmarks; here: it measures no cell and runs no model.
    from compress_core.analysis import runners as sweep_runners

    runners = []
    real_context = sweep_runners.CellContext

    def counting_runner(*args, **kwargs):
        runners.append(args)
        return real_context(*args, **kwargs)

    monkeypatch.setattr(sweep_runners, "CellContext", counting_runner)
    sweep = Sweep(kinds=("bits", "prune"))
    first = run_sensitivity(mlp, sweep, cache=tmp_path)
    assert not first.cached and len(runners) == 1 and first.evaluations == 4 * (5 + 9)
    forwards = []
    with monkeypatch.context() as patch:
        patch.setattr(nn.Linear, "forward", lambda module, x: forwards.append(module) or pytest.fail("a layer ran"))
        again = run_sensitivity(mlp, sweep, cache=tmp_path)
    assert again.cached and again.rows == first.rows and again.evaluations == first.evaluations
    assert len(runners) == 1 and not forwards
    assert len(list(tmp_path.glob("*.json"))) == 1
    other = run_sensitivity(mlp, Sweep(bits=(4,), kinds=("bits",)), cache=tmp_path)
    # a sweep within the first one's cells measures nothing either: its cells are in the cell cache
    assert other.cached and other.evaluations == 0 and len(list(tmp_path.glob("*.json"))) == 2


def test_staged_sweep_runs_each_layers_prefix_once(mlp, monkeypatch):
    # The activation cache's saving, counted rather than timed: with full passes every cell runs
    # fc1; staged, fc1 runs once per batch for the reference output, once per fc1 cell, and once
    # more to advance the cached activations past it.
    sweep = Sweep(bits=(4, 2), kinds=("bits",))
    calls = {"staged": 0, "full": 0}
    mode = ["staged"]
    real_forward = nn.Linear.forward

    def counting_forward(module, x):  # fc1 of the sweep's working copy (not of the handle's model)
        fc1 = mlp.model.fc1
        if module is not fc1 and (module.in_features, module.out_features) == (fc1.in_features, fc1.out_features):
            calls[mode[0]] += 1
        return real_forward(module, x)

    monkeypatch.setattr(nn.Linear, "forward", counting_forward)
    staged = run_sensitivity(mlp, sweep, cache=False)
    mode[0] = "full"
    full = run_sensitivity(mlp, sweep, cache=False, staged=False)
    assert staged.strategy == "staged activation cache" and full.strategy == "weight swap, full passes"
    assert [(r.layer, r.metric) for r in staged.rows] == [(r.layer, r.metric) for r in full.rows]
    batches = -(-len(mlp.data.inputs) // RUN_BATCH)
    cells = len(sweep.bits) * 4  # 4 layers
    assert full.evaluations == staged.evaluations == cells
    assert calls["full"] == batches * (1 + cells)  # the reference, then every cell
    # the trace check (the model and its stages on one batch), then per batch the reference, the
    # two fc1 cells, and advancing the cached activations past fc1
    assert calls["staged"] == 2 + batches * (1 + len(sweep.bits) + 1)


def test_cancellation_stops_within_one_evaluation(mlp, tmp_path):
    seen = []
    result = run_sensitivity(mlp, BITS, progress=seen.append, cancel=lambda: len(seen) >= 3, cache=tmp_path)
    assert result.cancelled and len(result.rows) == 3 and result.evaluations == 3
    assert seen[-1].cell == 3 and seen[-1].cell_count == 20 and seen[-1].layer_count == 4
    assert not list(tmp_path.glob("*.json"))
    event = threading.Event()
    event.set()
    assert run_sensitivity(mlp, BITS, cancel=event, cache=False).rows == []


def test_hessian_traces_rank_layers(mlp):
    result = run_sensitivity(mlp, Sweep(bits=(2,), kinds=("bits",)), hessian=True, cache=False)
    assert set(result.hessian) == {"fc1", "fc2", "fc3", "head"}
    assert all(trace > 0 for trace in result.hessian.values())
    assert result.ranking("hessian")[0] in result.hessian
    assert [row.kind for row in result.table()].count("hessian") == 4


@pytest.mark.parametrize(
    ("sweep", "message"),
    [
        (
            dict(kinds=("bits", "depth")),
            "unknown sensitivity kind 'depth'; use one or more of bits, prune, structured, rank",
        ),
        (dict(bits=(9,)), "sensitivity level for 'bits': bits 9 is not allowed; use null (float), 2..8 or 16"),
        (dict(prune=(1.5,)), "sensitivity level for 'prune': prune ratio 1.5 is not allowed; use a number in [0, 1)"),
        (dict(prune=(0,)), "sensitivity level for 'prune': prune ratio 0 is not allowed; use a number in (0, 1)"),
        (
            dict(ranks=(1.5,)),
            "sensitivity level for 'rank': rank 1.5 is not allowed; a fraction of full rank must be in (0, 1]",
        ),
    ],
)
def test_bad_sweeps_are_one_line_errors(sweep, message):
    with pytest.raises(CompressError) as error:
        Sweep(**sweep)
    assert str(error.value) == message


def test_cli_writes_csv_columns(tmp_path, capsys):
    out = tmp_path / "table.csv"
    code = main(
        [
            "sensitivity",
            "digits_mlp",
            "--kinds",
            "bits,prune",
            "--bits",
            "8,2",
            "--ratios",
            "0.5",
            "--out",
            str(out),
            "--no-cache",
            "--quiet",
        ]
    )
    assert code == 0
    rows = list(csv.reader(out.open()))
    assert tuple(rows[0]) == CSV_COLUMNS == ("layer", "kind", "level", "metric", "drop", "proxy")
    assert len(rows) == 1 + 4 * 3 and rows[1][:3] == ["fc1", "bits", "8"]
    assert "12 cells measured, 0 skipped" in capsys.readouterr().out


def test_cli_bad_kind_is_one_line(tmp_path, capsys):
    assert main(["sensitivity", "digits_mlp", "--kinds", "bits,width", "--out", str(tmp_path / "t.csv")]) == 2
    assert (
        capsys.readouterr().err
        == "error: unknown sensitivity kind 'width'; use one or more of bits, prune, structured, rank\n"
    )
