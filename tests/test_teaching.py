"""The Learn page's data functions, on real layers of digits_cnn."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from torch import nn

from compress_core import CompressError, load_model
from compress_core.analysis.calibration import calibration_ranges, entropy_threshold, layer_input_activations
from compress_core.analysis.teaching import (
    TOP_CLASSES,
    binarize,
    class_positions,
    distillation_of_logits,
    distillation_positions,
    distillation_view,
    extreme_quantization,
    layer_weight,
    low_rank_profile,
    pruning_mask_2d,
    quantization_view,
    scheme_comparison,
    softened_probabilities,
    sqnr_by_bits,
    ternarize,
)
from compress_core.models.evaldata import generated_data
from compress_core.models.handle import EvalData, InputSpec, ModelHandle
from compress_core.plan import Plan
from compress_core.transform.apply import apply_plan


@pytest.fixture(scope="module")
def cnn() -> ModelHandle:
    return load_model("digits_cnn")


@pytest.fixture(scope="module")
def conv2(cnn: ModelHandle) -> torch.Tensor:
    return layer_weight(cnn, "conv2")


def test_layer_weight_is_a_copy_with_output_channels_first(cnn: ModelHandle, conv2: torch.Tensor) -> None:
    assert tuple(conv2.shape) == (32, 16, 3, 3)
    assert torch.equal(conv2, cnn.model.conv2.weight.detach())
    assert conv2.data_ptr() != cnn.model.conv2.weight.data_ptr()
    with pytest.raises(
        CompressError, match="layer 'nope' is not a compressible layer of 'digits_cnn'; layers: conv1, conv2"
    ):
        layer_weight(cnn, "nope")


@pytest.mark.parametrize("granularity", ["channel", "tensor"])
def test_sqnr_rises_about_6_db_per_bit(conv2: torch.Tensor, granularity: str) -> None:
    curve = sqnr_by_bits(conv2, granularity=granularity)
    assert curve["bits"] == [2, 3, 4, 5, 6, 7, 8]
    gains = np.diff(curve["sqnr_db"][2:])  # above 3 bits the noise is uniform: 6.02 dB per bit
    assert np.all((gains > 5.5) & (gains < 7.0)), gains
    assert 5.5 < curve["db_per_bit"] < 7.5


def test_quantization_view_of_one_channel(conv2: torch.Tensor) -> None:
    view = quantization_view(conv2, bits=3, scheme="symmetric", granularity="channel", channel=5)
    levels = np.array(view["levels"])
    assert len(levels) == 7 and np.allclose(levels, -levels[::-1])
    step = levels[1] - levels[0]
    assert view["step"] == pytest.approx(step)
    assert view["max_error"] <= step / 2 + 1e-7
    assert sum(view["error_histogram"]["counts"]) == sum(view["weight_histogram"]["counts"]) == 16 * 9
    assert len(view["error_histogram"]["edges"]) == len(view["error_histogram"]["counts"]) + 1
    with pytest.raises(CompressError, match="channel 32 is out of range; the weight has 32 output channels"):
        quantization_view(conv2, bits=3, channel=32)


def test_non_uniform_schemes_against_uniform(conv2: torch.Tensor) -> None:
    rows = {row["scheme"]: row for row in scheme_comparison(conv2, bits=3)}
    assert list(rows) == ["symmetric", "asymmetric", "pow2", "kmeans"]
    assert all(len(row["levels"]) <= 8 for row in rows.values())
    assert rows["kmeans"]["sqnr_db"] > rows["symmetric"]["sqnr_db"]  # levels placed where the weights are


def test_binary_and_ternary_are_the_extremes(conv2: torch.Tensor) -> None:
    mean_abs = float(conv2.abs().mean())
    assert torch.unique(binarize(conv2)).tolist() == pytest.approx([-mean_abs, mean_abs])
    assert len(torch.unique(ternarize(conv2))) == 3
    extreme = extreme_quantization(conv2)
    two_bit = quantization_view(conv2, bits=2, granularity="tensor")  # also 3 levels, but at 0 and +-absmax
    assert len(two_bit["levels"]) == len(extreme["ternary"]["levels"]) == 3 and extreme["ternary"]["levels"][1] == 0.0
    assert extreme["binary"]["sqnr_db"] < extreme["ternary"]["sqnr_db"]
    assert extreme["ternary"]["sqnr_db"] > two_bit["sqnr_db"] + 3
    assert extreme["binary"]["zero_fraction"] == 0 and 0.2 < extreme["ternary"]["zero_fraction"] < 0.6
    with pytest.raises(CompressError, match=r"bits \[2\] is not allowed; give at least two bit widths"):
        sqnr_by_bits(conv2, bits=(2,))


@pytest.mark.parametrize(
    ("kind", "ratio", "zeros"), [("unstructured", 0.7, 3226), ("2:4", 0.0, 2304), ("structured", 0.25, 8 * 144)]
)
def test_pruning_masks_have_the_right_zero_counts(conv2: torch.Tensor, kind: str, ratio: float, zeros: int) -> None:
    view = pruning_mask_2d(conv2, kind, ratio)
    mask = np.array(view["mask"])
    assert view["shape"] == [32, 144] and mask.shape == (32, 144)
    assert view["zeros"] == int((mask == 0).sum()) == zeros and view["kept"] == 32 * 144 - zeros
    if kind == "2:4":
        assert np.all(mask.reshape(32, -1, 4).sum(axis=2) == 2)
    if kind == "structured":
        assert sorted(set(mask.sum(axis=1).tolist())) == [0, 144]


def test_pruning_mask_refuses_a_pattern_that_does_not_fit(cnn: ModelHandle) -> None:
    with pytest.raises(CompressError, match=r"2:4 pruning of a \(16, 9\) matrix: .*not divisible by m=4"):
        pruning_mask_2d(layer_weight(cnn, "conv1"), "2:4")


def test_low_rank_profile_and_break_even(cnn: ModelHandle) -> None:
    profile = low_rank_profile(layer_weight(cnn, "fc1"))  # 64 x 256
    assert profile["dense_params"] == 64 * 256
    assert profile["break_even_rank"] == 51  # 51 * 320 = 16320 < 16384 <= 52 * 320
    assert profile["params"][50] < profile["dense_params"] <= profile["params"][51]
    assert profile["ranks"] == list(range(1, 65))
    errors = np.array(profile["relative_error"])
    assert np.all(np.diff(errors) <= 1e-12) and errors[-1] < 1e-6
    values = np.array(profile["singular_values"])
    assert errors[0] == pytest.approx(np.sqrt(1 - values[0] ** 2 / np.sum(values**2)), rel=1e-6)


def test_calibration_ranges_are_ordered(cnn: ModelHandle) -> None:
    activations = layer_input_activations(cnn, "fc1", max_samples=128)
    assert activations.shape == (128 * 256,) and activations.min() >= 0  # after a ReLU
    result = calibration_ranges(activations, bits=8)
    methods = {row["method"]: row for row in result["methods"]}
    assert list(methods) == ["minmax", "percentile 99.9", "percentile 99.99", "entropy"]
    assert methods["minmax"]["threshold"] == pytest.approx(float(activations.max()))
    assert (
        methods["percentile 99.9"]["threshold"]
        <= methods["percentile 99.99"]["threshold"]
        <= methods["minmax"]["threshold"]
    )
    assert 0 < methods["entropy"]["threshold"] <= methods["minmax"]["threshold"]
    assert methods["minmax"]["clipped"] == 0 and 0 < methods["percentile 99.9"]["clipped"] <= 0.0011
    assert sum(result["histogram"]["counts"]) == result["samples"] == len(activations)


def test_entropy_calibration_clips_a_long_tail() -> None:
    values = np.random.default_rng(0).laplace(size=200_000)
    threshold = entropy_threshold(values, bits=4)
    assert threshold < 0.5 * np.abs(values).max()
    at_minmax, at_entropy = (
        row["sqnr_db"]
        for row in calibration_ranges(values, bits=4)["methods"]
        if row["method"] in ("minmax", "entropy")
    )
    assert at_entropy > at_minmax


def test_distillation_probabilities_sum_to_one_and_flatten_with_temperature(cnn: ModelHandle) -> None:
    student = apply_plan(cnn, Plan.from_text("{version: 1, default: {bits: 2}}"))
    views = [distillation_view(cnn, student, sample=3, temperature=t) for t in (1.0, 4.0, 16.0)]
    for view in views:
        assert sum(view["teacher"]) == pytest.approx(1.0) and sum(view["student"]) == pytest.approx(1.0)
        assert len(view["teacher"]) == 10 and view["label"] == int(cnn.data.labels[3])
        p, q = np.array(view["teacher"]), np.array(view["student"])
        assert view["loss_term"] == pytest.approx(view["temperature"] ** 2 * np.sum(p * np.log(p / q)), rel=1e-4)
    assert views[0]["teacher_entropy"] < views[1]["teacher_entropy"] < views[2]["teacher_entropy"]
    assert max(views[0]["teacher"]) > max(views[1]["teacher"]) > max(views[2]["teacher"])
    assert softened_probabilities(np.array([2.0, 0.0]), 1e6) == pytest.approx([0.5, 0.5])
    with pytest.raises(CompressError, match="temperature 0 is not allowed"):
        softened_probabilities(np.zeros(3), 0)


def test_the_learn_and_layers_pages_quantize_through_one_view(conv2: torch.Tensor) -> None:
    from explorer_ui import layer_data

    learn = quantization_view(conv2, bits=4, scheme="asymmetric", granularity="channel", channel=3)
    layers = layer_data.quantization_view(conv2.numpy(), 0, 4, "asymmetric", "channel", 3)
    assert learn["levels"] == layers["levels"].tolist() and learn["sqnr_db"] == layers["sqnr_db"]
    assert layers["scope"] == "output channel 3" and len(layers["values"]) == 16 * 9
    assert len(layers["errors"]) == conv2.numel()  # the Layers page's errors cover the whole weight
    whole = layer_data.quantization_view(conv2.numpy(), 0, 4, "asymmetric", "tensor", 3)
    assert whole["scope"] == "whole tensor" and len(whole["values"]) == conv2.numel()
    with pytest.raises(CompressError, match="bits=16 is not allowed with scheme=.kmeans."):
        layer_data.quantization_view(conv2.numpy(), 0, 16, "kmeans", "tensor", 0)


# ---------------------------------------------------------------- distillation on any output shape


class _Steps(nn.Module):
    """[N, 8] -> [N, STEPS, CLASSES] logits: a sequence model with more classes than the demo shows."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(8, STEPS * CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x).reshape(len(x), STEPS, CLASSES) * 3


