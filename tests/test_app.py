"""The Streamlit app driven by ``AppTest``: every page on every digits sample, uploads, plans, recipes."""

from __future__ import annotations

import threading
import time

import pytest
import yaml
from apptest_helpers import RUN_TIMEOUT, button, finish_job, first_run
from streamlit.testing.v1 import AppTest

from compress_core.models.samples import digits_names
from explorer_ui import exporting, sensitivity_view, state

PAGES = ("pages/model.py", "pages/layers.py", "pages/tune.py", "pages/sensitivity.py", "pages/export.py")


@pytest.fixture
def app(private_dirs) -> AppTest:
    """The app after its first run; its uploads, exports and sensitivity cache in this test's tmp_path."""
    return first_run()


def _plan_layers(at: AppTest) -> dict:
    return at.session_state[state.PLANS].get(at.session_state[state.CURRENT], {}).get("layers", {})


def test_opens_on_digits_cnn(app):
    assert app.session_state[state.CURRENT] == "digits_cnn"
    assert app.title[0].value == "Model: digits_cnn"
    assert [m.value for m in app.metric][:2] == ["40,506", "616,064"]
    assert "200 MB" in " ".join(caption.value for caption in app.caption)


@pytest.mark.parametrize("sample", digits_names())
def test_every_page_renders_on_every_sample(app, sample):
    app.sidebar.selectbox[0].set_value(sample).run()
    assert app.session_state[state.CURRENT] == sample
    for page in PAGES:
        app.switch_page(page).run()
        assert not app.exception, (sample, page, app.exception)
        assert not app.error, (sample, page, [error.value for error in app.error])
        assert app.title[0].value.endswith(sample)
    app.switch_page("pages/layers.py").run()
    charts = len(app.get("plotly_chart"))  # only the open tab is drawn (issue 14): open each in turn
    for tab in ("Channel ranges", "Low rank", "Pruning", "Graph"):
        app.session_state["layers_tab"] = tab
        app.run()
        assert not app.exception, (sample, tab, app.exception)
        charts += len(app.get("plotly_chart"))
    assert charts >= 4
    assert len(app.get("iframe")) == 1


def test_invalid_upload_shows_the_error_and_keeps_the_model(app):
    app.file_uploader(key=state.UPLOAD_MODEL).set_value(
        ("broken.onnx", b"not an onnx file", "application/octet-stream")
    )
    button(app, "Load model").click().run()
    assert not app.exception
    assert len(app.error) == 1
    assert "broken.onnx: not a valid ONNX model" in app.error[0].value
    assert app.session_state[state.CURRENT] == "digits_cnn"
    assert app.title[0].value == "Model: digits_cnn"


def test_state_dict_upload_needs_an_architecture_and_then_loads(app, tmp_path):
    import io

    import torch

    from compress_core.models.samples import build_architecture

    buffer = io.BytesIO()
    torch.save(build_architecture("digits_mlp").state_dict(), buffer)
    app.file_uploader(key=state.UPLOAD_MODEL).set_value(("mlp.pt", buffer.getvalue(), "application/octet-stream"))
    button(app, "Load model").click().run()
    assert "say which built-in architecture" in app.error[0].value
    assert app.session_state[state.CURRENT] == "digits_cnn"
    next(box for box in app.selectbox if box.label.startswith("Architecture")).set_value("digits_mlp")
    button(app, "Load model").click().run()
    assert not app.error
    assert app.session_state[state.CURRENT] == "mlp.pt (uploaded, digits_mlp)"
    assert app.title[0].value == "Model: mlp"
    assert "mlp.pt (uploaded, digits_mlp)" in state.sources(app.session_state)


def test_plan_and_model_survive_page_switches(app):
    app.sidebar.selectbox[0].set_value("digits_mlp").run()
    app.switch_page("pages/tune.py").run()
    button(app, "All Conv layers")  # present, though the MLP has none
    app.text_input[0].set_value(r"fc\d").run()
    button(app, "Matching layers").click().run()
    assert set(_plan_layers(app)) == {"fc1", "fc2", "fc3"}
    app.switch_page("pages/layers.py").run()
    app.switch_page("pages/tune.py").run()
    assert app.session_state[state.CURRENT] == "digits_mlp"
    assert set(_plan_layers(app)) == {"fc1", "fc2", "fc3"}


