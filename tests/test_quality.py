"""Task-aware quality: detection of the task kind, fidelity per task, the ranking number, user metrics."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from compress_core.analysis import quality
from compress_core.analysis.metrics import (
    evaluate,
    output_quality,
    per_output_fidelity,
    quality_metric,
    quality_ranking,
)
from compress_core.errors import CompressError
from compress_core.models.evaldata import generated_data
from compress_core.models.handle import InputSpec, ModelHandle, Quality
from compress_core.ops.sqnr import sqnr_from_energies
from compress_core.ort.artifacts import headline, report_markdown
from compress_core.plan import Plan
from compress_core.plan.layer_config import LayerConfig
from compress_core.transform.apply import apply_plan


def _one_hot_logits(ids: np.ndarray, classes: int) -> np.ndarray:
    """Float logits [N, T, C] whose argmax over C is ``ids`` [N, T]."""
    return np.eye(classes, dtype=np.float32)[ids] * 4.0 + 0.5


def _handle(task: str, labels: np.ndarray | None = None, **settings: object) -> SimpleNamespace:
    """What the metrics read from a handle: its task, its quality settings and its labels."""
    return SimpleNamespace(task=task, quality=Quality(**settings), data=SimpleNamespace(labels=labels))


# ---------------------------------------------------------------- detection


@pytest.mark.parametrize(
    ("shape", "dtype", "task"),
    [
        ((1, 20), np.int64, "ids"),  # ddddocr common.onnx: class ids per step
        ((8,), np.int32, "ids"),
        ((4, 10), np.bool_, "ids"),
        ((4, 10), np.float32, "classification"),
        ((4, 1), np.float32, "embedding"),  # one regression value per sample
        ((4,), np.float32, "embedding"),
        ((40, 384), np.float32, "classification"),  # MiniLM's task is set to embedding explicitly
        ((4, 25, 37), np.float32, "sequence"),
        ((4, 25, 1), np.float32, "embedding"),
        ((1, 3549, 6), np.float32, "embedding"),  # ddddocr common_det.onnx: boxes and scores per anchor
        ((1, 1024, 6), np.float32, "sequence"),  # up to DETECTION_MIN_ROWS steps it is a sequence
        ((1, 3549, 17), np.float32, "sequence"),  # more than DETECTION_MAX_VALUES per row: classes
        ((2, 3, 8, 8), np.float32, "dense"),
        ((2, 1, 8, 8), np.float32, "embedding"),  # single-channel map: regression
        ((2, 3, 4, 5, 6), np.float32, "embedding"),
    ],
)
def test_detect_task_from_shape_and_dtype(shape: tuple[int, ...], dtype: type, task: str) -> None:
    assert quality.detect_task(np.zeros(shape, dtype=dtype)) == task


def test_tasks_are_checked_and_described() -> None:
    assert quality.TASKS == ("classification", "sequence", "dense", "ids", "embedding")
    assert quality.describe_task("sequence") == "sequence [N, T, C]: per-step agreement and exact match"
    assert quality.describe_task("auto") == "auto: detected from the output's shape and dtype"
    with pytest.raises(CompressError) as error:
        quality.describe_task("ocr")
    assert (
        str(error.value) == "unknown task 'ocr'; expected one of: auto, classification, sequence, dense, ids, embedding"
    )


# ---------------------------------------------------------------- classification and embedding unchanged


def _old_output_fidelity(reference, outputs, labels, task):  # the formulas before task-aware quality
    reference = reference.reshape(len(reference), -1).astype(np.float64)
    outputs = outputs.reshape(len(outputs), -1).astype(np.float64)
    classes = task == "classification" and outputs.shape[1] > 1
    accuracy = float((outputs.argmax(1) == labels).mean()) if classes and labels is not None else None
    agreement = float((outputs.argmax(1) == reference.argmax(1)).mean()) if classes else None
    norms = np.linalg.norm(reference, axis=1) * np.linalg.norm(outputs, axis=1)
    cosine = float(np.mean(np.sum(reference * outputs, axis=1) / np.maximum(norms, 1e-12)))
    sqnr = sqnr_from_energies(float(np.sum(reference**2)), float(np.sum((reference - outputs) ** 2)))
    return {"accuracy": accuracy, "agreement": agreement, "cosine": cosine, "sqnr_db": sqnr}


@pytest.mark.parametrize(("task", "shape"), [("classification", (50, 10)), ("embedding", (40, 384))])
def test_classification_and_embedding_figures_are_the_old_ones(task: str, shape: tuple[int, int]) -> None:
    rng = np.random.default_rng(1)
    reference = rng.standard_normal(shape).astype(np.float32)
    outputs = (reference + 0.8 * rng.standard_normal(shape)).astype(np.float32)
    labels = rng.integers(0, shape[1], shape[0])
    new = quality.fidelity(task, reference, outputs, labels)
    assert new == {**_old_output_fidelity(reference, outputs, labels, task), "exact_match": None}
    if task == "classification":
        assert 0.3 < new["agreement"] < 0.9 and new["accuracy"] is not None
    else:
        assert new["agreement"] is None and new["accuracy"] is None


def test_classification_labels_must_be_one_per_sample() -> None:
    logits = np.eye(3)
    assert quality.fidelity("classification", logits, logits, np.array([[0], [1], [1]]))["accuracy"] == 2 / 3
    with pytest.raises(CompressError, match=r"labels of shape \(3, 2\) do not fit a classification output"):
        quality.fidelity("classification", logits, logits, np.zeros((3, 2), dtype=np.int64))


# ---------------------------------------------------------------- sequences


def _recogniser_outputs() -> tuple[np.ndarray, np.ndarray]:
    """20 sequences of 8 steps over 5 classes; the copy keeps every step's class but shrinks step 0
    (where each sample's largest logit is), and gets one step of sequence 19 wrong."""
    rng = np.random.default_rng(0)
    reference = rng.uniform(-1, 1, (20, 8, 5))
    reference[:, 0, 0] = 10.0
    outputs = reference.copy()
    outputs[:, 0] *= 0.05  # a positive scale keeps each step's argmax
    wrong = outputs[19, 3].argmax()
    outputs[19, 3, wrong] = -5.0
    return reference, outputs


def test_sequence_agreement_is_per_step_and_exact_match_per_sequence() -> None:
    reference, outputs = _recogniser_outputs()
    flat = (outputs.reshape(20, -1).argmax(1) == reference.reshape(20, -1).argmax(1)).mean()
    assert flat == 0.0  # one argmax over T*C: what the explorer used to show
    result = quality.fidelity("sequence", reference, outputs, None)
    assert result["agreement"] == 159 / 160
    assert result["exact_match"] == 19 / 20
    assert result["accuracy"] is None
    assert quality.quality_value("sequence", result) == ("agreement", pytest.approx(99.375))
    assert quality.fidelity("auto", reference, outputs, None) == result


def test_ctc_collapse_drops_repeats_then_blanks() -> None:
    assert quality.ctc_collapse(np.array([1, 1, 0, 2, 2, 0, 0, 3]), 0).tolist() == [1, 2, 3]
    assert quality.ctc_collapse(np.array([1, 0, 1]), 0).tolist() == [1, 1]  # a blank separates repeats
    assert quality.ctc_collapse(np.array([5, 5, 5]), 5).tolist() == []


def test_ctc_decoding_matches_sequences_that_differ_only_in_alignment() -> None:
    expected = np.array([[1, 1, 0, 2], [3, 0, 0, 0]])
    predicted = np.array([[1, 0, 2, 2], [3, 3, 0, 3]])
    reference, outputs = _one_hot_logits(expected, 4), _one_hot_logits(predicted, 4)
    plain = quality.fidelity("sequence", reference, outputs, None)
    assert plain["agreement"] == 4 / 8 and plain["exact_match"] == 0.0
    decoded = quality.fidelity("sequence", reference, outputs, None, ctc_blank=0)
    assert decoded["agreement"] == 4 / 8  # per step, before decoding
    assert decoded["exact_match"] == 0.5  # [1, 2] == [1, 2]; [3] != [3, 3]


def test_sequence_labels_per_step_or_as_decoded_targets() -> None:
    ids = np.array([[1, 2, 2, 0], [3, 1, 0, 0]])
    logits = _one_hot_logits(ids, 4)
    per_step = np.array([[1, 2, 0, -100], [3, 1, 0, 0]])  # negative labels are padding
    assert quality.fidelity("sequence", logits, logits, per_step)["accuracy"] == 6 / 7
    targets = np.array([[1, 2, -1], [3, 3, -1]])  # the words' ids, padded
    assert quality.fidelity("sequence", logits, logits, targets, ctc_blank=0)["accuracy"] == 0.5
    with pytest.raises(
        CompressError, match=r"labels of shape \(2,\) do not fit the sequence output: expected \(2, 4\)"
    ):
        quality.fidelity("sequence", logits, logits, np.array([1, 3]))
    with pytest.raises(CompressError, match=r"labels of shape \(2,\) do not fit CTC-decoded sequences"):
        quality.fidelity("sequence", logits, logits, np.array([1, 3]), ctc_blank=0)


def test_sequence_and_dense_need_their_shapes() -> None:
    with pytest.raises(CompressError) as error:
        quality.fidelity("sequence", np.ones((2, 5)), np.ones((2, 5)), None)
    assert str(error.value) == "task 'sequence' needs outputs [N, T, C]; this output has shape (2, 5)"
    with pytest.raises(CompressError, match=r"outputs of shape \(2, 4\) do not match the original's \(2, 5\)"):
        quality.fidelity("embedding", np.ones((2, 5)), np.ones((2, 4)), None)


# ---------------------------------------------------------------- dense maps and ids


def test_dense_agreement_is_per_pixel() -> None:
    rng = np.random.default_rng(2)
    reference = rng.standard_normal((2, 3, 4, 4))
    outputs = reference.copy()
    outputs[0, :, 1, 1] = -outputs[0, :, 1, 1] + 10 * (np.arange(3) != reference[0, :, 1, 1].argmax())
    result = quality.fidelity("dense", reference, outputs, None)
    assert result["agreement"] == 31 / 32 and result["exact_match"] is None
    labels = reference.argmax(1)
    labels[1] = -1  # ignored
    assert quality.fidelity("dense", reference, outputs, labels)["accuracy"] == 15 / 16
    assert quality.quality_value("dense", result) == ("agreement", pytest.approx(100 * 31 / 32))


def test_ids_element_agreement_and_exact_match() -> None:
    reference = np.array([[4, 4, 0, 7, 0], [2, 0, 0, 3, 3], [1, 1, 1, 1, 1]], dtype=np.int64)
    outputs = np.array([[4, 0, 0, 7, 0], [2, 0, 0, 3, 3], [1, 1, 1, 1, 2]], dtype=np.int64)
    result = quality.fidelity("ids", reference, outputs, None)
    assert result["agreement"] == 13 / 15 and result["exact_match"] == 1 / 3
    assert result["cosine"] < 1.0 and math.isfinite(result["sqnr_db"])
    decoded = quality.fidelity("ids", reference, outputs, None, ctc_blank=0)
    assert decoded["agreement"] == 13 / 15 and decoded["exact_match"] == 2 / 3  # [4, 7] == [4, 7]
    same = quality.fidelity("auto", reference, reference, None)
    assert same["agreement"] == 1.0 and same["exact_match"] == 1.0 and same["sqnr_db"] == math.inf
    assert quality.fidelity("ids", reference, outputs, reference)["accuracy"] == 13 / 15


def test_ranking_key_per_task() -> None:
    measured = {"accuracy": None, "agreement": 0.5, "exact_match": 0.25, "cosine": 0.9, "sqnr_db": 12.0}
    assert quality.quality_value("classification", measured) == ("agreement", 50.0)
    assert quality.quality_value("embedding", measured) == ("cosine", 90.0)
    assert quality.quality_value("classification", {**measured, "accuracy": 0.75}) == ("accuracy", 75.0)
    user = {**measured, quality.USER_METRIC: 0.123}
    assert quality.quality_value("sequence", user, "m.py:score") == ("m.py:score", 0.123)
    assert quality.metric_title("sequence", "agreement") == "per-step agreement"
    assert quality.metric_title("dense", "exact_match") == "exact match"


def test_ranking_computes_cosine_only_where_it_ranks(monkeypatch) -> None:
    rng = np.random.default_rng(0)
    reference = rng.normal(size=(6, 5, 4)).astype(np.float32)
    outputs = reference + rng.normal(scale=0.5, size=reference.shape).astype(np.float32)
    full = quality.fidelity("sequence", reference, outputs, None)
    lean = quality.fidelity("sequence", reference, outputs, None, similarity=False)
    assert lean["cosine"] is None and lean["sqnr_db"] is None
    assert lean["agreement"] == full["agreement"] and lean["exact_match"] == full["exact_match"]
    calls = []
    similarity = quality._similarity
    monkeypatch.setattr(quality, "_similarity", lambda *arrays: calls.append(1) or similarity(*arrays))
    assert quality_ranking(_handle("sequence"), reference, outputs) == ("agreement", 100.0 * full["agreement"])
    assert calls == []  # a sweep cell ranking by agreement pays no cosine
    name, value = quality_ranking(_handle("embedding"), reference, outputs)
    assert (name, calls) == ("cosine", [1]) and value == pytest.approx(100.0 * full["cosine"])


# ---------------------------------------------------------------- user metrics


def _metric_file(tmp_path, text: str):
    path = tmp_path / "ocr_metric.py"
    path.write_text(text, encoding="utf-8")
    return path


def test_user_metric_loads_and_ranks(tmp_path) -> None:
    path = _metric_file(
        tmp_path,
        "import numpy as np\n\n"
        "def word_accuracy(reference, outputs, labels):\n"
        "    return float(np.all(reference.argmax(-1) == outputs.argmax(-1), axis=1).mean())\n",
    )
    metric, label = quality.load_user_metric(f"{path}:word_accuracy")
    assert label == "ocr_metric.py:word_accuracy"
    reference, outputs = _recogniser_outputs()
    assert quality.call_user_metric(metric, label, reference, outputs, None) == 0.95
    handle = _handle("sequence", metric=metric, metric_label=label)
    assert quality_ranking(handle, reference, outputs) == ("ocr_metric.py:word_accuracy", 0.95)
    assert quality_metric(handle, reference, reference) == 1.0
    measured = output_quality(handle, reference, outputs)
    assert measured[quality.USER_METRIC] == 0.95 and measured["exact_match"] == 0.95


@pytest.mark.parametrize(
    ("text", "spec", "message"),
    [
        ("", "{path}", "metric '{path}': expected path.py:function"),
        ("", "{path}:", "metric '{path}:': expected path.py:function"),
        ("", "{missing}:score", "metric file '{missing}' not found"),
        ("def other(r, o, l):\n    return 1.0\n", "{path}:score", "metric file '{path}' has no function 'score'"),
        ("score = 3\n", "{path}:score", "'score' in metric file '{path}' is not callable (it is a int)"),
        (
            "import not_a_module_xyz\n",
            "{path}:score",
            "metric file '{path}' failed to import: ModuleNotFoundError: No module named 'not_a_module_xyz'",
        ),
        (
            "def score(:\n    pass\n",
            "{path}:score",
            "metric file '{path}' failed to import: SyntaxError: invalid syntax (ocr_metric.py, line 1)",
        ),
    ],
)
def test_user_metric_loading_errors(tmp_path, text: str, spec: str, message: str) -> None:
    path, missing = _metric_file(tmp_path, text), tmp_path / "missing.py"
    with pytest.raises(CompressError) as error:
        quality.load_user_metric(spec.format(path=path, missing=missing))
    assert str(error.value) == message.format(path=path, missing=missing)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("high", "metric m.py:f returned str, not a number"),
        (None, "metric m.py:f returned NoneType, not a number"),
        (np.array([0.5, 0.6]), "metric m.py:f returned ndarray, not a number"),
        (math.nan, "metric m.py:f returned nan; it must be a finite number"),
        (np.float32(np.inf), "metric m.py:f returned inf; it must be a finite number"),
    ],
)
def test_user_metric_values_must_be_finite_numbers(value: object, message: str) -> None:
    with pytest.raises(CompressError) as error:
        quality.call_user_metric(lambda r, o, lab: value, "m.py:f", np.ones(2), np.ones(2), None)
    assert str(error.value) == message


