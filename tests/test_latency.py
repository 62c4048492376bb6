"""Latency measurement (interleaved, progress) and the per-layer profile and float-node census."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

import compress_core as cc
from compress_core.errors import CompressError
from compress_core.models import sessions
from compress_core.ort import latency
from compress_core.ort.export import to_onnx
from compress_core.ort.int8 import Int8Options, quantize_int8
from compress_core.ort.latency import batch_of, measure_latency
from compress_core.ort.layer_map import layer_targets
from compress_core.ort.profiling import FLOAT_COMPUTE_OPS, layer_of, op_census, profile_nodes
from compress_core.pipeline import compress
from compress_core.plan import Plan


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    handle = cc.load_model("digits_cnn")
    folder = tmp_path_factory.mktemp("latency")
    onnx.save(to_onnx(handle), folder / "fp32.onnx")
    compressed = compress(handle, Plan.from_text("version: 1\ndefault: {bits: 8}\nlayers:\n  head: null\n")).compressed
    quantize_int8(compressed, folder / "int8.onnx", Int8Options(calibration_samples=16))
    nodes = {name: target.node for name, target in layer_targets(handle, to_onnx(handle)).items()}
    return handle, {"fp32": folder / "fp32.onnx", "int8": folder / "int8.onnx"}, nodes


def test_measure_latency_interleaves_and_reports(files, monkeypatch):
    handle, paths, _ = files
    order = []
    original = latency.make_session

    def recording(path, threads, *args, **kwargs):
        session = original(path, threads, *args, **kwargs)
        run = session.run
        session_name = Path(path).stem

        class Recorder:
            def get_inputs(self):
                return session.get_inputs()

            def run(self, *a, **k):
                order.append(session_name)
                return run(*a, **k)

        return Recorder()

    monkeypatch.setattr(latency, "make_session", recording)
    calls = []
    results = measure_latency(
        paths, handle.data.inputs, threads=1, batch=4, warmup=1, runs=3, progress=lambda d, t: calls.append((d, t))
    )
    assert order == ["fp32", "int8"] * 4
    assert calls == [(i, 8) for i in range(1, 9)]
    first, second = results
    assert first.speedup == 1.0 and second.speedup == pytest.approx(first.median_ms / second.median_ms)
    for result in results:
        assert result.p10_ms <= result.median_ms <= result.p90_ms
        assert result.throughput == pytest.approx(4000 / result.median_ms)


def test_sessions_do_not_spin_between_interleaved_runs(files):
    # An idle session whose threads spin steals the cores of the next candidate's run.
    _, paths, _ = files
    options = sessions.make_session(paths["fp32"], threads=2).get_session_options()
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert options.intra_op_num_threads == 2


def test_a_session_that_is_not_timed_keeps_ort_thread_defaults_and_names_a_bad_model(files, tmp_path):
    _, paths, _ = files
    options = sessions.make_session(onnx.load(str(paths["fp32"]))).get_session_options()
    with pytest.raises(Exception, match="does not have configuration"):
        options.get_session_config_entry("session.intra_op.allow_spinning")
    assert options.log_severity_level == sessions.LOG_ERRORS_ONLY
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not a model")
    with pytest.raises(CompressError, match="broken.onnx: ONNX Runtime could not load it"):
        sessions.make_session(broken)


def test_measure_latency_rejects_bad_arguments(files):
    handle, paths, _ = files
    with pytest.raises(CompressError, match="baseline 'x' is not a candidate"):
        measure_latency(paths, handle.data.inputs, baseline="x", runs=1)
    with pytest.raises(CompressError, match="no ONNX file"):
        measure_latency({}, handle.data.inputs)


def test_batch_of_repeats_small_inputs():
    inputs = np.arange(6, dtype=np.float32).reshape(3, 2)
    assert batch_of(inputs, 7).shape == (7, 2) and batch_of(inputs, 7)[3].tolist() == [0.0, 1.0]


def test_census_counts_integer_and_float_nodes(files):
    _, paths, nodes = files
    fp32 = op_census(paths["fp32"], nodes)
    int8 = op_census(paths["int8"], nodes)
    assert fp32.integer == {} and fp32.float_nodes == 5
    assert sorted(fp32.float_layers) == sorted(nodes)  # ORT renames the convs it fuses with their Relu
    assert int8.integer == {"QLinearConv": 3, "QGemm": 1}
    assert int8.float == {"Gemm": 1} and int8.float_layers == ["head"]


def test_profile_maps_nodes_to_layers(files):
    handle, paths, nodes = files
    rows = profile_nodes(paths["int8"], handle.data.inputs, nodes, threads=1, batch=8, runs=2)
    assert {row.layer for row in rows} >= {"conv1", "conv2", "conv3", "fc1", "head"}
    assert sum(row.share for row in rows) == pytest.approx(1.0)
    assert layer_of("/conv1/Conv_token_3", nodes) == "conv1" and layer_of("/Relu", nodes) is None


def _optimized_graph(path: Path, folder: Path) -> onnx.ModelProto:
    """The graph this build of ONNX Runtime actually runs for ``path`` (its optimizations differ by CPU)."""
    sessions.make_session(path, threads=1, optimized_path=folder / "optimized.onnx")
    return onnx.load(str(folder / "optimized.onnx"), load_external_data=False)


def test_profile_maps_every_compute_node_to_its_layer(files, tmp_path):
    # Holds on any build: whatever ORT fused or renamed, each float compute node of the graph it
    # runs maps to exactly one layer, and every layer to exactly one of them.
    handle, paths, nodes = files
    optimized = _optimized_graph(paths["fp32"], tmp_path)
    compute_nodes = [node.name for node in optimized.graph.node if node.op_type in FLOAT_COMPUTE_OPS]
    rows = profile_nodes(paths["fp32"], handle.data.inputs, nodes, threads=1, batch=8, runs=1)
    compute = {row.node: row.layer for row in rows if row.op_type in FLOAT_COMPUTE_OPS}
    assert sorted(compute) == sorted(compute_nodes)
    assert sorted(compute.values()) == sorted(nodes)
    assert all(
        row.layer is None for row in rows if row.op_type in ("MaxPool", "ReorderInput", "ReorderOutput", "Flatten")
    )


def test_profile_maps_nodes_the_nchwc_transform_renamed(files, tmp_path):
    # On x86 (AVX2 / AVX-512 kernels), ORT fuses each Conv with its Relu into an NCHWc node named
    # after the Relu's output (``/Relu_output_0_nchwc``) and fc1 with its Relu into ``fused
    # /fc1/Gemm``: the initializers they read still tell their layers.
    handle, paths, nodes = files
    optimized = _optimized_graph(paths["fp32"], tmp_path)
    if not any(node.domain == "com.microsoft.nchwc" for node in optimized.graph.node):
        pytest.skip(
            "this ONNX Runtime build does not apply the x86 NCHWc layout transform (no renamed Conv nodes to map)"
        )
    rows = profile_nodes(paths["fp32"], handle.data.inputs, nodes, threads=1, batch=8, runs=1)
    compute = {row.node: row.layer for row in rows if row.op_type in ("Conv", "FusedConv", "Gemm", "FusedGemm")}
    assert compute == {
        "/Relu_output_0_nchwc": "conv1",
        "/Relu_1_output_0_nchwc": "conv2",
        "/Relu_2_output_0_nchwc": "conv3",
        "fused /fc1/Gemm": "fc1",
        "/head/Gemm": "head",
    }


def test_profile_counts_a_matmuls_bias_add_in_its_layer(tmp_path):
    handle = cc.load_model("digits_transformer")
    model = to_onnx(handle)
    onnx.save(model, tmp_path / "fp32.onnx")
    nodes = {name: target.node for name, target in layer_targets(handle, model).items()}
    rows = {
        row.node: row.layer
        for row in profile_nodes(tmp_path / "fp32.onnx", handle.data.inputs, nodes, threads=1, batch=8, runs=1)
    }
    assert rows["/blocks.0/attn/q_proj/Add"] == "blocks.0.attn.q_proj"
    assert rows["/blocks.1/mlp/fc2/Add"] == "blocks.1.mlp.fc2"
