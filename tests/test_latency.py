"""Latency measurement (interleaved, progress) and the per-layer profile and float-node census."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
import onnx
import pytest

import compress_core as cc
from compress_core.cli import main
from compress_core.errors import CompressError
from compress_core.models import sessions
from compress_core.ort import bench, budget, latency
from compress_core.ort.artifacts import export_artifacts
from compress_core.ort.bench import bench_folder, layer_comparison
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


# The benchmark's budget -------------------------------------------------------------------------


def _costs(run_s: float = 0.05, **changes) -> budget.BenchCosts:
    """Four candidates of ``run_s`` seconds per run at batch 1, opened in 0.1 s; 16 samples; 4 s of
    ORT's default quantization still to do."""
    names = ("original_fp32", "compressed_fp32", "compressed_int8", "ort_default_int8")
    fields = {"run_s": dict.fromkeys(names, run_s), "session_s": dict.fromkeys(names, 0.1), "samples": 16}
    return budget.BenchCosts(**{**fields, "pending_s": 4.0, **changes})


def test_the_plan_picks_the_largest_batch_that_fits_good_runs_and_fills_the_budget():
    # 90% of 45 s is 40.5 s; 4 s of quantization and, with the analysis's margin of 1.3, 5.72 s of
    # quality (16 samples x 0.2 s) and census and profiler sessions (1.2 s) leave 30.78 s: 19 rounds at
    # batch 8 (1.6 s each), too few for 20 runs and the warm-up and profiler around them; 38 at batch 4
    plan = budget.plan_bench(_costs(), 45.0)
    assert (plan.batch, plan.warmup, plan.profile_runs, plan.runs) == (4, 3, 3, 27)
    profiled = budget.ANALYSIS_MARGIN * budget.PROFILE_FACTOR * 4 * 0.8
    assert plan.estimated_s == pytest.approx(4 + 5.72 + 30 * 0.8 + profiled) and plan.fits and plan.auto_runs
    assert plan.batch_note == f"the largest that fits {budget.GOOD_RUNS} runs"
    assert "batch 4" in plan.summary() and "(budget 45 s)" in plan.summary()
    fast = budget.plan_bench(_costs(0.0001), 45.0)  # a tiny model: the preferred batch, runs capped
    assert (fast.batch, fast.runs, fast.warmup, fast.profile_runs) == (32, budget.MAX_RUNS, 5, budget.PROFILE_RUNS)
    assert fast.estimated_s < 10


def test_a_static_batch_wins_and_given_runs_and_batch_are_kept():
    static = budget.plan_bench(_costs(fixed_batch=1), 45.0, batch=32)
    assert static.batch == 1 and static.batch_note == "the model's static batch"
    given = budget.plan_bench(_costs(), 45.0, batch=16, runs=50, warmup=2)
    assert (given.batch, given.runs, given.warmup, given.auto_runs) == (16, 50, 2, False)
    profiled = budget.ANALYSIS_MARGIN * budget.PROFILE_FACTOR * (1 + given.profile_runs) * 3.2
    assert given.estimated_s == pytest.approx(4 + 5.72 + 52 * 3.2 + profiled)
    assert not given.fits and "over the 45 s budget" in given.summary()  # estimated, and said, not refused
    free = budget.plan_bench(_costs(), None)
    assert (free.batch, free.runs, free.warmup, free.profile_runs) == (32, 50, 5, 10) and free.fits


def test_a_plan_over_budget_names_what_takes_the_time():
    plan = budget.plan_bench(_costs(samples=1000), 45.0)  # quality runs alone take 200 s
    assert plan.batch == 1 and plan.runs == budget.MIN_RUNS and not plan.fits
    assert "running 4 files on 1000 samples for their quality takes about 3 min 20 s alone" in plan.summary()