STEPS, CLASSES = 6, 300


@pytest.fixture(scope="module")
def sequence() -> tuple[ModelHandle, ModelHandle]:
    """A sequence teacher with per-step labels (negative: padding) and a student with noisy weights."""
    torch.manual_seed(0)
    spec = InputSpec((8,))
    data = generated_data([spec])
    labels = np.tile(np.arange(STEPS) * 40, (len(data), 1))
    labels[:, -1] = -1
    teacher = ModelHandle(
        "steps", "torch", _Steps().eval(), (spec,), EvalData(data.inputs, labels, "test"), "sample", "sequence"
    )
    noisy = copy.deepcopy(teacher.model)
    with torch.no_grad():
        noisy.fc.weight.add_(0.3 * torch.randn_like(noisy.fc.weight))
    return teacher, teacher.replace(model=noisy)


def test_distillation_of_a_sequence_is_over_the_classes_of_one_step(sequence) -> None:
    teacher, student = sequence
    assert distillation_positions(teacher) == (STEPS,)
    logits = teacher.run(teacher.data.inputs[2:3])[0]  # [STEPS, CLASSES]
    view = distillation_view(teacher, student, sample=2, temperature=2.0, position=4)
    assert view["position"] == [4] and view["positions"] == [STEPS] and view["class_count"] == CLASSES
    assert view["max_entropy"] == pytest.approx(math.log(CLASSES))
    assert 0 < view["teacher_entropy"] <= view["max_entropy"] and 0 < view["student_entropy"] <= view["max_entropy"]
    p = softened_probabilities(logits[4], 2.0)  # the step's own distribution, nothing of the other steps
    assert view["teacher_entropy"] == pytest.approx(-np.sum(p * np.log(p)), rel=1e-6)
    # the top 20 classes by the teacher's probability, most probable first, and what the rest hold
    assert view["top"] == TOP_CLASSES
    assert view["classes"] == [*np.argsort(-p)[:TOP_CLASSES].tolist(), 160]  # and the step's label, not among them
    assert view["label"] == 160
    assert view["teacher"] == pytest.approx(p[view["classes"]].tolist())
    assert view["teacher_rest"] == pytest.approx(1 - sum(view["teacher"]))
    assert view["steps"] == logits.argmax(axis=1).tolist()
    # the loss term is the distillation term of the recover loss on this step's [1, C] logits
    q = softened_probabilities(student.run(student.data.inputs[2:3])[0, 4], 2.0)
    assert view["loss_term"] == pytest.approx(4.0 * np.sum(p * np.log(p / q)), rel=1e-5)
    other = distillation_view(teacher, student, sample=2, temperature=2.0, position=1)
    assert other["teacher_entropy"] != view["teacher_entropy"] and other["label"] == 40
    assert distillation_view(teacher, student, sample=2, position=5)["label"] is None  # padding