def test_changing_bits_and_applying_changes_the_size(app):
    app.switch_page("pages/tune.py").run()
    app.selectbox[0].set_value("4").run()
    button(app, "All Conv layers").click().run()
    assert _plan_layers(app) == {name: {"bits": 4} for name in ("conv1", "conv2", "conv3")}
    button(app, "Apply").click().run()
    assert not app.exception and not app.error
    first = app.session_state[state.HISTORY]["digits_cnn"][-1]["metrics"]["plan_bytes"]
    app.selectbox[0].set_value("2").run()
    button(app, "All Conv layers").click().run()
    button(app, "Apply").click().run()
    second = app.session_state[state.HISTORY]["digits_cnn"][-1]["metrics"]["plan_bytes"]
    original = 40_506 * 4
    assert second < first < original
    size = next(metric for metric in app.metric if metric.label == "Size at the plan's bit widths")
    assert size.value == f"{second / 1024:,.1f} KiB"
    assert [column for column in app.dataframe[1].value.columns][1:] == ["original", "previous (#1)", "current (#2)"]


def test_a_downloaded_recipe_restores_the_same_table(app):
    app.switch_page("pages/tune.py").run()
    app.text_input[0].set_value("conv[12]|head").run()
    app.selectbox[0].set_value("6").run()
    button(app, "Matching layers").click().run()
    recipe = app.get("download_button")[0]
    table = app.session_state[state.PLANS]["digits_cnn"]
    text = yaml.safe_dump(table, sort_keys=False)
    assert yaml.safe_load(text)["layers"] == {"conv1": {"bits": 6}, "conv2": {"bits": 6}, "head": {"bits": 6}}
    assert recipe.proto.label == "Download recipe"
    button(app, "Reset plan").click().run()
    assert _plan_layers(app) == {}
    app.file_uploader(key="recipe_upload").set_value(("recipe.yaml", text.encode(), "application/yaml"))
    app.run()
    button(app, "Load recipe").click().run()
    assert not app.error
    assert app.session_state[state.PLANS]["digits_cnn"] == table


def test_a_recipe_naming_a_missing_layer_is_an_error_and_keeps_the_plan(app):
    app.switch_page("pages/tune.py").run()
    bad = b"version: 1\nlayers:\n  conv9: {bits: 4}\n"
    app.file_uploader(key="recipe_upload").set_value(("bad.yaml", bad, "application/yaml"))
    app.run()
    button(app, "Load recipe").click().run()
    assert "layer 'conv9' is not a compressible layer" in app.error[0].value
    assert _plan_layers(app) == {}


def _finish_sweep(app: AppTest) -> None:
    """Wait for the background sweep (if it has not already ended and been stored) and redraw."""
    if state.SENSITIVITY_JOB in app.session_state:
        finish_job(app.session_state[state.SENSITIVITY_JOB]["job"])
    app.run()


def test_sensitivity_runs_in_the_background_and_shows_the_fragile_layers(app):
    # private_dirs (through ``app``) gives a cold sensitivity cache: the sweep really runs
    app.switch_page("pages/sensitivity.py").run()
    app.multiselect[0].set_value(["bits"]).run()
    assert [box.label for box in app.multiselect] == ["Kinds", "Bit widths"]  # no prune or rank pickers
    app.multiselect[1].set_value([8, 2]).run()
    assert any("10 cells, estimated" in caption.value for caption in app.caption)
    button(app, "Run sensitivity").click().run()
    assert state.SENSITIVITY_JOB in app.session_state
    _finish_sweep(app)
    assert not app.exception and not app.error
    result = app.session_state[state.SENSITIVITY]["digits_cnn"]
    assert {(row["kind"], row["level"]) for row in result["rows"]} == {("bits", 8), ("bits", 2)}
    assert len(result["rows"]) == 2 * 5
    assert len(app.get("plotly_chart")) == 2
    fragile = app.dataframe[0].value
    assert len(fragile) == 5 and list(fragile["level"]) == [2] * 5