def test_the_warm_up_settles_the_runs_from_what_it_measured():
    plan = budget.plan_bench(_costs(), 45.0)
    # the warm-up found batch 4 at 0.1 s per run of each file (0.4 s a round), 12 s after the start:
    # 40.5 - 12 - analysis 1.3 x (3.2 + 1.2 + 1.5 x 4 x 0.4) = 19.66 s left: 49 rounds
    assert budget.runs_that_fit(plan, _costs(), dict.fromkeys(_costs().run_s, 0.1), 12.0) == 49
    assert budget.runs_that_fit(plan, _costs(), dict.fromkeys(_costs().run_s, 5.0), 12.0) == budget.MIN_RUNS
    given = budget.plan_bench(_costs(), 45.0, runs=7)
    assert budget.runs_that_fit(given, _costs(), dict.fromkeys(_costs().run_s, 0.1), 12.0) == 7


def test_bad_budget_arguments_are_refused():
    with pytest.raises(CompressError, match="budget 0 s is not allowed"):
        budget.plan_bench(_costs(), 0)
    with pytest.raises(CompressError, match="runs 0 is not allowed"):
        budget.plan_bench(_costs(), 45.0, runs=0)


def test_the_tracker_reports_time_left_and_stops_between_steps():
    now = [0.0]
    reports = []
    stop = [False]
    steps = [budget.Step("a", "step a", 10.0), budget.Step("b", "step b", 20.0)]
    tracker = budget.Tracker(steps, lambda f, t: reports.append((f, t)), lambda: stop[0], lambda: now[0])
    tracker.begin("a")
    assert reports[-1] == (0.0, "step a; about 30 s left")
    now[0] = 5.0
    tracker.tick(1, 4)  # a quarter done in 5 s: 15 s more for a
    assert reports[-1][1] == "step a; about 35 s left" and reports[-1][0] == pytest.approx(5 / 40)
    now[0] = 20.0
    tracker.begin("b")  # a took twice its estimate: b's is doubled too
    assert reports[-1][1] == "step b; about 40 s left" and reports[-1][0] == pytest.approx(20 / 60)
    stop[0] = True
    tracker.tick(1, 2)  # ticks never stop the job
    with pytest.raises(budget.Stopped, match="stopped after 20 s"):
        tracker.begin("c")
    tracker.begin("c", check=False)
    assert budget.format_seconds(0.4) == "< 1 s" and budget.format_seconds(185) == "3 min 05 s"


def test_export_steps_are_estimated_from_one_forward_pass():
    steps = {
        step.key: step.seconds
        for step in budget.export_steps(
            0.1, 16, onnx_bytes=20_000_000, data_bytes=30_000_000, int8="static", calibration_samples=64, census=True
        )
    }
    assert list(steps) == ["prepare", "write", "int8", "run", "census"] and steps["prepare"] == 0
    assert steps["int8"] == pytest.approx(0.5 + 1.0 + 16 * 0.1 * budget.CALIBRATION_FACTOR)
    assert steps["run"] == pytest.approx(3 * (0.2 + 1.6))
    assert "int8" not in {step.key for step in budget.export_steps(0.1, 16, onnx_bytes=1, data_bytes=1, int8=None)}


# The benchmark of an export folder: plan, progress, stop -----------------------------------------