def test_the_label_is_shown_even_outside_the_top_classes() -> None:
    teacher = np.zeros((1, 2, 50))
    teacher[0, 1, :30] = np.linspace(10, 1, 30)  # class 49 is far below the top 5
    view = distillation_of_logits(teacher, teacher, "sequence", 1.0, position=1, top_k=5, label=49)
    assert view["classes"] == [0, 1, 2, 3, 4, 49] and view["top"] == 5 and view["loss_term"] == pytest.approx(0)
    uniform = distillation_of_logits(teacher, teacher, "sequence", 1.0, position=0, top_k=5)
    assert uniform["teacher_entropy"] == pytest.approx(math.log(50)) == uniform["max_entropy"]


def test_distillation_of_a_dense_map_is_over_the_classes_of_one_pixel() -> None:
    rng = np.random.default_rng(0)
    teacher, student = rng.normal(size=(1, 5, 4, 3)), rng.normal(size=(1, 5, 4, 3))
    assert class_positions("dense", teacher.shape) == (4, 3)
    view = distillation_of_logits(teacher, student, "dense", 1.0, position=(2, 1))
    assert view["classes"] == [0, 1, 2, 3, 4] and view["position"] == [2, 1]
    assert view["teacher"] == pytest.approx(softened_probabilities(teacher[0, :, 2, 1], 1.0).tolist())
    with pytest.raises(CompressError, match="column 3 is out of range; the output has 3 columns"):
        distillation_of_logits(teacher, student, "dense", 1.0, position=(0, 3))
    with pytest.raises(CompressError, match=r"position \[1\] does not fit a dense output: give row and column"):
        distillation_of_logits(teacher, student, "dense", 1.0, position=1)


