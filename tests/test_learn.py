"""The Learn page and the Tune page's Recover panel, driven by ``AppTest``."""

from __future__ import annotations

import json
import math

import pytest
import torch
from apptest_helpers import button, finish_job, first_run
from streamlit.testing.v1 import AppTest

from explorer_ui import recover_panel, state

LEARN = "pages/learn.py"
TUNE = "pages/tune.py"
# Each tab's charts, in page order (a layer whose shape fits every N:M pattern, no sensitivity results).
TAB_CHARTS = {"Quantization": 4, "Pruning": 3, "Low rank": 2, "Calibration": 1, "Distillation": 1}
GRID, ERROR, SQNR, SCHEMES = range(4)
UNSTRUCTURED, NM, STRUCTURED = range(3)
SINGULAR, TRADEOFF = range(2)
CALIBRATION = DISTILLATION = 0


@pytest.fixture
def app(private_dirs) -> AppTest:
    """The app after its first run; its uploads, exports and sensitivity cache in this test's tmp_path."""
    return first_run()


def _specs(at: AppTest) -> list[str]:
    """The plotly figure of every chart on the page, as its JSON spec."""
    return [chart.proto.spec for chart in at.get("plotly_chart")]


@pytest.mark.parametrize("sample", ["digits_cnn", "digits_lstm"])
def test_learn_page_renders_every_section(app: AppTest, sample: str) -> None:
    app.sidebar.selectbox[0].set_value(sample).run()
    app.switch_page(LEARN).run()
    assert not app.exception, app.exception
    assert not app.error, [error.value for error in app.error]
    assert app.title[0].value == f"Learn with {sample}"
    assert len(app.get("tab")) == 5
    assert len(app.get("plotly_chart")) == TAB_CHARTS["Quantization"]  # only the open tab is drawn
    charts = {}
    for tab in TAB_CHARTS:
        _open_tab(app, tab)
        charts[tab] = len(app.get("plotly_chart"))
        if tab == "Pruning":
            assert any("run the Sensitivity page" in info.value for info in app.info)
    assert "2 bits, made for this demo" in " ".join(caption.value for caption in app.caption)
    assert charts["Quantization"] == 4 and charts["Low rank"] == 2 and charts["Distillation"] == 1
    assert charts["Pruning"] >= 2  # N:M needs a fitting input size


def _open_tab(at: AppTest, tab: str) -> None:
    """Open one of the Learn page's tabs (each draws only when open) and run the page."""
    at.session_state["learn_tab"] = tab
    at.run()
    assert not at.exception, at.exception
    assert not at.error, [error.value for error in at.error]


CONTROLS = (  # (tab, widget key, new value, the charts of that tab it must change and no other)
    ("Quantization", "learn_bits", 3, {GRID, ERROR, SQNR, SCHEMES}),
    ("Quantization", "learn_scheme", "asymmetric", {GRID, ERROR, SQNR}),
    ("Quantization", "learn_granularity", "channel", {GRID, ERROR, SQNR, SCHEMES}),
    ("Quantization", "learn_channel", 7, {GRID, ERROR}),
    ("Pruning", "learn_prune_ratio", 0.8, {UNSTRUCTURED, STRUCTURED}),
    ("Pruning", "learn_nm", "1:4", {NM}),
    ("Low rank", "learn_rank", 3, {SINGULAR, TRADEOFF}),
    ("Calibration", "learn_calibration_bits", 4, {CALIBRATION}),
    ("Calibration", "learn_percentiles", [99.0], {CALIBRATION}),
    ("Distillation", "learn_temperature", 10.0, {DISTILLATION}),
    ("Distillation", "learn_sample", 5, {DISTILLATION}),
)


def test_each_control_changes_its_own_plots(app: AppTest) -> None:
    app.switch_page(LEARN).run()
    app.selectbox(key="learn_layer_widget").set_value("conv2").run()
    for tab, key, value, changed in CONTROLS:
        _open_tab(app, tab)
        before = _specs(app)
        assert len(before) == TAB_CHARTS[tab], tab
        _widget(app, key).set_value(value).run()
        assert not app.exception and not app.error, key
        after = _specs(app)
        assert {index for index, (old, new) in enumerate(zip(before, after)) if old != new} == changed, key


def test_settings_outlive_a_closed_tab(app: AppTest) -> None:
    app.switch_page(LEARN).run()
    _widget(app, "learn_bits").set_value(3).run()
    _open_tab(app, "Low rank")
    assert not any(widget.key == "learn_bits" for widget in app.get("slider"))  # not drawn while closed
    _open_tab(app, "Quantization")
    assert _widget(app, "learn_bits").value == 3


def _widget(at: AppTest, key: str):
    """The Learn page's widget with this key."""
    for kind in ("slider", "radio", "selectbox", "number_input", "multiselect"):
        found = [widget for widget in at.get(kind) if widget.key == key]
        if found:
            return found[0]
    raise KeyError(key)


def test_learn_page_explains_what_an_onnx_model_cannot_show(app: AppTest) -> None:
    from compress_core import load_model
    from compress_core.ort.export import to_onnx

    onnx_bytes = to_onnx(load_model("digits_cnn")).SerializeToString()
    app.file_uploader(key=state.UPLOAD_MODEL).set_value(("cnn.onnx", onnx_bytes, "application/octet-stream"))
    button(app, "Load model").click().run()
    assert app.session_state[state.CURRENT] != "digits_cnn"
    app.switch_page(LEARN).run()
    assert not app.exception and not app.error
    _open_tab(app, "Calibration")
    assert any(
        "needs the layer's input activations" in info.value and "forward hooks" in info.value for info in app.info
    )
    assert len(app.get("plotly_chart")) == 0  # the one section that cannot be shown


