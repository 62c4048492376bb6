"""Wrong results found while reading the code (issue 11, part 3): each test failed on the old code."""

from __future__ import annotations

import math
import warnings

import numpy as np
import onnxruntime as ort
import pytest
import torch
from torch import nn

from compress_core import CompressError, layer_inventory, load_model
from compress_core.analysis.hessian import hessian_traces
from compress_core.analysis.metrics import evaluate, output_fidelity
from compress_core.analysis.recover import finetune
from compress_core.analysis.sensitivity import run_sensitivity
from compress_core.analysis.sweep import Sweep
from compress_core.models.evaldata import generated_data
from compress_core.models.handle import InputSpec, ModelHandle
from compress_core.ops.sqnr import sqnr_db
from compress_core.ort.export import to_onnx
from compress_core.plan import Plan
from compress_core.plan.layer_config import LayerConfig, PruneConfig
from compress_core.transform.apply import apply_plan
from explorer_ui import tuning

FIXED_BATCH = 4


@pytest.fixture(scope="module")
def cnn():
    return load_model("digits_cnn")


# ---------------------------------------------------------------- the Tune table's rank column


def test_the_tune_table_keeps_a_full_rank_fraction_and_an_integer_rank_apart(cnn):
    layers = layer_inventory(cnn)
    plan = Plan(layers={"conv2": LayerConfig(rank=1.0), "fc1": LayerConfig(rank=8), "head": LayerConfig(rank=0.25)})
    back = tuning.rows_plan(tuning.plan_rows(plan, layers))
    assert back == plan
    assert isinstance(back.layers["conv2"].rank, float) and isinstance(back.layers["fc1"].rank, int)


def test_the_tune_table_reads_typed_ranks_by_their_form_and_refuses_a_fraction_above_one(cnn):
    rows = tuning.plan_rows(Plan(), layer_inventory(cnn))
    typed = tuning.rows_plan(tuning.edit_rows(rows, {0: {"rank": "1.0"}, 1: {"rank": "1"}, 2: {"rank": " "}}))
    assert typed.layers == {"conv1": LayerConfig(rank=1.0), "conv2": LayerConfig(rank=1)}
    with pytest.raises(
        CompressError, match=r"^layer 'conv1': rank 2\.7 is not allowed; a fraction of full rank must be in \(0, 1\]$"
    ):
        tuning.rows_plan(tuning.edit_rows(rows, {0: {"rank": "2.7"}}))
    with pytest.raises(
        CompressError, match=r"^layer 'fc1': rank 'half' is not allowed; leave it empty, or write a rank"
    ):
        tuning.rows_plan(tuning.edit_rows(rows, {3: {"rank": "half"}}))


# ---------------------------------------------------------------- nonzero_params


def test_nonzero_params_counts_weights_that_quantization_rounds_to_zero():
    mlp = load_model("digits_mlp")
    compressed = apply_plan(mlp, Plan(default=LayerConfig(bits=2)))  # no pruning at all
    metrics = evaluate(mlp, compressed, with_zip=False)["compressed"]
    stored_nonzero = sum(int((p != 0).sum()) for p in compressed.model.parameters())
    assert stored_nonzero < metrics["params"]  # 2-bit grids hold a zero level: many weights land on it
    assert metrics["nonzero_params"] == stored_nonzero


# ---------------------------------------------------------------- SQNR


def test_sqnr_of_an_all_zero_reference_is_defined_and_the_same_for_weights_and_outputs():
    zeros, ones = np.zeros((2, 3)), np.ones((2, 3))
    assert output_fidelity(zeros, ones, None, "embedding")["sqnr_db"] == -math.inf
    assert output_fidelity(zeros, zeros, None, "embedding")["sqnr_db"] == math.inf
    assert sqnr_db(torch.zeros(2, 3), torch.ones(2, 3)) == -math.inf
    reference, noisy = np.random.default_rng(0).standard_normal((2, 2, 5))
    expected = sqnr_db(torch.from_numpy(reference), torch.from_numpy(noisy))
    assert output_fidelity(reference, noisy, None, "embedding")["sqnr_db"] == pytest.approx(expected)


# ---------------------------------------------------------------- a .pt2 program with a static batch


def _small_cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 8 * 8, 10)).eval()