@pytest.fixture(scope="module")
def mlp_folder(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("bench") / "mlp"
    model = compress(cc.load_model("digits_mlp"), Plan.from_text("version: 1\ndefault: {bits: 8}\n"))
    export_artifacts(model, folder, Int8Options(calibration_samples=16))
    return folder


def test_bench_plans_from_its_first_timed_runs(mlp_folder, monkeypatch):
    real = bench.open_and_probe

    def probe(*args, **kwargs):  # each file takes 10 ms per sample, by this fake clock
        session, _, _ = real(*args, **kwargs)
        return session, 0.01, 0.01

    monkeypatch.setattr(bench, "open_and_probe", probe)
    plans, reports = [], []
    rows = bench_folder(
        mlp_folder, threads=1, budget_s=45.0, on_plan=plans.append, progress=lambda f, t: reports.append((f, t))
    )
    # quality runs of 450 samples x (3 files x 10 ms + ORT's default taken as 20 ms): 22.5 s, 29.4 s
    # with the analysis's margin; 2.1 s of quantization: 9 s are left for 20 runs and the warm-up and
    # profiler around them: 22 rounds at batch 8 (0.4 s each) do not fit them, 45 at batch 4 do
    (plan,) = plans
    assert plan.batch == 4 and 28 <= plan.runs <= 36 and plan.estimated_s <= 45 * budget.PLAN_SHARE
    assert [row["batch"] for row in rows] == [4] * 4  # the warm-up then measured the real (fast) runs
    assert all(row["complete"] and not row["stopped"] for row in rows)
    assert reports[0] == (0.0, "opening the files and timing one run of each; estimating the time it takes")
    assert any("timing the files interleaved at batch 4: run" in text and "left" in text for _, text in reports)
    assert reports[-1][0] == 1.0 and reports[-1][1].startswith("measured in")


def test_a_stopped_bench_keeps_the_runs_so_far_and_the_files_analysed(mlp_folder):
    stop = threading.Event()

    def stop_at(text: str):
        return lambda fraction, progress: stop.set() if text in progress else None

    rows = bench_folder(
        mlp_folder, threads=1, batch=4, runs=500, warmup=1, progress=stop_at("run 41 of"), cancel=stop.is_set
    )
    assert [row["name"] for row in rows] == ["original_fp32", "compressed_fp32", "compressed_int8", "ort_default_int8"]
    assert {row["runs"] for row in rows} == {
        9
    }  # 4 warm-up runs, then 9 whole rounds of 4 (the 41st run's round is dropped)
    assert all(row["stopped"] and not row["complete"] and row["accuracy"] is None for row in rows)
    assert {row["quality"] for row in rows} == {"accuracy"}

    stop.clear()
    rows = bench_folder(
        mlp_folder, threads=1, batch=4, runs=3, warmup=1, progress=stop_at("of compressed_fp32"), cancel=stop.is_set
    )
    # stopped while analysing compressed_fp32: the original's analysis is kept, the rest have their latency
    assert [row["complete"] for row in rows] == [True, False, False, False]
    assert rows[0]["accuracy"] is not None and rows[1]["integer_nodes"] is None and rows[1]["median_ms"] > 0
    assert layer_comparison([row for row in rows if row["complete"]]) == []

    stop.clear()  # within ORT's default quantization: its calibration asks for the next batch, and stops
    assert bench_folder(mlp_folder, threads=1, progress=stop_at("default quantization"), cancel=stop.is_set) == []
    stop.set()
    assert bench_folder(mlp_folder, threads=1, cancel=stop.is_set) == []


def test_cli_bench_prints_its_plan_and_time_against_the_budget(mlp_folder, capsys):
    assert main(["bench", str(mlp_folder), "--threads", "1", "--budget", "20"]) == 0
    captured = capsys.readouterr()
    assert "plan: batch 32 (the preferred batch)" in captured.err and "(budget 20 s)" in captured.err
    assert "s of a 20 s budget (estimated" in captured.out
    assert main(["bench", str(mlp_folder), "--budget", "0", "--runs", "2", "--batch", "4", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {(row["batch"], row["runs"], row["warmup"]) for row in rows} == {(4, 2, 5)}


def test_layer_times_sum_a_layers_nodes_without_quantize_nodes():
    from compress_core.ort.profiling import NodeTime, layer_times

    rows = [
        NodeTime("/conv1/Conv_quant", "QLinearConv", "conv1", 0.5, 0.5),
        NodeTime("/conv1/Relu", "Relu", "conv1", 0.1, 0.1),
        NodeTime("/conv1/Conv_output_QuantizeLinear", "QuantizeLinear", "conv1", 0.2, 0.2),
        NodeTime("/Flatten", "Flatten", None, 0.2, 0.2),
    ]
    assert layer_times(rows) == {"conv1": pytest.approx(0.6)}
