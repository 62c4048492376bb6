"""Task-aware quality of a model's outputs against the original's: which kind of output it is, how
to compare two of them, and the one number that ranks compressed copies.

Task kinds (``TASKS``) and what they measure besides cosine and SQNR (always computed, on each
sample's flattened values):

- ``classification`` ``[N, C]``: accuracy where labels exist (one per sample), top-1 agreement;
- ``sequence`` ``[N, T, C]``: per-step agreement of the argmax over ``C`` and exact match of whole
  sequences; accuracy per step with labels ``[N, T]`` (negative labels are padding);
- ``dense`` ``[N, C, H, W]``: per-pixel agreement of the argmax over ``C``; accuracy per pixel with
  labels ``[N, H, W]`` (negative labels are ignored);
- ``ids`` (integer outputs, class ids): element agreement and exact match of each sample's ids;
  accuracy per element with labels of the same shape;
- ``embedding`` (embeddings and regression): cosine and SQNR only.

For ``sequence`` and ``ids`` a ``ctc_blank`` id turns on CTC decoding before sequences are matched:
repeats collapse, then blanks drop (``ctc_collapse``). Agreement stays per step (before decoding);
exact match, and accuracy with labels ``[N, L]`` (the target ids, padded with negative values),
compare the decoded sequences.

A user metric is a Python function ``(reference, outputs, labels) -> float`` (higher is better) in a
local file named on the command line (``load_user_metric``): code the user runs, never an upload.
"""

from __future__ import annotations

import importlib.util
import math
import numbers
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np

from compress_core.errors import CompressError, first_line
from compress_core.ops.sqnr import sqnr_from_energies

AUTO = "auto"
TASKS = ("classification", "sequence", "dense", "ids", "embedding")
FIDELITY_KEYS = ("accuracy", "agreement", "exact_match", "cosine", "sqnr_db")
USER_METRIC = "user_metric"
# A float [N, T, C] output with at most DETECTION_MAX_VALUES values per row and more than
# DETECTION_MIN_ROWS rows is a table of boxes and scores (a detector's anchors), not a sequence.
DETECTION_MAX_VALUES = 16
DETECTION_MIN_ROWS = 1024

UserMetric = Callable[[np.ndarray, np.ndarray, "np.ndarray | None"], float]

_DESCRIPTIONS = {
    AUTO: "auto: detected from the output's shape and dtype",
    "classification": "classification [N, C]: accuracy with labels, otherwise top-1 agreement",
    "sequence": "sequence [N, T, C]: per-step agreement and exact match",
    "dense": "dense [N, C, H, W]: per-pixel agreement",
    "ids": "ids (integer outputs): element agreement and exact match",
    "embedding": "embedding or regression: cosine similarity and SQNR",
}
_AGREEMENT_TITLES = {
    "classification": "top-1 agreement",
    "sequence": "per-step agreement",
    "dense": "per-pixel agreement",
    "ids": "element agreement",
}
_TITLES = {"accuracy": "accuracy", "exact_match": "exact match", "cosine": "cosine", "sqnr_db": "SQNR"}


def check_task(task: str) -> str:
    """``task`` if it is one of ``TASKS`` or ``auto``; a ``CompressError`` naming the allowed ones otherwise."""
    if task != AUTO and task not in TASKS:
        raise CompressError(f"unknown task '{task}'; expected one of: {', '.join((AUTO, *TASKS))}")
    return task


def describe_task(task: str) -> str:
    """One line for the UI: the task kind, the output shape it expects and what it measures."""
    return _DESCRIPTIONS[check_task(task)]


def metric_title(task: str, key: str) -> str:
    """How a fidelity key reads for ``task``: ``agreement`` is ``per-step agreement`` for sequences."""
    if key == "agreement":
        return _AGREEMENT_TITLES.get(task, "agreement")
    return _TITLES.get(key, key)


def detect_task(output: np.ndarray) -> str:
    """The task kind of one output (batch axis first), from its dtype and shape.

    Integer (or bool) values are ``ids``. Float ``[N, C]`` with ``C > 1`` is ``classification``,
    unless every row has unit length (normalised embeddings: ``embedding``);
    ``[N, T, C]`` with ``C > 1`` is ``sequence``, except a detector's table of boxes and scores
    (``C <= DETECTION_MAX_VALUES`` values in each of more than ``DETECTION_MIN_ROWS`` rows, such as
    ``[1, 3549, 6]``), which is compared as ``embedding`` (regression); ``[N, C, H, W]`` with
    ``C > 1`` is ``dense``. Anything else (``[N]``, ``[N, 1]``, single-channel maps, rank 5 and up) is
    ``embedding``.
    """
    if output.dtype.kind in "biu":
        return "ids"
    shape = output.shape
    if len(shape) == 2 and shape[1] > 1:
        return "embedding" if _unit_rows(output) else "classification"
    if len(shape) == 3 and shape[2] > 1:
        detector = shape[2] <= DETECTION_MAX_VALUES and shape[1] > DETECTION_MIN_ROWS
        return "embedding" if detector else "sequence"
    if len(shape) == 4 and shape[1] > 1:
        return "dense"
    return "embedding"


