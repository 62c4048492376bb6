"""Pages at the size of real models (issue 14): lazy Layers views, the All-layers bulk edit, a reason
next to every disabled button, the Model page without a model run for unlabelled data, one number
format, the netron viewer without telemetry and opened at the chosen layer, the launcher's file watcher.
"""

from __future__ import annotations

import urllib.request
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import streamlit as st
from apptest_helpers import button, first_run
from streamlit.testing.v1 import AppTest

from compress_core import load_model
from compress_core.launch import DEV_OPTIONS, streamlit_argv
from compress_core.models.inventory import layer_inventory
from compress_core.plan import Plan
from explorer_ui import cache, layer_data, state, tuning
from explorer_ui.netron_server import FOCUS_PATH, NetronServer, new_token

VIEWS = ("quantization_view", "channel_view", "spectrum_view", "mask_view")


@pytest.fixture
def app(private_dirs) -> AppTest:
    st.cache_data.clear()
    return first_run()


@pytest.fixture
def view_calls(monkeypatch) -> Counter:
    """How often each of the Layers page's views is computed (``layer_data``'s functions, counted)."""
    calls: Counter = Counter()
    for name in VIEWS:
        real = getattr(layer_data, name)

        def counted(*args, _real=real, _name=name, **kwargs):
            calls[_name] += 1
            return _real(*args, **kwargs)

        monkeypatch.setattr(layer_data, name, counted)
    return calls


def _open_tab(at: AppTest, tab: str) -> None:
    at.session_state["layers_tab"] = tab
    at.run()
    assert not at.exception, at.exception


def _pick_layer(at: AppTest, name: str) -> None:
    next(box for box in at.selectbox if box.label == "Layer").set_value(name).run()
    assert not at.exception, at.exception


def _captions(at: AppTest) -> str:
    return " ".join(caption.value for caption in at.caption)


def test_picking_a_layer_computes_only_the_open_view_once(app, view_calls):
    app.switch_page("pages/layers.py").run()
    assert view_calls == Counter(quantization_view=1)
    _pick_layer(app, "conv2")
    assert view_calls == Counter(quantization_view=2)
    _open_tab(app, "Low rank")
    assert view_calls == Counter(quantization_view=2, spectrum_view=1)
    _pick_layer(app, "conv3")
    assert view_calls == Counter(quantization_view=2, spectrum_view=2)
    _pick_layer(app, "conv2")  # cached: drawn again, not computed again
    _open_tab(app, "Pruning")
    _open_tab(app, "Channel ranges")
    assert view_calls == Counter(quantization_view=2, spectrum_view=2, mask_view=1, channel_view=1)
    assert len(app.get("plotly_chart")) == 1


def test_a_views_settings_survive_switching_tabs_and_layers(app):
    app.switch_page("pages/layers.py").run()
    app.selectbox(key="layers_bits").set_value(8).run()
    _open_tab(app, "Pruning")
    app.selectbox(key="layers_prune_kind").set_value("2:4").run()
    _open_tab(app, "Quantization")
    _pick_layer(app, "fc1")
    assert app.selectbox(key="layers_bits").value == 8
    assert not app.warning  # no "value set via Session State and a default" warning
    _open_tab(app, "Pruning")
    assert app.selectbox(key="layers_prune_kind").value == "2:4"


def test_disabled_layer_controls_say_why(app):
    app.switch_page("pages/layers.py").run()
    app.selectbox(key="layers_granularity").set_value("tensor").run()
    assert app.number_input[0].proto.disabled
    assert "One grid for the whole tensor" in _captions(app)
    _open_tab(app, "Pruning")
    app.selectbox(key="layers_prune_kind").set_value("1:4").run()
    assert app.slider[0].proto.disabled
    assert "fixes the ratio at 75% of weights pruned" in _captions(app)


def test_all_layers_sets_the_bits_of_every_layer(app):
    app.switch_page("pages/tune.py").run()
    app.selectbox[0].set_value("4").run()
    button(app, "All layers").click().run()
    names = [layer.name for layer in layer_inventory(load_model("digits_cnn"))]
    plan = app.session_state[state.PLANS]["digits_cnn"]["layers"]
    assert plan == {name: {"bits": 4} for name in names} and len(names) == 5
    assert not button(app, "Apply").disabled


