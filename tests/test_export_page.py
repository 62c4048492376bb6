"""The Export & latency page driven by ``AppTest``: honest labels of the int8 file (bit widths, the
integer-kernel warning before the build, after it and after the benchmark, the 8-bit path) and the
two long steps with an estimate, progress and a Stop that keeps what it should."""

from __future__ import annotations

import json
import re
import threading
import time
from pathlib import Path

import pytest
from apptest_helpers import RUN_TIMEOUT, button, finish_job, first_run
from streamlit.testing.v1 import AppTest

from compress_core.ort import artifacts, latency
from compress_core.plan import Plan
from explorer_ui import exporting, state

ALL_4_BITS = "version: 1\ndefault: {bits: 4}\n"
CNN_LAYERS = ["conv1", "conv2", "conv3", "fc1", "head"]


@pytest.fixture
def app(private_dirs) -> AppTest:
    """The app after its first run; its exports in this test's tmp_path."""
    return first_run()


def _export_page(app: AppTest, recipe: str | None = None) -> AppTest:
    if recipe is not None:
        app.session_state[state.PLANS]["digits_cnn"] = Plan.from_text(recipe).to_dict()
    return app.switch_page("pages/export.py").run()


def _warnings(app: AppTest) -> list[str]:
    return [warning.value for warning in app.warning]


def _finish(app: AppTest, key: str) -> None:
    """Wait for the page's job under ``key`` (when it has not been stored yet) and redraw."""
    if key in app.session_state:
        finish_job(app.session_state[key]["job"])
    app.run()


def _wait_for(condition, what: str, timeout: float = RUN_TIMEOUT) -> None:
    end = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < end, f"{what} did not happen within {timeout} s"
        time.sleep(0.02)


def _timed_run(text: str) -> int:
    """The run number in the benchmark's progress text (``... run 12 of 2020 ...``), 0 before the timing."""
    found = re.search(r"run (\d+) of", text)
    return int(found.group(1)) if found else 0


def test_an_all_4_bit_plan_shows_the_integer_kernel_warning_before_and_after(app):
    _export_page(app, ALL_4_BITS)
    assert not app.exception and not app.error
    table = app.table[0].value
    assert list(table["layer"]) == CNN_LAYERS
    assert set(table["planned bits"]) == {"4"} and set(table["int8 file stores it as"]) == {"QInt4"}
    assert set(table["ONNX Runtime runs it in"]) == {exporting.FLOAT_KERNEL}
    before = [text for text in _warnings(app) if "would not run in integer kernels" in text]
    assert len(before) == 1 and "5 of the 5 layers" in before[0] and "no int4 Conv" in before[0]
    assert "Set these 5 layers to 8 bits" in [item.label for item in app.button]
    assert any(caption.value.startswith("Building takes about") for caption in app.caption)

    button(app, "Build artifacts").click().run()
    assert not app.exception and not app.error
    assert exporting.EXPORT_JOB not in app.session_state
    built = app.session_state[state.EXPORTS]["digits_cnn"]
    assert built["census"]["integer_nodes"] == 0 and sorted(built["census"]["float_layers"]) == sorted(CNN_LAYERS)
    after_build = [text for text in _warnings(app) if "compute nodes in integer kernels" in text]
    assert len(after_build) == 1 and "runs 0 of 5 compute nodes" in after_build[0]
    assert set(app.table[0].value["ONNX Runtime runs it in"]) == {f"{exporting.FLOAT_KERNEL} (measured)"}
    candidates = next(item.value for item in app.markdown if "**ort_default_int8**" in item.value)
    assert all(f"**{name}**" in candidates for name in exporting.CANDIDATE_NOTES if name != "compressed_nbits")
    assert "**compressed_nbits**" not in candidates  # no weight-only file was built
    assert "the baseline to beat" in candidates

    app.number_input[2].set_value(5).run()  # timed runs; batch and budget as the page sets them
    assert any(caption.value.startswith("Estimate: batch") for caption in app.caption)
    button(app, "Run latency benchmark").click().run()
    assert not app.exception and not app.error
    result = app.session_state[state.LATENCY]["digits_cnn"]
    assert [row["runs"] for row in result["rows"]] == [5] * 4 and not result["stopped"]
    measured = [text for text in _warnings(app) if "Measured: compressed_int8 is" in text]
    assert len(measured) == 1 and "5 layers planned with bits run in float" in measured[0]

    next(item for item in app.button if item.key == "eight_bits_bench").click().run()
    assert not app.exception
    plan = Plan.from_dict(app.session_state[state.PLANS]["digits_cnn"])
    assert {name: plan.config_for(name).bits for name in CNN_LAYERS} == dict.fromkeys(CNN_LAYERS, 8)
    assert not [text for text in _warnings(app) if "integer kernels" in text]  # the new plan: 8 bits
    assert any("built from an earlier plan" in info.value for info in app.info)
    assert set(app.table[0].value["ONNX Runtime runs it in"]) == {exporting.INTEGER_KERNEL}


