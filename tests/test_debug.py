"""The int8 debugger: a planted fault is found, the files are written, a fix changes the plan.

A "planted fault" is one layer at 2 bits among 8-bit layers: its own error (that layer alone, on
float inputs) must be the largest, and the ranking must put it first.
"""

from __future__ import annotations

import csv
import json
import math

import pytest

from compress_core.cli import main
from compress_core.debug.fix import Fix, fixed_plan
from compress_core.debug.overlay import BAD, GOOD, node_data
from compress_core.debug.report import CSV_COLUMNS, debug_model
from compress_core.debug.speed import verdict
from compress_core.errors import CompressError
from compress_core.models.loading import load_model
from compress_core.ort.int8 import Int8Options
from compress_core.pipeline import compress
from compress_core.plan import Plan

SAMPLES = 32


def planted(fault: str) -> Plan:
    return Plan.from_dict({"version": 1, "default": {"bits": 8}, "layers": {fault: {"bits": 2}}})


@pytest.mark.parametrize(("model", "fault"), [("digits_cnn", "conv2"), ("digits_resnet", "layer2.0.conv1")])
def test_planted_fault_ranks_first(model, fault, tmp_path):
    result = debug_model(compress(load_model(model), planted(fault)), tmp_path, samples=SAMPLES, speed=False)
    first = result.rows[0]
    assert first["layer"] == fault
    own = {row["layer"]: row["own_sqnr_db"] for row in result.rows if row["own_sqnr_db"] is not None}
    assert min(own, key=own.__getitem__) == fault
    # every layer is measured alone, also the first conv, whose one input channel the int8 file pads on x86
    assert set(own) == {row["layer"] for row in result.rows}
    assert first["weight_sqnr_db"] < 10 < first["activation_sqnr_db"]  # the cause: its weights
    assert first["suggestion"] == f"{fault} to 8 bits"
    assert first["restore_gain_db"] > 3


def test_cli_writes_layers_overlay_and_report(tmp_path, capsys):
    recipe = tmp_path / "recipe.yaml"
    planted("conv3").save(recipe)
    out = tmp_path / "debug"
    assert main(["debug", "digits_cnn", "--recipe", str(recipe), "--out", str(out), "--samples", "16"]) == 0
    printed = capsys.readouterr().out
    assert printed.splitlines()[2].split()[:3] == ["1", "conv3", "2"]
    with (out / "layers.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == list(CSV_COLUMNS)
    assert [row["layer"] for row in rows][0] == "conv3" and len(rows) == 5
    assert all(row["verdict"] for row in rows)  # profiled: every layer has a speed verdict
    overlay = json.loads((out / "node_data.json").read_text())
    graph = next(iter(overlay.values()))
    assert "/conv3/Conv" in graph["results"] and graph["gradient"][0]["stop"] == 0
    values = {node: result["value"] for node, result in graph["results"].items()}
    assert min(values, key=values.__getitem__) == "/conv3/Conv"
    assert (out / "node_data" / "int8_ms.json").exists()
    report = (out / "report.md").read_text()
    assert "| 1 | conv3 | 2 |" in report and "## Speed per layer" in report


def test_cli_refuses_dynamic_and_bad_samples(tmp_path, capsys):
    recipe = tmp_path / "recipe.yaml"
    planted("conv3").save(recipe)
    assert main(["debug", "digits_cnn", "--recipe", str(recipe), "--out", str(tmp_path), "--samples", "0"]) == 2
    assert capsys.readouterr().err.strip() == "error: samples 0 is not allowed; use an integer >= 1"
    planted("conv9").save(recipe)
    assert main(["debug", "digits_cnn", "--recipe", str(recipe), "--out", str(tmp_path)]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("error: ") and "conv9" in error and "\n" not in error
    with pytest.raises(SystemExit):
        main(["debug", "--help"])
    assert "--trust-code, --trust-pickle" in " ".join(capsys.readouterr().out.split())
    model = compress(load_model("digits_cnn"), planted("conv3"))
    with pytest.raises(CompressError, match="static \\(QDQ\\) int8"):
        debug_model(model, tmp_path, Int8Options(dynamic=True))


def test_fixes_change_only_their_layer():
    plan = planted("conv2")
    names = ["conv1", "conv2", "conv3", "fc1", "head"]
    assert fixed_plan(plan, names, Fix("float", "conv2")).config_for("conv2") is None
    raised = fixed_plan(plan, names, Fix("bits", "conv2"))
    assert raised.config_for("conv2").bits == 8 and plan.config_for("conv2").bits == 2
    switched = fixed_plan(plan, names, Fix("granularity", "conv1"))
    assert (
        switched.config_for("conv1").granularity == "tensor" and switched.config_for("conv3").granularity == "channel"
    )
    with pytest.raises(CompressError, match="layer 'conv1' is already at 8 bits; keep it float instead"):
        fixed_plan(plan, names, Fix("bits", "conv1"))
    with pytest.raises(CompressError, match="'nope' is not a layer"):
        fixed_plan(plan, names, Fix("float", "nope"))
    with pytest.raises(CompressError, match="fix 'drop' is not allowed"):
        Fix("drop", "conv2")


def test_speed_verdicts_name_the_cause():
    assert verdict(0.1, 0.2, None, False, 64) == "float: kept float by the plan"
    assert verdict(0.1, 0.2, 8, True, 64).startswith("float: ORT cannot fuse this pattern")
    assert verdict(0.02, 0.06, 8, False, 1) == "int8 slower: 1 input channel"
    assert verdict(0.001, 0.002, 8, False, 64) == "int8 slower: too small to gain (1.0 µs in fp32)"
    assert verdict(0.1, 0.125, 8, False, 64) == "int8 slower: 1.25x the fp32 time"
    assert verdict(0.2, 0.08, 4, False, 64) == "int8 2.5x faster"


def test_overlay_colours_worst_red_and_leaves_exact_layers_out():
    errors = node_data({"/a/Conv": 3.0, "/b/Conv": math.inf, "/c/Gemm": None}, ["fp32", "int8"], "own_sqnr_db")
    assert set(errors) == {"fp32", "int8"} and errors["int8"]["results"] == {"/a/Conv": {"value": 3.0}}
    assert errors["fp32"]["gradient"][0]["bgColor"] == BAD  # lowest SQNR: worst
    times = node_data({"/a/Conv": 0.5}, ["g"], "int8_ms")
    assert times["g"]["gradient"][0]["bgColor"] == GOOD  # shortest time: best