def test_every_disabled_tune_button_has_a_reason_beside_it(app):
    app.sidebar.selectbox[0].set_value("digits_mlp").run()
    app.switch_page("pages/tune.py").run()
    text = _captions(app)
    for label, reason in (
        ("Apply", "Apply is off: the plan changes no layer yet"),
        ("Load recipe", "Load recipe is off: choose a recipe file above first"),
        ("Matching layers", "Matching layers is off: type a regex first"),
        ("All Conv layers", "All Conv layers is off: this model has no Conv layer"),
    ):
        assert button(app, label).disabled, label
        assert reason in text, (label, text)
    app.text_input[0].set_value(r"fc\d").run()
    button(app, "Matching layers").click().run()
    assert not button(app, "Apply").disabled
    assert "Apply is off" not in _captions(app)


def test_history_and_quality_figures_use_one_number_format(app):
    handle = state.current_handle(app.session_state)
    before = {"accuracy": 0.99, "agreement": 1.0, "cosine": 1.0}
    after = {"accuracy": 0.9811, "agreement": 0.9722, "cosine": 0.9987654}
    assert tuning.quality_figure(handle, after, before) == ("Accuracy", "98.11%", "-0.89 points")
    app.switch_page("pages/tune.py").run()
    button(app, "All Conv layers").click().run()
    button(app, "Apply").click().run()
    history = app.dataframe[-1].value
    assert list(history.columns) == ["applied", "size (bytes)", "accuracy", "agreement", "cosine", "layers changed"]
    row = history.iloc[0]
    assert row["accuracy"].endswith("%") and row["agreement"].endswith("%") and len(row["agreement"].split(".")[1]) == 3
    assert len(row["cosine"].split(".")[1]) == 5 and row["size (bytes)"].replace(",", "").isdigit()


def test_the_model_page_of_unlabelled_data_does_not_run_the_model(app, tmp_path, monkeypatch):
    runs = []  # the models whose baseline (one run over the evaluation data) was asked for
    real = cache.baseline_metrics

    def counted(key, handle):
        runs.append(handle.name)
        return real(key, handle)

    monkeypatch.setattr(cache, "baseline_metrics", counted)
    data = tmp_path / "unlabelled.npz"
    np.savez(data, inputs=np.random.default_rng(0).random((6, 1, 8, 8), np.float32))
    app.file_uploader(key=state.UPLOAD_MODEL).upload("cnn.onnx", _onnx_bytes())
    app.file_uploader(key=state.UPLOAD_DATA).upload("unlabelled.npz", data.read_bytes())
    next(item for item in app.button if item.label == "Load model").click().run()
    assert not app.exception and not app.error, [error.value for error in app.error]
    assert app.title[0].value == "Model: cnn"
    assert "cnn" not in runs
    figures = {metric.label: metric.value for metric in app.metric}
    assert figures["Parameters"] == "40,394" and figures["Accuracy"] == "n/a"  # the export folds BatchNorm


def _onnx_bytes() -> bytes:
    from compress_core.ort.export import to_onnx

    return to_onnx(load_model("digits_cnn")).SerializeToString()


def test_netron_is_served_without_telemetry_and_opens_at_a_node():
    server = NetronServer()
    try:
        viewer = server.publish("m.onnx", b"model", new_token())
        url = server.viewer_url(NetronServer.with_node(viewer, "/conv1/Conv"), "localhost:8501")
        assert url.endswith("&node=%2Fconv1%2FConv")
        with urllib.request.urlopen(url) as response:
            page = response.read().decode()
        assert '<meta name="version" content="0.0.0">' in page  # browser.js starts telemetry for other versions
        assert (
            '<script type="text/javascript" src="index.js"></script>\n<script type="text/javascript" src="focus.js">'
            in page
        )
        with urllib.request.urlopen(f"http://127.0.0.1:{server.port}{FOCUS_PATH}") as response:
            script = response.read().decode()
            assert response.headers["Content-Type"].startswith("text/javascript")
        assert "get('node')" in script and "graph.select" in script
        assert server.for_session(new_token()).viewer_url(viewer, None, None) == server.viewer_url(viewer, None)
    finally:
        server.stop()


def test_the_launcher_and_the_config_keep_the_file_watcher_off():
    config = (Path(__file__).resolve().parent.parent / ".streamlit" / "config.toml").read_text()
    assert 'fileWatcherType = "none"' in config and "runOnSave = false" in config
    assert streamlit_argv(["--server.port", "8600"])[3:] == ["--server.port", "8600"]
    dev = streamlit_argv(["--dev", "--server.port", "8600"])
    assert dev[3:] == [*DEV_OPTIONS, "--server.port", "8600"]


def test_an_empty_plan_leaves_every_layer_float():
    layers = layer_inventory(load_model("digits_cnn"))
    assert tuning.with_bits(Plan(), layers, tuning.all_layers(layers), "float").layers == {}