def _unit_rows(output: np.ndarray) -> bool:
    """Whether every row has L2 norm 1: normalised embeddings, which logits almost never are."""
    norms = np.linalg.norm(output.astype(np.float64), axis=1)
    return bool(np.allclose(norms, 1.0, atol=1e-3))


def ctc_collapse(ids: np.ndarray, blank: int) -> np.ndarray:
    """CTC decoding of one sequence of ids: repeats collapse to one, then ``blank`` ids drop
    (``[1, 1, 0, 2, 2, 0, 0, 3]`` with blank 0 is ``[1, 2, 3]``)."""
    ids = np.asarray(ids).reshape(-1)
    keep = np.ones(len(ids), dtype=bool)
    keep[1:] = ids[1:] != ids[:-1]
    return ids[keep & (ids != blank)]


def fidelity(
    task: str,
    reference: np.ndarray,
    outputs: np.ndarray,
    labels: np.ndarray | None,
    ctc_blank: int | None = None,
    similarity: bool = True,
) -> dict[str, float | None]:
    """How close ``outputs`` are to ``reference`` (the original's outputs, same shape) for ``task``.

    Keys ``FIDELITY_KEYS``: ``accuracy`` (with labels), ``agreement`` and ``exact_match`` as the task
    defines them (see the module's docstring; None where they do not apply), ``cosine`` (mean over
    samples) and ``sqnr_db`` (``ops.sqnr.sqnr_from_energies``: ``-inf`` for an all-zero reference
    that ``outputs`` miss), both on each sample's flattened values; ``similarity=False`` leaves
    these two None (they cost a float64 pass over every value, which a sweep ranking by agreement
    does not need). ``task`` ``auto`` is detected from ``reference``. A shape or labels that do not
    fit the task raise ``CompressError``.
    """
    task = detect_task(reference) if check_task(task) == AUTO else task
    if outputs.shape != reference.shape:
        if outputs.size != reference.size or len(outputs) != len(reference):
            raise CompressError(f"outputs of shape {outputs.shape} do not match the original's {reference.shape}")
        outputs = outputs.reshape(reference.shape)
    result: dict[str, float | None] = dict.fromkeys(FIDELITY_KEYS)
    if similarity:
        result.update(_similarity(reference, outputs))
    if task == "classification" and reference.size > len(reference):
        predicted = outputs.reshape(len(outputs), -1).argmax(1)
        result["agreement"] = float((predicted == reference.reshape(len(reference), -1).argmax(1)).mean())
        if labels is not None:
            result["accuracy"] = float((predicted == _sample_labels(labels, len(predicted))).mean())
    elif task in ("sequence", "dense"):
        axis = -1 if task == "sequence" else 1
        if reference.ndim < 3:
            expected = "[N, T, C]" if task == "sequence" else "[N, C, H, W]"
            raise CompressError(f"task '{task}' needs outputs {expected}; this output has shape {reference.shape}")
        expected_ids, predicted_ids = reference.argmax(axis), outputs.argmax(axis)
        if task == "dense":
            result["agreement"] = float((predicted_ids == expected_ids).mean())
            result["accuracy"] = _element_accuracy(predicted_ids, labels, task)
        else:
            result.update(_id_fidelity(expected_ids, predicted_ids, labels, ctc_blank, task))
    elif task == "ids":
        result.update(_id_fidelity(reference, outputs, labels, ctc_blank, task))
    return result


def _similarity(reference: np.ndarray, outputs: np.ndarray) -> dict[str, float | None]:
    """Mean cosine over samples and SQNR (dB) of two arrays of one shape, batch axis first."""
    flat_reference = reference.reshape(len(reference), -1).astype(np.float64)
    flat_outputs = outputs.reshape(len(outputs), -1).astype(np.float64)
    norms = np.linalg.norm(flat_reference, axis=1) * np.linalg.norm(flat_outputs, axis=1)
    return {
        "cosine": float(np.mean(np.sum(flat_reference * flat_outputs, axis=1) / np.maximum(norms, 1e-12))),
        "sqnr_db": sqnr_from_energies(
            float(np.sum(flat_reference**2)), float(np.sum((flat_reference - flat_outputs) ** 2))
        ),
    }


def _sample_labels(labels: np.ndarray, samples: int) -> np.ndarray:
    """Classification labels as one per sample (a ``[N, 1]`` column is accepted)."""
    if labels.size != samples:
        raise CompressError(f"labels of shape {labels.shape} do not fit a classification output: expected ({samples},)")
    return labels.reshape(samples)


def _element_accuracy(predicted: np.ndarray, labels: np.ndarray | None, task: str) -> float | None:
    """Accuracy of ``predicted`` ids against labels of the same shape; negative labels are ignored."""
    if labels is None:
        return None
    if labels.shape != predicted.shape and labels.size == predicted.size and len(labels) == len(predicted):
        labels = labels.reshape(predicted.shape)
    if labels.shape != predicted.shape:
        raise CompressError(
            f"labels of shape {labels.shape} do not fit the {task} output: expected {predicted.shape} "
            "(one label per element, negative to ignore)"
        )
    counted = labels >= 0
    return float((predicted[counted] == labels[counted]).mean()) if counted.any() else None