def test_export_builds_every_file_and_times_it(app):
    app.switch_page("pages/export.py").run()
    assert any("sets no bit width" in warning.value for warning in app.warning)  # the empty plan
    app.switch_page("pages/tune.py").run()
    button(app, "All Conv layers").click().run()
    app.switch_page("pages/export.py").run()
    assert not app.warning
    button(app, "Build artifacts").click().run()
    assert not app.exception and not app.error
    names = {button.key.removeprefix("download-") for button in app.get("download_button")}
    assert {"model_fp32.onnx", "model_int8.onnx", "recipe.yaml", "report.md", "metrics.json"} <= names
    title, notes = exporting.this_cpu()
    cpu = next(item for item in app.expander if item.label == title)
    assert title.startswith("This CPU: ") and all(note in cpu.markdown[0].value for note in notes)
    app.number_input[2].set_value(5).run()
    button(app, "Run latency benchmark").click().run()
    assert not app.exception and not app.error
    table = app.dataframe[0].value
    assert list(table["candidate"]) == ["original_fp32", "compressed_fp32", "compressed_int8", "ort_default_int8"]
    assert (table["median ms"] > 0).all()
    assert len(app.get("plotly_chart")) == 2  # latency per artifact, speed-up per layer
    per_layer = app.dataframe[2].value
    int8_layers = app.session_state[state.EXPORTS]["digits_cnn"]["metrics"]["int8"]["layers"]
    integer = {row["layer"] for row in int8_layers if row["storage"] != "float"}
    assert integer <= {"conv1", "conv2", "conv3"}  # fc1 and head stay float in this plan; conv1 (one input
    assert {"conv2", "conv3"} <= integer  # channel) too where this CPU's int8 path keeps narrow convs float
    assert set(per_layer["layer"]) == integer
    assert any("Nodes of no layer" in caption.value for caption in app.caption)


def test_table_edits_become_the_plan_and_a_bad_value_names_the_layer():
    from compress_core import CompressError, layer_inventory, load_model
    from compress_core.plan import Plan
    from explorer_ui import tuning

    layers = layer_inventory(load_model("digits_cnn"))
    rows = tuning.plan_rows(Plan(), layers)
    edited = tuning.edit_rows(
        rows,
        {
            1: {"bits": "4", "scheme": "asymmetric"},
            2: {"prune_ratio": 0.5},
            3: {"bits": "8", "smooth": 0.8},
            4: {"rank": 0.5},
        },
    )
    assert tuning.rows_plan(edited).to_dict()["layers"] == {
        "conv2": {"bits": 4, "scheme": "asymmetric"},
        "conv3": {"prune": {"ratio": 0.5, "kind": "unstructured"}},
        "fc1": {"bits": 8, "smooth": 0.8},
        "head": {"rank": 0.5},
    }
    assert tuning.plan_rows(tuning.rows_plan(edited), layers) == edited
    with pytest.raises(CompressError, match="layer 'conv1': prune ratio 1.5 is not allowed"):
        tuning.rows_plan(tuning.edit_rows(rows, {0: {"prune_ratio": 1.5}}))
    with pytest.raises(CompressError, match="layer 'conv1': smooth 1.5 is not allowed"):
        tuning.rows_plan(tuning.edit_rows(rows, {0: {"bits": "8", "smooth": 1.5}}))
    # a float layer has nothing to smooth: the cell is dropped, not an error
    assert tuning.rows_plan(tuning.edit_rows(rows, {0: {"smooth": 0.5}})).layers == {}


def test_netron_server_sets_consent_and_csp_and_serves_only_its_files():
    import urllib.error
    import urllib.request

    from explorer_ui.netron_server import NetronServer, new_token

    server = NetronServer()
    token = new_token()
    try:
        viewer = server.publish("my model.onnx", b"model bytes", token)
        assert viewer.startswith("/?url=model%2F")
        url = server.viewer_url(viewer, "localhost:8501")
        assert url.startswith(f"http://localhost:{server.port}/?url=")
        assert server.viewer_url(viewer, None).startswith(f"http://127.0.0.1:{server.port}/")
        with urllib.request.urlopen(url) as response:
            assert "connect-src 'self'" in response.headers["Content-Security-Policy"]
            assert response.headers["Set-Cookie"].startswith("consent=")
            assert b'<script type="text/javascript" src="index.js">' in response.read()
        model_path = urllib.parse.unquote(viewer.split("=", 1)[1])
        with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/{model_path}") as response:
            assert response.read() == b"model bytes"
        other_session = model_path.replace(token, new_token())
        for path in ("/../../etc/passwd", "/__init__.py", "/model/000000000000/other.onnx", f"/{other_session}"):
            with pytest.raises(urllib.error.HTTPError, match="404"):
                urllib.request.urlopen(f"http://127.0.0.1:{server.port}{path}")
    finally:
        server.stop()


