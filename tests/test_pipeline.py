"""The compressed-model pipeline: one inventory, one ONNX export and one run per model, from Apply to the int8 file."""

from __future__ import annotations

import sys
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest
import streamlit as st
from apptest_helpers import button, finish_job, first_run

import compress_core as cc
from compress_core.analysis.metrics import evaluate
from compress_core.models.handle import ModelHandle
from compress_core.models.inventory import layer_inventory
from compress_core.ort.artifacts import INT8_ONNX, export_artifacts
from compress_core.ort.export import to_onnx
from compress_core.ort.int8 import Int8Options
from compress_core.pipeline import compress
from compress_core.plan import Plan
from compress_core.transform.apply import apply_plan
from explorer_ui import exporting, recover_panel, state  # noqa: F401 - imported before counting, so that Calls patches them

CONV_8_BITS = "version: 1\nlayers:\n  're:.*conv.*': {bits: 8}\n"


class Calls:
    """Counts calls of engine functions per model handle, wherever the engine and the app look them up."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.counts: dict[str, Counter[int]] = {}
        self.handles: dict[int, ModelHandle] = {}
        for function in (layer_inventory, to_onnx, apply_plan):
            self._patch_everywhere(monkeypatch, function)
        original_run = ModelHandle.run_outputs

        def run_outputs(handle: ModelHandle, inputs: Any, *args: Any, **kwargs: Any) -> Any:
            if len(inputs) > 1:  # a run on data, not load_model's one-sample check
                self._count("run", handle)
            return original_run(handle, inputs, *args, **kwargs)

        monkeypatch.setattr(ModelHandle, "run_outputs", run_outputs)

    def _patch_everywhere(self, monkeypatch: pytest.MonkeyPatch, function: Callable[..., Any]) -> None:
        def counting(handle: ModelHandle, *args: Any, **kwargs: Any) -> Any:
            self._count(function.__name__, handle)
            return function(handle, *args, **kwargs)

        modules = [
            module
            for name, module in list(sys.modules.items())
            if name.split(".")[0] in ("compress_core", "explorer_ui")
        ]
        patched = [module for module in modules if getattr(module, function.__name__, None) is function]
        assert patched, function.__name__
        for module in patched:
            monkeypatch.setattr(module, function.__name__, counting)

    def _count(self, name: str, handle: ModelHandle) -> None:
        self.handles[id(handle)] = handle  # keeps the handle alive, so its id stays its own
        self.counts.setdefault(name, Counter())[id(handle)] += 1

    def of(self, name: str, handle: ModelHandle) -> int:
        """How often ``name`` was called on ``handle``."""
        return self.counts.get(name, Counter())[id(handle)]

    def on(self, name: str, predicate: Callable[[ModelHandle], bool]) -> int:
        """How often ``name`` was called on handles for which ``predicate`` holds."""
        return sum(count for key, count in self.counts.get(name, Counter()).items() if predicate(self.handles[key]))


@pytest.fixture(scope="module")
def resnet() -> cc.ModelHandle:
    return cc.load_model("digits_resnet")


def test_export_with_int8_takes_one_inventory_one_export_per_model_and_one_run_of_the_original(
    resnet, tmp_path, monkeypatch
):
    calls = Calls(monkeypatch)
    model = compress(resnet, Plan.from_text(CONV_8_BITS))
    result = export_artifacts(model, tmp_path / "out", Int8Options())  # what the Export page builds by default
    compressed = model.compressed.handle
    assert INT8_ONNX in result.files and result.metrics["int8"]["layers"]
    assert (calls.of("layer_inventory", resnet), calls.of("layer_inventory", compressed)) == (1, 1)
    assert (calls.of("to_onnx", resnet), calls.of("to_onnx", compressed)) == (1, 1)
    assert (calls.of("run", resnet), calls.of("run", compressed)) == (1, 1)
    assert calls.of("apply_plan", resnet) == 1


def test_a_second_plan_and_a_fine_tuned_model_reuse_the_originals_work(resnet, monkeypatch):
    calls = Calls(monkeypatch)
    first = compress(resnet, Plan.from_text(CONV_8_BITS))
    first.evaluate()
    second = compress(first.original, Plan.from_text("version: 1\ndefault: {bits: 4}\n"))
    second.evaluate()
    tuned = first.fine_tuned(second.compressed.handle)  # any compressed handle stands in for a fine-tuned one
    assert tuned.original is first.original and tuned.plan is first.plan
    assert tuned.evaluate()["compressed"] == second.evaluate()["compressed"]
    assert (calls.of("run", resnet), calls.of("to_onnx", resnet), calls.of("layer_inventory", resnet)) == (1, 1, 1)
    assert calls.of("run", second.compressed.handle) == 2  # the stand-in measured twice: once per pipeline object


def test_evaluate_matches_the_uncached_evaluate_and_hands_out_copies(resnet):
    model = compress(resnet, Plan.from_text(CONV_8_BITS))
    result = model.evaluate()
    assert result == evaluate(resnet, model.compressed.handle)
    result["compressed"]["notes"].append("changed by the caller")
    result["original"]["params"] = -1
    assert model.evaluate() == evaluate(resnet, model.compressed.handle)
    assert model.evaluate(with_zip=False)["compressed"]["zip_bytes"] is None


def test_a_handle_without_a_plan_is_no_compressed_model(resnet):
    with pytest.raises(cc.CompressError, match="carries no plan"):
        compress(resnet, Plan.from_text(CONV_8_BITS)).fine_tuned(resnet)


def _is_compressed(handle: ModelHandle) -> bool:
    return handle.compression is not None


def _is_original(handle: ModelHandle) -> bool:
    return handle.compression is None


def _app_after_apply(monkeypatch: pytest.MonkeyPatch) -> tuple[Any, Calls]:
    """The app from empty caches, counting, after Apply of 8 bits on every Conv layer of digits_cnn."""
    st.cache_resource.clear()  # the app's cached models are shared by the whole process: start from none
    st.cache_data.clear()
    calls = Calls(monkeypatch)
    app = first_run()
    app.switch_page("pages/tune.py").run()
    button(app, "All Conv layers").click().run()
    button(app, "Apply").click().run()
    return app, calls


def _build(app: Any) -> dict[str, Any]:
    app.switch_page("pages/export.py").run()
    button(app, "Build artifacts").click().run()
    assert not app.exception and not app.error
    built = app.session_state[state.EXPORTS]["digits_cnn"]
    assert {"model_fp32.onnx", "model_int8.onnx"} <= set(built["files"])
    return built


def test_the_app_builds_the_compressed_model_once_for_apply_and_export(private_dirs, monkeypatch):
    app, calls = _app_after_apply(monkeypatch)
    built = _build(app)
    assert built["metrics"]["pytorch"]["compressed"] == state.history(app.session_state)[-1]["metrics"]
    assert calls.on("apply_plan", lambda handle: True) == 1
    assert (calls.on("layer_inventory", _is_original), calls.on("layer_inventory", _is_compressed)) == (1, 1)
    assert (calls.on("to_onnx", _is_original), calls.on("to_onnx", _is_compressed)) == (1, 1)
    assert (calls.on("run", _is_original), calls.on("run", _is_compressed)) == (1, 1)


def test_the_app_exports_the_fine_tuned_model_it_measured_after_recovery(private_dirs, monkeypatch):
    app, calls = _app_after_apply(monkeypatch)
    app.number_input(key="recover_epochs").set_value(1).run()
    button(app, "Recover").click().run()
    if recover_panel.RECOVER_JOB in app.session_state:  # else it has already ended and been stored
        finish_job(app.session_state[recover_panel.RECOVER_JOB]["job"])
    app.run()
    tuned = app.session_state[recover_panel.RECOVERED]["digits_cnn"]
    built = _build(app)
    assert built["metrics"]["pytorch"]["compressed"] == tuned["after"]
    assert calls.on("apply_plan", lambda handle: True) == 1
    # applied and fine-tuned: one export and evaluation run each (the original runs once more, on the
    # training split, for the distillation targets); one inventory, the fine-tuned model's for its export:
    # the applied model is measured with the original's, as its plan keeps every shape
    assert (calls.on("layer_inventory", _is_original), calls.on("layer_inventory", _is_compressed)) == (1, 1)
    assert (calls.on("to_onnx", _is_original), calls.on("to_onnx", _is_compressed)) == (1, 2)
    assert (calls.on("run", _is_original), calls.on("run", _is_compressed)) == (2, 2)


@pytest.mark.parametrize(
    "recipe,keeps_shapes",
    [
        ("version: 1\ndefault: {bits: 4, prune: {ratio: 0.5}}\n", True),
        ("version: 1\nlayers:\n  conv2: {prune: {kind: '2:4'}}\n", True),
        ("version: 1\nlayers:\n  conv2: {prune: {ratio: 0.5, kind: structured}}\n", False),
        ("version: 1\nlayers:\n  fc1: {rank: 0.5}\n", False),
    ],
)
def test_a_plan_that_keeps_shapes_is_measured_without_a_new_inventory(recipe: str, keeps_shapes: bool) -> None:
    model = compress(cc.load_model("digits_cnn"), Plan.from_text(recipe))
    measured = model.evaluate()["compressed"]
    assert ("inventory" not in vars(model.compressed)) is keeps_shapes  # the weight statistics spared
    full = model.compressed.metrics(model.original.baseline(), layers=layer_inventory(model.compressed.handle))
    assert {key: measured[key] for key in full} == full
