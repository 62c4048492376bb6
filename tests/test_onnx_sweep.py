"""Sweeps on ONNX models in one ONNX Runtime session (issue 13): each cell equals ``apply_plan``'s result,
one session per sweep, stop and cache; suggest's lazy sweep; a sequence model's broken layer ranks first."""

from __future__ import annotations

import importlib.util
import threading
from pathlib import Path

import numpy as np
import onnx
import pytest

from compress_core import CompressError, load_model
from compress_core.analysis import onnx_cells, suggest_sweep
from compress_core.analysis.metrics import quality_ranking
from compress_core.analysis.onnx_cells import OnnxCells
from compress_core.analysis.sensitivity import perturb_weight, run_sensitivity
from compress_core.analysis.suggest import measure_plan, suggest_plan
from compress_core.analysis.suggest_sweep import estimate
from compress_core.analysis.sweep import Sweep, config_for
from compress_core.models import sessions
from compress_core.models.handle import EvalData, ModelHandle
from compress_core.models.inputs import Inputs
from compress_core.models.inventory import layer_inventory
from compress_core.ort.export import to_onnx
from compress_core.plan import LayerConfig, Plan
from compress_core.transform.apply import apply_plan

CELLS = [("bits", 4), ("prune", 0.5), ("rank", 0.5)]
SWEEP = Sweep(bits=(4, 2), prune=(0.5,), ranks=(0.5,), kinds=("bits", "prune", "rank"))


def _onnx_sample(name: str, folder: Path, samples: int = 48) -> ModelHandle:
    """The sample exported to ONNX and loaded from the file, with its first test samples and labels."""
    sample = load_model(name)
    path = folder / f"{name}.onnx"
    onnx.save(to_onnx(sample), str(path))
    handle = load_model(path)
    data = sample.data
    labels = None if data.labels is None else data.labels[:samples]
    return handle.replace(data=EvalData(data.inputs[:samples], labels, "test split of digits"))


@pytest.fixture(scope="module")
def cnn(tmp_path_factory: pytest.TempPathFactory) -> ModelHandle:
    return _onnx_sample("digits_cnn", tmp_path_factory.mktemp("onnx"))


@pytest.mark.parametrize("name", ["digits_cnn", "digits_transformer"])
def test_a_fed_weight_gives_what_apply_plan_gives(name, tmp_path):
    # Conv and Gemm weights (digits_cnn), MatMul weights stored [in, out] (digits_transformer).
    handle = _onnx_sample(name, tmp_path, samples=16)
    layers = layer_inventory(handle)
    cells = OnnxCells(handle, layers)
    assert np.allclose(cells.run(), handle.run(handle.data.inputs), atol=1e-4)
    chosen = layers if name == "digits_cnn" else layers[::4]
    for layer in chosen:
        for kind, level in CELLS:
            assert cells.feeds(layer, kind)
            weight, _ = perturb_weight(cells.weight(layer), layer, kind, level, SWEEP)
            fed = cells.run({layer.weight_name: weight.numpy()})
            applied = apply_plan(handle, Plan(layers={layer.name: config_for(kind, level, SWEEP)}), layers)
            expected = applied.run(handle.data.inputs)
            scale = float(np.abs(expected).max())
            assert np.allclose(fed, expected, atol=1e-5 * scale), (layer.name, kind, level)
            assert not np.allclose(fed, cells.run(), atol=1e-5 * scale), "the cell changed the outputs"


def test_sweep_rows_match_apply_plan(cnn):
    result = run_sensitivity(cnn, SWEEP, cache=False)
    assert result.strategy == "one ONNX Runtime session, weights fed per cell"
    assert len(result.rows) == 5 * 4 and not result.skipped
    reference = cnn.run(cnn.data.inputs)
    layers = layer_inventory(cnn)
    for row in result.rows[::3]:
        expected = measure_plan(
            cnn, Plan(layers={row.layer: config_for(row.kind, row.level, SWEEP)}), reference, layers
        )
        assert row.metric == pytest.approx(expected["metric"]), row