def test_user_metric_errors_and_numpy_values() -> None:
    with pytest.raises(CompressError) as error:
        quality.call_user_metric(lambda r, o, lab: 1 / 0, "m.py:f", np.ones(2), np.ones(2), None)
    assert str(error.value) == "metric m.py:f raised ZeroDivisionError: division by zero"
    assert quality.call_user_metric(lambda r, o, lab: np.float32(0.5), "m.py:f", np.ones(2), np.ones(2), None) == 0.5
    assert quality.call_user_metric(lambda r, o, lab: np.array(7), "m.py:f", np.ones(2), np.ones(2), None) == 7.0


# ---------------------------------------------------------------- several outputs


def test_per_output_fidelity_measures_each_output_with_its_task() -> None:
    reference, outputs = _recogniser_outputs()
    scores = reference[:, :, 0]  # [20, 8]: detected classification
    ids = reference.argmax(-1)  # [20, 8] int64: detected ids
    wrong_ids = ids.copy()
    wrong_ids[0, 0] += 1
    handle = _handle("sequence", output=1, ctc_blank=None)
    measured = per_output_fidelity(handle, [scores, reference, ids], [scores, outputs, wrong_ids])
    assert [(row["index"], row["task"], row["ranked"]) for row in measured] == [
        (0, "classification", False),
        (1, "sequence", True),
        (2, "ids", False),
    ]
    assert measured[0]["agreement"] == 1.0
    assert measured[1]["agreement"] == 159 / 160 and measured[1]["exact_match"] == 0.95
    assert measured[2]["agreement"] == 159 / 160 and measured[2]["exact_match"] == 0.95
    shorter = per_output_fidelity(handle, [scores, reference, ids], [scores, outputs, wrong_ids[:, :5]])
    assert shorter[2]["agreement"] is None and shorter[2]["cosine"] is None
    assert shorter[2]["error"] == "outputs of shape (20, 5) do not match the original's (20, 8)"