def test_an_8_bit_plan_has_no_warning_and_runs_in_integer_kernels(app):
    _export_page(app, "version: 1\ndefault: {bits: 8}\nlayers:\n  head: null\n")
    assert not _warnings(app)
    button(app, "Build artifacts").click().run()
    assert not app.exception and not _warnings(app)
    runs_in = list(app.table[0].value["ONNX Runtime runs it in"])
    assert runs_in == [f"{exporting.INTEGER_KERNEL} (measured)"] * 4 + [exporting.FLOAT_BY_PLAN]


def test_a_plan_that_smooths_starts_on_dynamic_and_static_says_why_not(app):
    _export_page(app, "version: 1\ndefault: {bits: 8}\n")
    assert app.toggle[0].label == "Dynamic (weights only)" and not app.toggle[0].value
    _export_page(app, "version: 1\ndefault: {bits: 8}\nlayers:\n  fc1: {bits: 8, smooth: 0.8}\n")
    assert app.toggle[0].value  # smooth acts on dynamic exports only
    app.toggle[0].set_value(False).run()
    button(app, "Build artifacts").click().run()
    assert [error.value for error in app.error if "smooth is set on fc1: it acts on dynamic int8" in error.value]
    assert not app.exception and not app.session_state[state.EXPORTS]  # nothing built
    assert app.session_state[state.PLANS]["digits_cnn"]["layers"]["fc1"] == {"bits": 8, "smooth": 0.8}  # plan kept


def test_a_stopped_benchmark_keeps_the_runs_timed_so_far(app, monkeypatch):
    _export_page(app, "version: 1\ndefault: {bits: 8}\n")
    button(app, "Build artifacts").click().run()
    monkeypatch.setattr(exporting, "INLINE_WAIT_S", 0.0)  # the page follows the job with its fragment
    real = latency.make_session

    def slow(*args, **kwargs):  # every timed run takes 10 ms longer: the timing lasts seconds
        session = real(*args, **kwargs)

        class Slow:
            def run(self, *a, **k):
                time.sleep(0.01)
                return session.run(*a, **k)

            def __getattr__(self, name):
                return getattr(session, name)

        return Slow()

    monkeypatch.setattr(latency, "make_session", slow)
    app.number_input[2].set_value(500).run()
    button(app, "Run latency benchmark").click().run()
    job = app.session_state[exporting.BENCH_JOB]["job"]
    assert "Stop" in [item.label for item in app.button] and len(app.get("progress")) == 1
    _wait_for(lambda: _timed_run(job.text) >= 80, "the timing's 80th run")
    assert "left" in job.text  # progress tells the time left
    next(item for item in app.button if item.key == f"{exporting.BENCH_JOB}_stop").click().run()
    assert job.cancel.is_set()
    _finish(app, exporting.BENCH_JOB)
    assert not app.exception and not app.error
    result = app.session_state[state.LATENCY]["digits_cnn"]
    assert result["stopped"] and len(result["rows"]) == 4
    runs = {row["runs"] for row in result["rows"]}
    assert len(runs) == 1 and 10 <= runs.pop() < 500  # whole rounds only
    assert not any(row["complete"] for row in result["rows"])
    assert list(app.dataframe[0].value["candidate"]) == [row["name"] for row in result["rows"]]
    assert any("Stopped early: the runs timed so far are kept" in caption.value for caption in app.caption)
    assert "Run latency benchmark" in [item.label for item in app.button]


