"""The CLI: tables, JSON shapes, written files, one-line errors with exit code 2."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from compress_core.cli import main

ROOT = Path(__file__).resolve().parents[1]
RECIPE = "version: 1\ndefault: {bits: 8}\nlayers:\n  conv1: {bits: 4, scheme: asymmetric}\n  fc1: {rank: 0.5}\n  head: null\n"


def test_inspect_table(capsys):
    assert main(["inspect", "digits_cnn"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].split()[:3] == ["name", "type", "weight_shape"]
    assert "conv1  Conv2d  16x1x3x3" in out
    assert "5 layers, 40,282 parameters in them" in out


def test_inspect_json(capsys):
    assert main(["inspect", "digits_mlp", "--json"]) == 0
    payload = json.loads(capsys.readouterr().out)
    assert payload["layers"] == 4 and len(payload["layer_table"]) == 4
    assert payload["layer_table"][0]["name"] == "fc1" and len(payload["layer_table"][0]["channel_max"]) == 128


def test_evaluate_json(tmp_path, capsys):
    (tmp_path / "r.yaml").write_text(RECIPE)
    assert main(["evaluate", "digits_cnn", "--recipe", str(tmp_path / "r.yaml"), "--json"]) == 0
    payload = json.loads(capsys.readouterr().out)
    keys = {"accuracy", "agreement", "cosine", "sqnr_db", "params", "macs", "float_bytes", "plan_bytes", "zip_bytes"}
    assert keys <= set(payload["original"]) and keys <= set(payload["compressed"])
    assert payload["compressed"]["plan_bytes"] < payload["original"]["plan_bytes"] / 2
    assert payload["original"]["sqnr_db"] is None  # identical outputs: infinite SQNR, written as strict JSON null


def test_apply_writes_models_and_metrics(tmp_path, capsys):
    (tmp_path / "r.yaml").write_text(RECIPE)
    out = tmp_path / "out"
    assert main(["apply", "digits_cnn", "--recipe", str(tmp_path / "r.yaml"), "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == [
        "metrics.json",
        "metrics.md",
        "model.onnx",
        "model.ts",
        "recipe.yaml",
    ]
    assert json.loads((out / "metrics.json").read_text())["compressed"]["accuracy"] > 0.95
    assert "| Accuracy |" in (out / "metrics.md").read_text()
    assert main(["inspect", str(out / "model.onnx")]) == 0
    assert "6 layers" in capsys.readouterr().out
    assert main(["inspect", str(out / "model.ts")]) == 2  # TorchScript runs code on load, even our own
    assert "model.ts: is a TorchScript archive; loading it runs code stored in the file" in capsys.readouterr().err
    assert main(["inspect", str(out / "model.ts"), "--trust-code"]) == 0
    assert "6 layers" in capsys.readouterr().out


COMMANDS_THAT_LOAD_A_MODEL = ("inspect", "evaluate", "apply", "finetune", "export", "sensitivity", "suggest", "debug")


def test_every_command_but_bench_loads_a_model():
    from compress_core.cli import COMMAND_MODULES

    assert set(COMMAND_MODULES) - set(COMMANDS_THAT_LOAD_A_MODEL) == {"bench"}  # bench reads an export folder


@pytest.mark.parametrize("command", COMMANDS_THAT_LOAD_A_MODEL)
def test_every_loading_command_has_the_trust_switch(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    words = " ".join(capsys.readouterr().out.split())
    assert "--trust-code, --trust-pickle" in words
    assert all(kind in words for kind in ("TorchScript", ".pt2 with pickled parts", "a full pickle"))


@pytest.mark.parametrize(
    "args,message",
    [
        (["inspect", "nowhere.onnx"], "error: nowhere.onnx: no such file, and not a sample name"),
        (["evaluate", "digits_cnn", "--recipe", "absent.yaml"], "error: absent.yaml: no such recipe file"),
    ],
)
def test_errors_are_one_line_with_exit_code_2(args, message):
    result = subprocess.run([sys.executable, "-m", "compress_core", *args], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 2
    assert result.stderr.strip() == message or result.stderr.strip().startswith(message)
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr


def test_bad_recipe_value_exit_code(tmp_path, capsys):
    (tmp_path / "r.yaml").write_text("version: 1\nlayers: {conv1: {bits: 11}}\n")
    assert main(["evaluate", "digits_cnn", "--recipe", str(tmp_path / "r.yaml")]) == 2
    assert "layer 'conv1': bits 11 is not allowed" in capsys.readouterr().err