def _id_fidelity(
    expected: np.ndarray, predicted: np.ndarray, labels: np.ndarray | None, ctc_blank: int | None, task: str
) -> dict[str, float | None]:
    """Element agreement, exact match (of CTC-decoded sequences with ``ctc_blank``) and accuracy of
    two arrays of ids with the batch axis first."""
    expected, predicted = expected.reshape(len(expected), -1), predicted.reshape(len(predicted), -1)
    if ctc_blank is None:
        exact = np.all(expected == predicted, axis=1)
        accuracy = _element_accuracy(predicted, labels, task)
    else:
        decoded = [ctc_collapse(row, ctc_blank) for row in predicted]
        exact = np.array([np.array_equal(ctc_collapse(row, ctc_blank), out) for row, out in zip(expected, decoded)])
        accuracy = None if labels is None else _decoded_accuracy(decoded, labels)
    return {
        "agreement": float((expected == predicted).mean()),
        "exact_match": float(exact.mean()),
        "accuracy": accuracy,
    }


def _decoded_accuracy(decoded: list[np.ndarray], labels: np.ndarray) -> float:
    """Fraction of decoded sequences equal to their label row (its non-negative ids)."""
    if labels.ndim != 2 or len(labels) != len(decoded):
        raise CompressError(
            f"labels of shape {labels.shape} do not fit CTC-decoded sequences: expected ({len(decoded)}, L), "
            "each row the target ids padded with negative values"
        )
    return float(np.mean([np.array_equal(out, row[row >= 0]) for out, row in zip(decoded, labels)]))


def ranked_key(task: str, measured: Mapping[str, float | None], metric_label: str | None = None) -> str | None:
    """The key of ``measured`` that ranks: ``user_metric`` when ``metric_label`` names a user metric,
    else the first defined of accuracy, agreement, cosine (only cosine for ``embedding``); None when
    ``measured`` holds none of them (a file that was not run)."""
    if metric_label is not None:
        return USER_METRIC if measured.get(USER_METRIC) is not None else None
    order = ("cosine",) if task == "embedding" else ("accuracy", "agreement", "cosine")
    return next((key for key in order if measured.get(key) is not None), None)


def quality_value(
    task: str, measured: Mapping[str, float | None], metric_label: str | None = None
) -> tuple[str, float]:
    """The one ranking number, and its name: a user metric's value as it is (named ``metric_label``),
    else accuracy, agreement or cosine (see ``ranked_key``) in percent."""
    key = ranked_key(task, measured, metric_label)
    value = None if key is None else measured[key]
    if key is None or value is None:
        raise CompressError(f"no quality figure to rank by in {sorted(measured)}")
    if key == USER_METRIC:
        return str(metric_label), value
    return key, 100.0 * value


def load_user_metric(spec: str) -> tuple[UserMetric, str]:
    """The function named by ``spec`` (``path.py:function``, a local file the user names) and its
    label (``file.py:function``). Runs the file's top-level code. A missing file or function, a
    function that is not callable or a file that fails to import raise ``CompressError``."""
    path_text, _, name = spec.rpartition(":")
    if not path_text or not name:
        raise CompressError(f"metric '{spec}': expected path.py:function")
    path = Path(path_text)
    if not path.is_file():
        raise CompressError(f"metric file '{path}' not found")
    module_spec = importlib.util.spec_from_file_location(f"compress_user_metric_{path.stem}", path)
    if module_spec is None or module_spec.loader is None:
        raise CompressError(f"metric file '{path}' is not a Python file")
    module = importlib.util.module_from_spec(module_spec)
    try:
        module_spec.loader.exec_module(module)
    except Exception as exc:  # any error of the user's code
        raise CompressError(f"metric file '{path}' failed to import: {type(exc).__name__}: {first_line(exc)}") from exc
    if not hasattr(module, name):
        raise CompressError(f"metric file '{path}' has no function '{name}'")
    function = getattr(module, name)
    if not callable(function):
        raise CompressError(f"'{name}' in metric file '{path}' is not callable (it is a {type(function).__name__})")
    return function, f"{path.name}:{name}"


def call_user_metric(
    metric: UserMetric, label: str, reference: np.ndarray, outputs: np.ndarray, labels: np.ndarray | None
) -> float:
    """``metric(reference, outputs, labels)`` as a finite float; an error in it, or a value that is not
    a finite number, raises ``CompressError`` naming ``label``."""
    try:
        value: object = metric(reference, outputs, labels)
    except Exception as exc:  # any error of the user's code
        raise CompressError(f"metric {label} raised {type(exc).__name__}: {first_line(exc)}") from exc
    if isinstance(value, np.ndarray) and value.size == 1:
        value = value.reshape(()).item()
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise CompressError(f"metric {label} returned {type(value).__name__}, not a number")
    if not math.isfinite(float(value)):
        raise CompressError(f"metric {label} returned {float(value)}; it must be a finite number")
    return float(value)