def test_a_stopped_build_writes_no_file(app, monkeypatch):
    _export_page(app, "version: 1\ndefault: {bits: 8}\n")
    monkeypatch.setattr(exporting, "INLINE_WAIT_S", 0.0)
    release = threading.Event()
    real = artifacts.quantize_int8

    def held(*args, **kwargs):  # the int8 step waits until the test has pressed Stop
        release.wait(RUN_TIMEOUT)
        return real(*args, **kwargs)

    monkeypatch.setattr(artifacts, "quantize_int8", held)
    button(app, "Build artifacts").click().run()
    running = app.session_state[exporting.EXPORT_JOB]
    folder = Path(exporting.export_folder(state.current_source(app.session_state).key, state.plan(app.session_state)))
    _wait_for(lambda: "quantizing" in running["job"].text, "the int8 step")
    next(item for item in app.button if item.key == f"{exporting.EXPORT_JOB}_stop").click().run()
    release.set()
    _finish(app, exporting.EXPORT_JOB)
    assert not app.exception and not app.error
    assert any("Build stopped after" in info.value and "no file was written" in info.value for info in app.info)
    assert "digits_cnn" not in app.session_state[state.EXPORTS] and not app.get("download_button")
    assert not folder.exists() and list(folder.parent.iterdir()) == []  # no staging folder left either


def test_the_int8_path_can_be_overridden_on_the_page_and_the_build_follows(app):
    from compress_core.ort.cpu import cpu_features
    from compress_core.ort.int8_path import choose_path

    _export_page(app, "version: 1\ndefault: {bits: 8}\n")
    pad = next(box for box in app.selectbox if box.label == "Pad Conv inputs")
    assert pad.value is None and not pad.disabled  # the rule's choice until the user sets one
    pad.set_value(False).run()
    assert any("set by the user: pad_conv_channels" in caption.value for caption in app.caption)
    button(app, "Build artifacts").click().run()
    assert not app.exception
    built = next(iter(app.session_state[state.EXPORTS].values()))
    int8 = json.loads((Path(built["folder"]) / "metrics.json").read_text())["int8"]
    assert int8["path"]["overridden"] == ["pad_conv_channels"] and int8["padded_convs"] == []
    next(box for box in app.selectbox if box.label == "Pad Conv inputs").set_value(None).run()
    button(app, "Build artifacts").click().run()
    built = next(iter(app.session_state[state.EXPORTS].values()))
    int8 = json.loads((Path(built["folder"]) / "metrics.json").read_text())["int8"]
    padded = [conv["layer"] for conv in int8["padded_convs"]]
    assert padded == (["conv1"] if choose_path(cpu_features(), dynamic=False).pad_conv_channels else [])
    app.toggle[0].set_value(True).run()  # dynamic: the static-only switches are off
    assert next(box for box in app.selectbox if box.label == "Pad Conv inputs").disabled


def test_the_weight_only_file_is_built_with_the_chosen_block_size_and_compute(app):
    _export_page(app, "version: 1\ndefault: {bits: 4}\n")
    compute = next(box for box in app.selectbox if box.label == "Compute")
    assert compute.disabled and compute.value == "int8"  # until the weight-only file is asked for
    next(box for box in app.checkbox if box.label.startswith("Also build a weight-only model")).check().run()
    next(box for box in app.selectbox if box.label == "Block size").set_value(16).run()
    next(box for box in app.selectbox if box.label == "Compute").set_value("float").run()
    button(app, "Build artifacts").click().run()
    assert not app.exception and not app.error
    built = app.session_state[state.EXPORTS]["digits_cnn"]
    weight_only = built["metrics"]["weight_only"]
    assert (weight_only["block_size"], weight_only["compute"]) == (16, "float")
    stored = {row["layer"]: row["storage"] for row in weight_only["layers"]}
    assert stored["fc1"] == stored["head"] == "4-bit MatMulNBits (block 16, float compute)"
    assert stored["conv1"] == "float"  # MatMulNBits stores MatMul / Gemm weights only
    assert Path(built["files"][artifacts.NBITS_ONNX]["path"]).is_file()
