"""The export folder and the export / bench commands: files, metrics, atomicity, exit codes."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

import compress_core as cc
from compress_core import atomic
from compress_core.cli import main
from compress_core.errors import CompressError
from compress_core.ort import artifacts
from compress_core.ort.artifacts import export_artifacts
from compress_core.ort.bench import bench_folder, layer_comparison
from compress_core.ort.int8 import Int8Options
from compress_core.pipeline import compress
from compress_core.plan import Plan

RECIPE = "version: 1\ndefault: {bits: 8}\nlayers:\n  head: null\n"
BENCH_KEYS = {"name", "median_ms", "p10_ms", "p90_ms", "speedup", "accuracy", "bytes", "zip_bytes"}


@pytest.fixture(scope="module")
def cnn() -> cc.ModelHandle:
    return cc.load_model("digits_cnn")


@pytest.fixture(scope="module")
def exported(cnn, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("export") / "cnn out"
    export_artifacts(compress(cnn, Plan.from_text(RECIPE)), folder, Int8Options(calibration_samples=32))
    return folder


def test_folder_holds_every_file_and_the_metrics(exported):
    assert sorted(p.name for p in exported.iterdir()) == sorted(set(artifacts.FILES) - {artifacts.NBITS_ONNX})
    metrics = json.loads((exported / "metrics.json").read_text())
    onnx_files = {name: entry for name, entry in metrics["artifacts"].items() if name.endswith(".onnx")}
    assert set(onnx_files) == {"original_fp32.onnx", "model_fp32.onnx", "model_int8.onnx"}
    for entry in metrics["artifacts"].values():
        assert entry["bytes"] > 0 and entry["zip_bytes"] > 0
    assert onnx_files["model_int8.onnx"]["bytes"] < onnx_files["model_fp32.onnx"]["bytes"] / 2.5
    assert abs(onnx_files["model_int8.onnx"]["accuracy"] - metrics["pytorch"]["compressed"]["accuracy"]) <= 0.01
    assert metrics["layer_nodes"]["conv1"] == "/conv1/Conv"
    assert [row["storage"] for row in metrics["int8"]["layers"]][-1] == "float"
    report = (exported / "report.md").read_text()
    assert "model_int8.onnx" in report and "PyTorch simulation" in report
    assert Plan.load(exported / "recipe.yaml").to_dict() == Plan.from_text(RECIPE).to_dict()


def test_failure_leaves_nothing_behind(cnn, tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise CompressError("simulated failure")

    monkeypatch.setattr(artifacts, "quantize_int8", broken)
    folder = tmp_path / "out"
    with pytest.raises(CompressError, match="simulated failure"):
        export_artifacts(compress(cnn, Plan.from_text(RECIPE)), folder, Int8Options())
    assert list(tmp_path.iterdir()) == []


def test_uncompressed_handle_is_refused(cnn):
    with pytest.raises(CompressError, match="carries no plan"):
        compress(cnn, Plan.from_text(RECIPE)).fine_tuned(cnn)


def test_cli_export_and_bench(tmp_path, capsys):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(RECIPE)
    out = tmp_path / "dir"
    code = main(
        [
            "export",
            "digits_mlp",
            "--recipe",
            str(recipe),
            "--out",
            str(out),
            "--int8",
            "--calibration",
            "16",
            "--calibrate-method",
            "entropy",
        ]
    )
    assert code == 0
    assert {"model_fp32.onnx", "model_int8.onnx", "model.pt", "recipe.yaml", "metrics.json", "report.md"} <= {
        p.name for p in out.iterdir()
    }
    capsys.readouterr()
    assert main(["bench", str(out), "--runs", "3", "--warmup", "1", "--batch", "8", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [row["name"] for row in rows] == ["original_fp32", "compressed_fp32", "compressed_int8", "ort_default_int8"]
    assert all(BENCH_KEYS <= set(row) for row in rows)
    assert rows[0]["speedup"] == 1.0 and rows[2]["integer_nodes"] == 3
    assert set(rows[1]["layer_ms"]) >= {"fc1", "fc2", "fc3", "head"} and rows[2]["float_layers"] == ["head"]
    assert main(["bench", str(out), "--runs", "1", "--warmup", "0", "--batch", "8"]) == 0
    table = capsys.readouterr().out
    assert "compressed_int8: still float after ORT's optimization: head" in table
    assert "original_fp32: still float" not in table  # every layer of a float file is float: no news
    per_layer = next(line for line in table.splitlines() if line.startswith("per layer (profiler)"))
    assert ("int8 is faster on all 3 integer layers" in per_layer) != ("int8 is slower on" in per_layer)
    assert "nodes of no layer" in per_layer and "head" not in per_layer  # head is float in both files


def test_layer_comparison_puts_layers_where_int8_costs_time_first():
    rows = [
        {
            "name": "compressed_fp32",
            "float_layers": ["conv1", "conv2", "fc", "head"],
            "layer_ms": {"conv1": 2.0, "conv2": 1.0, "fc": 0.0, "head": 0.1, "(no layer)": 0.2},
        },
        {
            "name": "compressed_int8",
            "float_layers": ["head"],
            "layer_ms": {"conv1": 0.5, "conv2": 1.25, "fc": 0.1, "head": 0.1, "(no layer)": 0.9},
        },
    ]
    table = layer_comparison(rows)
    assert [row["layer"] for row in table] == ["conv2", "conv1"]  # head float in int8, fc has no fp32 time
    assert table[0]["speedup"] == pytest.approx(0.8) and table[1]["speedup"] == pytest.approx(4.0)
    assert layer_comparison(rows[:1]) == []


def test_bench_names_float_layers_of_an_int8_file_without_integer_kernels(tmp_path, capsys):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("version: 1\ndefault: {bits: 8}\nlayers:\n  're:.*': null\n")
    out = tmp_path / "dir"
    assert (
        main(["export", "digits_mlp", "--recipe", str(recipe), "--out", str(out), "--int8", "--calibration", "16"]) == 0
    )
    capsys.readouterr()
    assert main(["bench", str(out), "--runs", "1", "--warmup", "0", "--batch", "8"]) == 0
    table = capsys.readouterr().out
    assert "compressed_int8: still float after ORT's optimization: fc1, fc2, fc3, head" in table
    assert "per layer (profiler)" not in table  # no integer layer to compare


def test_cli_errors_are_one_line_with_exit_code_2(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("version: 1\nlayers:\n  nosuchlayer: {bits: 8}\n")
    assert main(["export", "digits_mlp", "--recipe", str(bad), "--out", str(tmp_path / "o")]) == 2
    error = capsys.readouterr().err
    assert error.startswith("error: layer 'nosuchlayer'") and error.count("\n") == 1
    assert not (tmp_path / "o").exists()
    assert main(["bench", str(tmp_path)]) == 2
    assert "not an export folder" in capsys.readouterr().err


def test_a_rebuild_without_int8_removes_the_old_int8_file(tmp_path):
    mlp = cc.load_model("digits_mlp")
    model = compress(mlp, Plan.from_text(RECIPE))
    folder = tmp_path / "out"
    export_artifacts(model, folder, Int8Options(calibration_samples=16))
    assert (folder / artifacts.INT8_ONNX).is_file()
    result = export_artifacts(model, folder)
    assert not (folder / artifacts.INT8_ONNX).exists() and artifacts.INT8_ONNX not in result.files
    assert sorted(path.name for path in folder.iterdir()) == sorted(result.files)
    rows = bench_folder(folder, runs=1, warmup=0, batch=8)
    assert [row["name"] for row in rows] == ["original_fp32", "compressed_fp32", "ort_default_int8"]


@pytest.fixture
def umask_027():
    previous = os.umask(0o027)
    yield
    os.umask(previous)


def test_an_atomic_write_gets_the_mode_of_a_normal_file_without_touching_the_umask(tmp_path, umask_027, monkeypatch):
    def no_umask_calls(mask):
        raise AssertionError("os.umask changes the mask of every thread")

    monkeypatch.setattr(os, "umask", no_umask_calls)
    assert atomic.current_umask() == 0o027
    written = atomic.atomic_write_text(tmp_path / "a.txt", "text")
    assert written.read_text() == "text" and stat.S_IMODE(written.stat().st_mode) == 0o640
    assert [path.name for path in tmp_path.iterdir()] == ["a.txt"]


def test_without_proc_the_umask_is_taken_to_be_022(tmp_path, monkeypatch):
    monkeypatch.setattr(atomic, "PROC_STATUS", tmp_path / "no-such-status")
    assert atomic.current_umask() == atomic.DEFAULT_UMASK == 0o022
    written = atomic.atomic_write_bytes(tmp_path / "b.bin", b"x")
    assert stat.S_IMODE(written.stat().st_mode) == 0o644


def test_a_failed_atomic_write_leaves_nothing(tmp_path):
    def broken(temporary: Path) -> None:
        temporary.write_bytes(b"partial")
        raise CompressError("simulated failure")

    with pytest.raises(CompressError, match="simulated failure"):
        atomic.atomic_write(tmp_path / "c.bin", broken)
    assert list(tmp_path.iterdir()) == []