class _TwoHeads(nn.Module):
    """Class logits [N, 3] and one score per sample [N]."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.fc(x)
        return logits, logits.sum(dim=1)


def test_evaluate_measures_every_output_of_a_model_with_several() -> None:
    spec = InputSpec((4,))
    data = generated_data([spec], samples=32)
    handle = ModelHandle("heads", "torch", _TwoHeads().eval(), (spec,), data, kind="sample", quality=Quality(output=1))
    handle = handle.replace(task="embedding")
    result = evaluate(handle, apply_plan(handle, Plan(default=LayerConfig(bits=2))), with_zip=False)
    for side in ("original", "compressed"):
        rows = result[side]["outputs"]
        assert [(row["index"], row["task"], row["ranked"]) for row in rows] == [
            (0, "classification", False),
            (1, "embedding", True),
        ]
        assert rows[1]["cosine"] == result[side]["cosine"] and rows[1]["agreement"] is None
    assert result["original"]["outputs"][0]["agreement"] == 1.0 and result["original"]["sqnr_db"] == math.inf
    assert result["compressed"]["outputs"][0]["agreement"] < 1.0  # 2-bit weights change some classes
    single = ModelHandle("one", "torch", nn.Linear(4, 3).eval(), (spec,), data, kind="sample")
    assert "outputs" not in evaluate(single, with_zip=False)["original"]


# ---------------------------------------------------------------- the export report


def _export_metrics(task: str, **extra: object) -> dict:
    figures = {"accuracy": None, "agreement": 0.973, "exact_match": 0.85, "cosine": 0.99, "sqnr_db": 20.0}
    return {
        "model": "ocr",
        "task": task,
        "data": {"origin": "file words.npz", "samples": 20},
        "pytorch": {"original": {**figures, "agreement": 1.0, "exact_match": 1.0}, "compressed": figures},
        "artifacts": {"model_int8.onnx": {"bytes": 1000, "zip_bytes": 900, **figures}},
        "int8": None,
        **extra,
    }


def test_report_names_the_task_and_its_metric() -> None:
    report = report_markdown(_export_metrics("sequence", ctc_blank=0))
    assert "Task: sequence [N, T, C]: per-step agreement and exact match, CTC-decoded with blank 0." in report
    assert "| file | bytes | zip bytes | per-step agreement (ONNX Runtime) | exact match (ONNX Runtime) |" in report
    assert "| model_int8.onnx | 1,000 | 900 | 97.30% | 85.00% |" in report
    assert (
        "PyTorch simulation (sequence): original per-step agreement 100.00%, exact match 100.00%; "
        "compressed per-step agreement 97.30%, exact match 85.00%." in report
    )
    assert "| model_int8.onnx | 1,000 | 900 | 99.00% |" in report_markdown(_export_metrics("embedding"))
    assert headline({"cosine": 0.5, "agreement": 0.25}, "embedding") == ("cosine", 0.5)
    assert headline({}, "classification") == ("agreement", None)


def test_report_shows_a_user_metric_as_it_is() -> None:
    metrics = _export_metrics("sequence", metric_label="ocr_metric.py:words")
    for side in ("original", "compressed"):
        metrics["pytorch"][side][quality.USER_METRIC] = 17.0 if side == "original" else 16.0
    metrics["artifacts"]["model_int8.onnx"][quality.USER_METRIC] = 15.0
    report = report_markdown(metrics)
    assert "Quality is ocr_metric.py:words, measured with ONNX Runtime" in report
    assert "| model_int8.onnx | 1,000 | 900 | 15 |" in report
    assert "original ocr_metric.py:words 17; compressed ocr_metric.py:words 16." in report