def test_recover_panel_raises_the_accuracy_of_an_aggressive_plan(app: AppTest) -> None:
    app.switch_page(TUNE).run()
    app.selectbox[0].set_value("2").run()  # the bulk-edit bit width
    button(app, "All Conv layers").click().run()
    button(app, "Apply").click().run()
    before = state.history(app.session_state)[-1]["metrics"]["accuracy"]
    assert before < 0.9  # every Conv at 2 bits hurts
    app.number_input(key="recover_epochs").set_value(1).run()
    button(app, "Recover").click().run()
    if recover_panel.RECOVER_JOB in app.session_state:  # else it has already ended and been stored
        finish_job(app.session_state[recover_panel.RECOVER_JOB]["job"])
    app.run()
    assert not app.exception and not app.error
    recovered = app.session_state[recover_panel.RECOVERED]["digits_cnn"]
    assert len(recovered["losses"]) == 1
    assert recovered["after"]["accuracy"] > before + 0.05
    assert recovered["after"]["plan_bytes"] == state.history(app.session_state)[-1]["metrics"]["plan_bytes"]
    metric = next(metric for metric in app.metric if metric.label == "Accuracy after recovery")
    assert metric.delta.startswith("+")
    table = app.dataframe[-1].value
    assert list(table.columns) == ["metric", "original", "before (#1)", "after recovery"]

    app.switch_page(LEARN).run()  # the fine-tuned model is now the distillation demo's student
    _open_tab(app, "Distillation")
    assert "(plan #1, fine-tuned for 1 epoch)" in " ".join(caption.value for caption in app.caption)

    app.switch_page("pages/export.py").run()  # and the model that Export writes
    assert any("fine-tuned model is what gets exported" in info.value for info in app.info)
    app.checkbox[0].set_value(False).run()  # fp32 files only: quicker
    button(app, "Build artifacts").click().run()
    assert not app.exception and not app.error
    exported = app.session_state[state.EXPORTS]["digits_cnn"]["metrics"]
    assert exported["pytorch"]["compressed"]["accuracy"] == pytest.approx(recovered["after"]["accuracy"])
    assert exported["artifacts"]["model_fp32.onnx"]["accuracy"] == pytest.approx(
        recovered["after"]["accuracy"], abs=0.005
    )


class _Reader(torch.nn.Module):
    """[N, 16] -> [N, 6, 300] logits: a small sequence model (6 steps over 300 classes)."""

    def __init__(self) -> None:
        super().__init__()
        self.hidden = torch.nn.Linear(16, 64)
        self.head = torch.nn.Linear(64, STEPS * CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.hidden(x))).reshape(-1, STEPS, CLASSES) * 4


STEPS, CLASSES = 6, 300


def _nats(at: AppTest, label: str) -> float:
    """The value of the metric ``label``, shown as ``"1.23 nats"``."""
    value = next(metric.value for metric in at.metric if metric.label == label)
    number, unit = value.split()
    assert unit == "nats", value
    return float(number)


def test_learn_page_on_a_sequence_output_shows_one_steps_entropy(app: AppTest, tmp_path) -> None:
    torch.manual_seed(0)
    path = tmp_path / "reader.onnx"
    torch.onnx.export(
        _Reader().eval(),
        (torch.zeros(2, 16),),
        str(path),
        dynamo=False,
        dynamic_axes={"x": {0: "batch"}},
        input_names=["x"],
    )
    app.file_uploader(key=state.UPLOAD_MODEL).set_value(("reader.onnx", path.read_bytes(), "application/octet-stream"))
    button(app, "Load model").click().run()
    assert not app.error, [error.value for error in app.error]
    assert app.session_state[state.CURRENT].startswith("reader.onnx")
    app.switch_page(LEARN).run()
    assert not app.exception, app.exception
    assert not app.error, [error.value for error in app.error]
    assert len(app.get("tab")) == 5
    _open_tab(app, "Distillation")
    most = _nats(app, "Most possible, ln C")
    assert most == pytest.approx(math.log(CLASSES), abs=0.005)
    for step in (0, 3, STEPS - 1):
        _widget(app, "learn_step").set_value(step).run()
        assert not app.exception and not app.error, step
        assert 0 < _nats(app, "Teacher entropy") <= most and 0 < _nats(app, "Student entropy") <= most
    chart = json.loads(_specs(app)[-1])
    classes = chart["data"][0]["x"]
    assert len(classes) == 20 and all(len(name) <= 3 for name in classes)  # the top 20 of 300, as short ids
    assert "top 20 of 300" in chart["layout"]["xaxis"]["title"]["text"]
    assert "step 5 of 6" in chart["layout"]["title"]["text"]
    captions = " ".join(caption.value for caption in app.caption)
    assert "The other 280 classes hold" in captions and "most probable class at each step" in captions


def test_log_axis_ticks_are_few_and_plain() -> None:
    from explorer_ui.learn_figures import log_ticks

    assert log_ticks([0.06, 0.4, 3.0]) == {
        "tickvals": [0.05, 0.1, 0.2, 0.5, 1.0, 2.0],
        "ticktext": ["0.05", "0.1", "0.2", "0.5", "1", "2"],
    }
    assert log_ticks([2e-4, 3.0])["ticktext"] == ["0.001", "0.01", "0.1", "1"]  # decades only, within the data
    assert log_ticks([0.0, 0.0]) == {}  # an all-zero spectrum: plotly's own ticks