def _count_sessions(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    made: list[str] = []
    original = sessions.make_session

    def counting(model, *args, **kwargs):
        made.append(kwargs.get("label") or "")
        return original(model, *args, **kwargs)

    monkeypatch.setattr(sessions, "make_session", counting)
    monkeypatch.setattr(onnx_cells, "make_session", counting)
    return made


def test_one_session_per_sweep(cnn, monkeypatch):
    made = _count_sessions(monkeypatch)
    layer_inventory(cnn)
    inventory_sessions = len(made)
    for sweep, cells in ((Sweep(bits=(4,), kinds=("bits",)), 5), (SWEEP, 20)):
        made.clear()
        result = run_sensitivity(cnn, sweep, cache=False)
        assert result.evaluations == cells
        assert len(made) == inventory_sessions + 1, made  # the inventory's, then one for every cell


def test_structured_pruning_stays_a_skipped_cell(cnn):
    result = run_sensitivity(cnn, Sweep(prune=(0.5,), kinds=("structured",)), cache=False)
    assert not result.rows and len(result.skipped) == 5
    assert "structured pruning is not supported for ONNX inputs" in result.skipped[0].reason


def test_stop_keeps_partial_results_and_only_a_whole_sweep_is_cached(cnn, tmp_path):
    stop, seen = threading.Event(), []

    def progress(step):
        seen.append(step)
        if step.cell == 7:
            stop.set()

    stopped = run_sensitivity(cnn, SWEEP, cache=tmp_path, progress=progress, cancel=stop)
    assert stopped.cancelled and len(stopped.rows) == 7 and seen[-1].cell == 7
    assert not list(tmp_path.glob("*.json"))  # no whole table; its finished cells are kept
    whole = run_sensitivity(cnn, SWEEP, cache=tmp_path)
    assert not whole.cancelled and len(whole.rows) == 20 and whole.evaluations == 20 - 7
    assert [(r.layer, r.kind, r.level, r.metric) for r in whole.rows[:7]] == [
        (r.layer, r.kind, r.level, r.metric) for r in stopped.rows
    ]
    again = run_sensitivity(cnn, SWEEP, cache=tmp_path)
    assert again.cached and again.rows == whole.rows


def test_a_sweep_restricted_to_some_layers(cnn, tmp_path):
    names = ["/fc1/Gemm", "/conv2/Conv"]
    part = run_sensitivity(cnn, Sweep(bits=(2,), kinds=("bits",)), cache=tmp_path, layers=names)
    assert [row.layer for row in part.rows] == ["/conv2/Conv", "/fc1/Gemm"]
    whole = run_sensitivity(cnn, Sweep(bits=(2,), kinds=("bits",)), cache=tmp_path)
    assert not whole.cached and len(whole.rows) == 5  # its own cache entry
    assert {row.layer: row.metric for row in whole.rows if row.layer in names} == {
        row.layer: row.metric for row in part.rows
    }
    with pytest.raises(CompressError, match="no layer 'conv9' in the model to sweep; its layers are /conv1/Conv"):
        run_sensitivity(cnn, Sweep(bits=(2,), kinds=("bits",)), cache=False, layers=["conv9"])


def test_estimates_scale_with_weight_noise():
    assert estimate([(0.01, 2.0)], 0.04) == pytest.approx(8.0)  # harsher: proportional
    assert estimate([(0.01, 2.0)], 0.0025) == pytest.approx(0.5)  # milder: proportional
    assert estimate([(0.01, 1.0), (0.1, 3.0)], 10**-1.5) == pytest.approx(2.0)  # between: on log noise
    assert estimate([(0.0, 0.0), (0.1, 3.0)], 0.05) == pytest.approx(1.5)
    assert estimate([(0.01, -0.5)], 0.04) == 0.0


def test_lazy_suggest_measures_the_plan_it_gives(cnn, monkeypatch, tmp_path):
    sweep = Sweep(kinds=("bits", "prune"))
    monkeypatch.setattr(suggest_sweep, "FULL_SWEEP_CELLS", 0)
    steps = []
    suggestion = suggest_plan(cnn, target_size=1 / 6, sweep=sweep, cache=tmp_path, progress=steps.append)
    assert suggestion.met and suggestion.metrics["size_ratio"] <= 1 / 6 and suggestion.metrics["drop"] <= 2.5
    assert not suggestion.notes, "every cell of the plan was measured"
    assert 0 < suggestion.evaluations == len(steps) < 5 * len(sweep.cells())  # the whole sweep: 70 cells
    assert [step.cell for step in steps] == list(range(1, len(steps) + 1))
    again = suggest_plan(cnn, target_size=1 / 6, sweep=sweep, cache=tmp_path)
    assert (
        again.evaluations == 0 and again.plan.to_dict() == suggestion.plan.to_dict()
    )  # every part came from the cache
    with pytest.raises(CompressError, match="suggest was stopped during its sensitivity sweep"):
        suggest_plan(cnn, target_size=0.1, sweep=sweep, cache=False, cancel=lambda: True)


def test_pruning_is_swept_only_where_it_pays(cnn):
    paying = suggest_sweep.paying_layers(layer_inventory(cnn))
    # conv3 alone holds less than half of the weights; with fc1, 86%; conv1, conv2 and head are left out
    assert [layer.name for layer in paying] == ["/conv3/Conv", "/fc1/Gemm"]


# -- a sequence model: ddddocr's OCR (time-major [T, N, C] logits) --------------------------------------

BROKEN = "Conv_16"  # a 1x1 convolution in the middle of the network
OTHERS = ["Conv_3", "Conv_11", "Conv_25", "Conv_35", "Conv_44"]


def _rendered(texts: list[str], width: int = 160) -> np.ndarray:
    """Dark text on white, [N, 1, 64, width] in [0, 1] as ddddocr feeds its model."""
    from PIL import Image, ImageDraw, ImageFont

    rows = []
    for text in texts:
        image = Image.new("L", (width, 64), 255)
        ImageDraw.Draw(image).text((4, 10), text, fill=0, font=ImageFont.load_default(size=34))
        rows.append(np.asarray(image, np.float32)[None] / 255.0)
    return np.stack(rows)


@pytest.fixture(scope="module")
def ocr() -> ModelHandle:
    spec = importlib.util.find_spec("ddddocr")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("ddddocr is not installed (pip install --no-deps ddddocr==1.6.1)")
    path = Path(list(spec.submodule_search_locations)[0]) / "common.onnx"
    handle = load_model(path, inputs={"input1": (1, 64, 160)})
    images = _rendered(["3AB7xk", "k9mxQ2", "HELLO5", "20r4Zt"])
    return handle.replace(data=EvalData(Inputs.single(images, "input1"), None, "rendered text"))


@pytest.mark.ddddocr
def test_two_bits_on_one_layer_of_a_sequence_model_drops_its_agreement(ocr):
    assert ocr.task == "sequence"
    reference = ocr.run(ocr.data.inputs)
    assert reference.shape[:2] == (4, 20) and (reference.argmax(-1) != 0).sum() >= 16  # it reads characters
    assert quality_ranking(ocr, reference, reference) == ("agreement", 100.0)
    broken = apply_plan(ocr, Plan(layers={BROKEN: LayerConfig(bits=2)})).run(ocr.data.inputs)
    assert quality_ranking(ocr, reference, broken)[1] <= 90.0


@pytest.mark.ddddocr
def test_sensitivity_ranks_the_broken_layer_first(ocr):
    result = run_sensitivity(ocr, Sweep(bits=(2, 8), kinds=("bits",)), cache=False, layers=[*OTHERS, BROKEN])
    assert result.metric_name == "agreement" and result.baseline == 100.0
    assert result.ranking("bits")[0] == BROKEN
    at_two = {row.layer: row.drop for row in result.ranked_rows("bits", 2)}
    assert at_two[BROKEN] >= 10 and all(drop < at_two[BROKEN] for name, drop in at_two.items() if name != BROKEN)
    assert max(row.drop for row in result.ranked_rows("bits", 8)) <= 2.5


@pytest.mark.ddddocr
def test_the_freed_batch_gives_the_cells_of_the_files_own_batch(ocr, monkeypatch):
    # common.onnx declares a batch of 1; its graph takes any, so the sweep runs the 4 samples in one call
    sweep, names = Sweep(bits=(2, 4), kinds=("bits",)), [*OTHERS, BROKEN]
    freed = run_sensitivity(ocr, sweep, cache=False, layers=names)
    assert freed.strategy.endswith("; the file's batch of 1 freed")
    monkeypatch.setattr(onnx_cells, "batch_mismatch", lambda *args: "kept by the test")
    kept = run_sensitivity(ocr, sweep, cache=False, layers=names)
    assert kept.strategy.endswith("; the file's batch of 1 kept: kept by the test")
    assert [(row.layer, row.level) for row in freed.rows] == [(row.layer, row.level) for row in kept.rows]
    # agreement over 4 x 20 steps: float rounding may flip a near tie, one step is 1.25 points
    assert [row.metric for row in freed.rows] == pytest.approx([row.metric for row in kept.rows], abs=2.5)
    assert freed.ranking("bits")[0] == kept.ranking("bits")[0] == BROKEN