def test_stop_ends_a_sweep_early_and_keeps_the_rows_so_far(app, monkeypatch):
    # The sweep is held after its first cell until Stop sets the job's cancel event, so the click
    # always lands while the sweep runs, however fast or slow the machine is.
    measured = threading.Event()
    real = sensitivity_view.run_sensitivity

    def held_after_first_cell(handle, sweep, *, progress, cancel, **options):
        def report(step):
            progress(step)
            if step.cell == 1:
                measured.set()
                waited = time.monotonic()
                while not cancel() and time.monotonic() - waited < RUN_TIMEOUT:
                    time.sleep(0.01)

        return real(handle, sweep, progress=report, cancel=cancel, **options)

    monkeypatch.setattr(sensitivity_view, "run_sensitivity", held_after_first_cell)
    app.switch_page("pages/sensitivity.py").run()
    button(app, "Run sensitivity").click().run()
    assert measured.wait(RUN_TIMEOUT), "the sweep did not measure its first cell"
    job = app.session_state[state.SENSITIVITY_JOB]["job"]
    assert not job.done and not job.cancel.is_set()
    button(app, "Stop").click().run()
    assert job.cancel.is_set()
    _finish_sweep(app)
    assert not app.exception and not app.error
    result = app.session_state[state.SENSITIVITY]["digits_cnn"]
    assert result["cancelled"]
    assert [(row["layer"], row["kind"], row["level"]) for row in result["rows"]] == [("conv1", "bits", 8)]
    assert any("stopped early" in caption.value for caption in app.caption)


def test_a_model_with_two_inputs_loads_from_the_inputs_field_and_can_be_measured_another_way(app, tmp_path):
    import torch
    from torch import nn

    class _Scaled(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(6, 4)

        def forward(self, x, scale):
            return self.fc(x) * scale

    path = tmp_path / "scaled.onnx"
    torch.onnx.export(
        _Scaled().eval(),
        (torch.zeros(2, 6), torch.tensor(2.0)),
        str(path),
        dynamo=False,
        input_names=["x", "scale"],
        dynamic_axes={"x": {0: "batch"}},
    )
    app.file_uploader(key=state.UPLOAD_MODEL).set_value(("scaled.onnx", path.read_bytes(), "application/octet-stream"))
    button(app, "Load model").click().run()
    assert "input 'scale' is a scalar float32 whose value matters" in app.error[0].value
    assert app.session_state[state.CURRENT] == "digits_cnn"
    next(box for box in app.text_input if box.label.startswith("Input shapes")).set_value("scale=3")
    button(app, "Load model").click().run()
    assert not app.error, [error.value for error in app.error]
    assert app.session_state[state.CURRENT].startswith("scaled.onnx")
    captions = " ".join(caption.value for caption in app.caption)
    assert "x float32[N, 6]; scale float32[] (unbatched)" in captions
    assert "classification [N, C]" in " ".join(block.value for block in app.markdown)
    for page in (*PAGES[1:], "pages/learn.py"):
        app.switch_page(page).run()
        assert not app.exception, (page, app.exception)
        assert not app.error, (page, [error.value for error in app.error])
    app.switch_page(PAGES[0]).run()
    next(box for box in app.selectbox if box.label == "Task").set_value("embedding")
    button(app, "Measure this way").click().run()
    assert not app.error, [error.value for error in app.error]
    assert app.session_state[state.CURRENT].endswith("[task embedding]")
    assert "embedding" in " ".join(block.value for block in app.markdown if block.value.startswith("Task:"))


def test_a_sweep_stops_at_its_time_budget_and_keeps_what_it_measured():
    from compress_core import load_model
    from compress_core.analysis.sweep import Sweep
    from compress_core.ort.budget import format_seconds
    from explorer_ui.budget import Deadline, time_left

    clock = iter([0.0, 1.0, 3.0]).__next__
    deadline = Deadline(2.0, threading.Event(), clock)
    assert (deadline.stop(), deadline.stop()) == (False, True)
    assert time_left(0.25, 10.0) == 30.0 and time_left(0.0, 1.0) is None
    assert [format_seconds(s) for s in (0.2, 42, 200, 3900)] == ["< 1 s", "42 s", "3 min 20 s", "1 h 05 min"]
    job = sensitivity_view.start(load_model("digits_mlp"), Sweep(kinds=("bits",), bits=(8, 4)), budget_s=0.0)
    job.wait(RUN_TIMEOUT)
    assert job.error is None
    assert job.result["cancelled"] and job.result["budget_spent"] and job.result["rows"] == []