@pytest.fixture(scope="module")
def programs(tmp_path_factory):
    """The same model as a .pt2 with a static batch of 4, and with a dynamic batch (the reference)."""
    folder = tmp_path_factory.mktemp("pt2")
    model, example = _small_cnn(), torch.randn(FIXED_BATCH, 1, 8, 8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.export.save(torch.export.export(model, (example,)), folder / "fixed.pt2")
        dynamic = torch.export.export(model, (example,), dynamic_shapes=({0: torch.export.Dim("batch")},))
        torch.export.save(dynamic, folder / "dynamic.pt2")
    # the same data for both: generated data shrinks when a machine under load times the first run as slow
    data = folder / "data.npz"
    np.savez(data, inputs=np.random.default_rng(0).standard_normal((64, 1, 8, 8)).astype(np.float32))
    fixed, free = load_model(folder / "fixed.pt2", data=data), load_model(folder / "dynamic.pt2", data=data)
    assert (fixed.fixed_batch, free.fixed_batch) == (FIXED_BATCH, None)
    return fixed, free


@pytest.fixture(scope="module")
def layers(programs):
    """The static-batch program's own inventory (its probe batch is padded to the program's batch)."""
    return layer_inventory(programs[0])


def test_the_inventory_of_a_static_batch_program_matches_its_dynamic_twin(programs, layers):
    expected = layer_inventory(programs[1])
    assert [(layer.name, layer.weight_shape, layer.macs) for layer in layers] == [
        (layer.name, layer.weight_shape, layer.macs) for layer in expected
    ]
    assert all(layer.macs > 0 for layer in layers)  # MACs per sample, not per padded batch


def test_a_static_batch_program_runs_any_number_of_samples(programs):
    fixed, free = programs
    inputs = fixed.data.inputs[:7]  # one full batch and a padded one
    np.testing.assert_allclose(fixed.run(inputs, batch_size=256), free.run(inputs), atol=1e-5)


def test_onnx_export_keeps_a_static_batch(programs):
    fixed, _ = programs
    model = to_onnx(fixed)
    assert [dim.dim_value for dim in model.graph.input[0].type.tensor_type.shape.dim] == [FIXED_BATCH, 1, 8, 8]
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    inputs = fixed.data.inputs[:FIXED_BATCH]
    np.testing.assert_allclose(session.run(None, inputs.feed())[0], fixed.run(inputs), atol=1e-5)


def test_sensitivity_and_hessian_batch_a_static_batch_program(programs, layers):
    fixed, free = programs
    sweep = Sweep(kinds=("bits", "prune"), bits=(4,), prune=(0.5,))
    got = run_sensitivity(fixed, sweep, cache=False, batch_size=5)  # 5 is not the program's batch
    expected = run_sensitivity(free, sweep, cache=False)
    assert [(row.layer, row.kind) for row in got.rows] == [(row.layer, row.kind) for row in expected.rows]
    assert [row.metric for row in got.rows] == pytest.approx([row.metric for row in expected.rows])
    assert hessian_traces(fixed, layers, samples=2, max_inputs=10) == pytest.approx(
        hessian_traces(free, layers, samples=2, max_inputs=10), rel=1e-4
    )


def test_recovery_trains_a_static_batch_program(programs, layers):
    fixed, _ = programs
    compressed = apply_plan(fixed, Plan(default=LayerConfig(bits=4)), layers)
    tuned, history = finetune(fixed, compressed, epochs=1, batch_size=3)
    assert len(history) == 1 and math.isfinite(history[0])
    assert f"in batches of {FIXED_BATCH}" in " ".join(tuned.compression.notes)
    assert tuned.run(fixed.data.inputs[:5]).shape == (5, 10)


# ---------------------------------------------------------------- Conv3d and ConvTranspose2d


class _VolumeNet(nn.Module):
    """Conv3d -> mean over depth -> ConvTranspose2d (weight [in, out / groups, k, k]) -> Linear."""

    def __init__(self, groups: int = 1) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv3d = nn.Conv3d(2, 8, 3, padding=1)
        self.up = nn.ConvTranspose2d(8, 12, 3, groups=groups)
        self.head = nn.Linear(12, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv3d(x)).mean(dim=2)
        x = torch.relu(self.up(x))
        return self.head(x.mean(dim=(2, 3)))


def _volume_handle(groups: int = 1) -> ModelHandle:
    spec = InputSpec((2, 4, 8, 8))
    return ModelHandle("volume", "torch", _VolumeNet(groups).eval(), (spec,), generated_data([spec]), kind="sample")


def test_the_inventory_gives_a_conv_transpose_its_output_axis():
    layers = {layer.name: layer for layer in layer_inventory(_volume_handle())}
    assert (layers["up"].type, layers["up"].out_axis, len(layers["up"].channel_max)) == ("ConvTranspose2d", 1, 12)
    assert (layers["conv3d"].type, layers["conv3d"].out_axis, len(layers["conv3d"].channel_max)) == ("Conv3d", 0, 8)


def test_conv_transpose_weights_are_quantized_and_n_m_pruned_per_output_channel():
    compressed = apply_plan(_volume_handle(), Plan(layers={"up": LayerConfig(bits=4, prune=PruneConfig(kind="2:4"))}))
    quantized = compressed.compression.quantized["up.weight"]
    assert quantized.axis == 1 and quantized.scale.numel() == 12  # one scale per output channel
    groups = compressed.compression.masks["up.weight"].movedim(1, 0).reshape(-1, 4)  # [out, in * k * k] in fours
    assert bool((groups.sum(dim=1) == 2).all())


@pytest.mark.parametrize("name,module,pruned", [("conv3d", "conv3d", 4), ("up", "up", 6)])
def test_structured_pruning_of_conv3d_and_conv_transpose_removes_output_channels(name, module, pruned):
    handle = _volume_handle()
    compressed = apply_plan(handle, Plan(layers={name: LayerConfig(prune=PruneConfig(0.5, "structured"))}))
    assert compressed.model.get_submodule(module).out_channels == pruned
    assert compressed.run(handle.data.inputs[:3]).shape == (3, 10)


def test_structured_pruning_refuses_a_grouped_conv_transpose():
    message = r"^layer 'up': structured pruning applies to Linear, Conv and ungrouped ConvTranspose layers, not ConvTranspose2d with groups=2"
    with pytest.raises(CompressError, match=message):
        apply_plan(_volume_handle(groups=2), Plan(layers={"up": LayerConfig(prune=PruneConfig(0.5, "structured"))}))


def test_low_rank_splits_a_conv3d_and_refuses_a_conv_transpose():
    handle = _volume_handle()
    compressed = apply_plan(handle, Plan(layers={"conv3d": LayerConfig(rank=0.5)}))
    assert tuple(compressed.model.conv3d[0].weight.shape) == (4, 2, 3, 3, 3)
    with pytest.raises(
        CompressError, match=r"^layer 'up': low-rank applies to Linear and Conv1d/2d/3d layers, not ConvTranspose2d$"
    ):
        apply_plan(handle, Plan(layers={"up": LayerConfig(rank=0.5)}))


# ---------------------------------------------------------------- N:M against an explicit ratio


def test_an_n_m_kind_refuses_a_ratio_it_does_not_prune():
    with pytest.raises(
        CompressError, match=r"^prune ratio 0\.3 conflicts with kind '2:4', which prunes 0\.5 \(1 - 2/4\)"
    ):
        PruneConfig(ratio=0.3, kind="2:4")
    assert PruneConfig(kind="1:4").ratio == PruneConfig(ratio=0.75, kind="1:4").ratio == 0.75
    assert PruneConfig(ratio=0.667, kind="1:3").ratio == pytest.approx(2 / 3)  # rounded as people write it


@pytest.mark.parametrize(
    "recipe,message",
    [
        (
            {"version": 1, "default": {"prune": {"kind": "1:2"}, "rank": 1}, "layers": {}},
            r"^layer 'fc1' \(weight 'fc1.1.weight' of shape \(128, 1\) after low-rank / structured pruning\): 1:2 pruning needs the input size \(1\) to be a multiple of 2$",
        ),
        (
            {
                "version": 1,
                "default": {"prune": {"kind": "1:2"}},
                "layers": {"fc3": {"prune": {"ratio": 0.78125, "kind": "structured"}}},
            },
            r"^layer 'head' \(weight 'head.weight' of shape \(10, 7\) after low-rank / structured pruning\): 1:2 pruning needs the input size \(7\) to be a multiple of 2$",
        ),
    ],
)
def test_n_m_pruning_checks_the_shape_that_low_rank_or_structured_pruning_left(recipe, message):
    with pytest.raises(CompressError, match=message):
        apply_plan(load_model("digits_mlp"), Plan.from_dict(recipe))


# ---------------------------------------------------------------- model outputs


class _NestedOutputs(nn.Module):
    """Returns ((logits, features), aux): the first leaf is the output everything measures."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> tuple[tuple[torch.Tensor, torch.Tensor], torch.Tensor]:
        logits = self.fc(x)
        return (logits, x), logits.sum(dim=1)


def test_a_model_with_nested_outputs_is_run_and_swept_on_its_first_leaf():
    # One unwrapping: ModelHandle.run took one level of tuple while the sensitivity sweep took every level.
    spec = InputSpec((4,))
    handle = ModelHandle(
        "nested", "torch", _NestedOutputs().eval(), (spec,), generated_data([spec], samples=16), kind="sample"
    )
    expected = handle.model.fc(torch.from_numpy(handle.data.inputs.first)).detach().numpy()
    np.testing.assert_allclose(handle.run(handle.data.inputs), expected, rtol=1e-6)
    table = run_sensitivity(handle, Sweep(bits=(8,), kinds=("bits",)), cache=False)
    assert [row.layer for row in table.rows] == ["fc"] and table.rows[0].drop == pytest.approx(0.0, abs=1.0)