def test_thousands_of_classes_show_the_top_ones() -> None:
    logits = np.random.default_rng(1).normal(size=(1, 5000)) * 4
    view = distillation_of_logits(logits, logits + 0.1, "classification", 4.0)
    assert len(view["classes"]) == TOP_CLASSES and view["classes"][0] == int(logits.argmax())
    assert view["teacher_entropy"] <= math.log(5000)
    assert class_positions("classification", (1, 10)) == ()


def test_distillation_refuses_outputs_without_class_probabilities(sequence) -> None:
    teacher, student = sequence
    embedding = teacher.replace(task="embedding")
    with pytest.raises(CompressError, match="'steps' is an embedding model; the distillation demo needs class"):
        distillation_view(embedding, student)
    with pytest.raises(CompressError, match=r"step 6 is out of range; the output has 6 steps"):
        distillation_view(teacher, student, position=6)
    with pytest.raises(CompressError, match=r"a sequence output has 3 axes; this one has shape \[1, 10\]"):
        class_positions("sequence", (1, 10))


@pytest.mark.ddddocr
def test_every_step_of_a_real_ocr_model_has_an_entropy_below_ln_c() -> None:
    """ddddocr's OCR model, [N, 20, 8210] logits: the issue's 351.94 nats treated 20 x 8210 values as one distribution."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.find_spec("ddddocr")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("ddddocr is not installed (pip install --no-deps ddddocr==1.6.1)")
    ocr = load_model(Path(list(spec.submodule_search_locations)[0]) / "common.onnx", inputs={"input1": (1, 64, 160)})
    assert ocr.task == "sequence" and distillation_positions(ocr) == (20,)
    logits = ocr.run(ocr.data.inputs[0:1])
    for step in range(20):
        view = distillation_of_logits(logits, logits + 0.5 * np.sin(np.arange(8210)), "sequence", 4.0, step)
        assert view["max_entropy"] == pytest.approx(math.log(8210))
        assert 0 < view["teacher_entropy"] <= view["max_entropy"] and 0 < view["student_entropy"] <= view["max_entropy"]
        assert len(view["classes"]) == TOP_CLASSES and view["loss_term"] > 0
