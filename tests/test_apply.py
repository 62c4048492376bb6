"""apply_plan on the samples and on ONNX: never mutates, exact counts, real shrinkage, clear refusals."""

from __future__ import annotations

import hashlib

import numpy as np
import onnx
import pytest
import torch

from compress_core import CompressError, layer_inventory, load_model
from compress_core.analysis.metrics import evaluate
from compress_core.ort.export import to_onnx
from compress_core.plan import LayerConfig, Plan, PruneConfig
from compress_core.transform.apply import apply_plan


@pytest.fixture(scope="module")
def cnn():
    return load_model("digits_cnn")


@pytest.fixture(scope="module")
def cnn_onnx(cnn, tmp_path_factory):
    path = tmp_path_factory.mktemp("onnx") / "cnn.onnx"
    onnx.save(to_onnx(cnn), path)
    return load_model(path).replace(data=cnn.data)


def _checksum(model) -> str:
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().numpy().tobytes())
    return digest.hexdigest()


def _accuracy(handle) -> float:
    return 100 * float((handle.run(handle.data.inputs).argmax(1) == handle.data.labels).mean())


def test_original_is_never_mutated(cnn):
    before = _checksum(cnn.model)
    plan = Plan(
        default=LayerConfig(bits=3, prune=PruneConfig(0.5)),
        layers={"fc1": LayerConfig(rank=8), "conv2": LayerConfig(prune=PruneConfig(0.5, "structured"))},
    )
    compressed = apply_plan(cnn, plan)
    assert _checksum(cnn.model) == before
    assert compressed.model is not cnn.model and compressed.compression is not None


def test_uniform_8_bit_per_channel_costs_at_most_half_a_point(cnn):
    compressed = apply_plan(cnn, Plan(default=LayerConfig(bits=8)))
    assert _accuracy(cnn) - _accuracy(compressed) <= 0.5
    for weight_name, quantized in compressed.compression.quantized.items():
        weight = dict(compressed.model.named_parameters())[weight_name].detach()
        for channel in range(weight.shape[0]):
            assert torch.isin(weight[channel], quantized.levels(channel)).all()


def test_unstructured_pruning_zero_count_and_masks(cnn):
    compressed = apply_plan(cnn, Plan(layers={"conv3": LayerConfig(bits=4, prune=PruneConfig(0.7))}))
    weight = compressed.model.conv3.weight.detach()
    assert int((weight == 0).sum()) == round(0.7 * weight.numel())
    assert torch.equal(compressed.compression.masks["conv3.weight"], weight != 0)


def test_structured_pruning_shrinks_the_exported_onnx(cnn):
    original = to_onnx(cnn)
    compressed = apply_plan(cnn, Plan(default=LayerConfig(prune=PruneConfig(0.5, "structured"))))
    exported = to_onnx(compressed)
    count = lambda model: sum(int(np.prod(init.dims)) for init in model.graph.initializer)  # noqa: E731
    assert count(exported) <= 0.6 * count(original)
    macs = lambda handle: sum(layer.macs for layer in layer_inventory(handle))  # noqa: E731
    assert macs(compressed) <= 0.6 * macs(cnn)
    assert compressed.model.head.out_features == 10
    assert any("head: output channels left alone" in note for note in compressed.compression.notes)
    assert compressed.run(cnn.data.inputs[:4]).shape == (4, 10)


def test_structured_pruning_through_residual_adds():
    resnet = load_model("digits_resnet")
    compressed = apply_plan(resnet, Plan(layers={"re:layer.*conv1": LayerConfig(prune=PruneConfig(0.5, "structured"))}))
    assert compressed.model.layer1[0].conv1.out_channels == resnet.model.layer1[0].conv1.out_channels // 2
    assert compressed.run(resnet.data.inputs[:2]).shape == (2, 10)


def test_half_rank_on_linear_layers(cnn):
    compressed = apply_plan(cnn, Plan(layers={"fc1": LayerConfig(rank=0.5)}))
    first, second = compressed.model.fc1
    assert first.weight.shape == (32, 256) and second.weight.shape == (64, 32)
    assert (32 * 256 + 64 * 32) / (64 * 256) == pytest.approx(0.625)
    names = [layer.name for layer in layer_inventory(compressed)]
    assert names == ["conv1", "conv2", "conv3", "fc1.0", "fc1.1", "head"]


def test_full_rank_reproduces_the_layer(cnn):
    compressed = apply_plan(cnn, Plan(layers={"conv2": LayerConfig(rank=1.0), "fc1": LayerConfig(rank=64)}))
    np.testing.assert_allclose(compressed.run(cnn.data.inputs[:32]), cnn.run(cnn.data.inputs[:32]), atol=1e-3)
    assert compressed.compression.layer_sqnr["fc1"] > 60


def test_reloaded_recipe_gives_identical_weights(cnn, tmp_path):
    plan = Plan.from_text(
        "version: 1\ndefault: {bits: 5, scheme: kmeans}\nlayers: {fc1: {rank: 0.5, prune: {kind: '2:4'}}, conv3: {bits: 3, scheme: pow2}}"
    )
    path = plan.save(tmp_path / "r.yaml")
    first, second = apply_plan(cnn, plan), apply_plan(cnn, Plan.load(path))
    assert _checksum(first.model) == _checksum(second.model)


@pytest.mark.parametrize(
    "plan,message",
    [
        (
            Plan(layers={"fc1": LayerConfig(rank=65)}),
            r"layer 'fc1': rank=65 is not allowed; an int rank must be in 1..64",
        ),
        (
            Plan(layers={"conv1": LayerConfig(prune=PruneConfig(0.99, "structured"))}),
            r"layer 'conv1': prune ratio 0.99 would remove all 16 output channels",
        ),
        (
            Plan(layers={"conv1": LayerConfig(prune=PruneConfig(kind="2:4"))}),
            r"layer 'conv1': 2:4 pruning needs the input size \(9\) to be a multiple of 4",
        ),
        (Plan(layers={"nope": LayerConfig(bits=8)}), r"layer 'nope' is not a compressible layer"),
    ],
)
def test_refusals(cnn, plan, message):
    with pytest.raises(CompressError, match=message):
        apply_plan(cnn, plan)


def test_lstm_weights_refuse_low_rank_but_take_bits():
    lstm = load_model("digits_lstm")
    with pytest.raises(CompressError, match=r"layer 'lstm.weight_hh_l0': low-rank is not supported for LSTM weights"):
        apply_plan(lstm, Plan(layers={"lstm.weight_hh_l0": LayerConfig(rank=0.5)}))
    compressed = apply_plan(lstm, Plan(default=LayerConfig(bits=8)))
    assert _accuracy(lstm) - _accuracy(compressed) <= 1.0


def test_onnx_plan_matches_torch_plan(cnn, cnn_onnx):
    plan = Plan(default=LayerConfig(bits=6, prune=PruneConfig(0.3)))
    torch_metrics = evaluate(cnn, apply_plan(cnn, plan), with_zip=False)["compressed"]
    onnx_compressed = apply_plan(cnn_onnx, plan)
    onnx_metrics = evaluate(cnn_onnx, onnx_compressed, with_zip=False)["compressed"]
    assert abs(torch_metrics["accuracy"] - onnx_metrics["accuracy"]) <= 0.02
    assert len(onnx_compressed.compression.masks) == 5
    assert onnx_metrics["nonzero_params"] < 0.75 * onnx_metrics["params"]


def test_onnx_low_rank_splits_nodes(cnn_onnx):
    names = [layer.name for layer in layer_inventory(cnn_onnx)]
    compressed = apply_plan(cnn_onnx, Plan(layers={names[1]: LayerConfig(rank=1.0), names[3]: LayerConfig(rank=1.0)}))
    layers = layer_inventory(compressed)
    assert len(layers) == 7
    assert [layer.type for layer in layers].count("Gemm") == 3
    np.testing.assert_allclose(
        compressed.run(cnn_onnx.data.inputs[:16]), cnn_onnx.run(cnn_onnx.data.inputs[:16]), atol=1e-3
    )


def test_onnx_refuses_structured_pruning(cnn_onnx):
    name = layer_inventory(cnn_onnx)[0].name
    with pytest.raises(CompressError, match=r"structured pruning is not supported for ONNX inputs: removing channels"):
        apply_plan(cnn_onnx, Plan(layers={name: LayerConfig(prune=PruneConfig(0.5, "structured"))}))


def test_structured_pruning_through_attention_reshapes_is_refused_clearly():
    transformer = load_model("digits_transformer")
    with pytest.raises(
        CompressError,
        match=r"structured pruning of blocks.0.attn.q_proj broke the model's forward pass .*unstructured or N:M",
    ):
        apply_plan(
            transformer, Plan(layers={"blocks.0.attn.q_proj": LayerConfig(prune=PruneConfig(0.5, "structured"))})
        )
    compressed = apply_plan(
        transformer, Plan(layers={"blocks.0.mlp.fc1": LayerConfig(prune=PruneConfig(0.5, "structured"))})
    )
    assert (
        compressed.model.blocks[0].mlp.fc1.out_features == 32 and compressed.model.blocks[0].mlp.fc2.in_features == 32
    )


def test_a_recipe_for_the_torch_model_applies_to_its_onnx_export(cnn, cnn_onnx):
    from explorer_ui.tuning import load_recipe

    recipe = "version: 1\ndefault: {bits: 8}\nlayers:\n  conv1: null\n  conv2: {bits: 4}\n"
    torch_sqnr = apply_plan(cnn, Plan.from_text(recipe)).compression.layer_sqnr
    onnx_sqnr = apply_plan(cnn_onnx, Plan.from_text(recipe)).compression.layer_sqnr
    onnx_names = {layer.name: layer.name.split("/")[1] for layer in layer_inventory(cnn_onnx)}  # /conv2/Conv -> conv2
    assert "conv1" not in torch_sqnr and len(onnx_sqnr) == len(torch_sqnr) == len(onnx_names) - 1
    for name, sqnr in onnx_sqnr.items():  # the same bits per layer: the same weight SQNR (BatchNorm aside)
        assert sqnr == pytest.approx(torch_sqnr[onnx_names[name]], abs=1.0), name
    table = load_recipe(recipe.encode(), "recipe.yaml", cnn_onnx, layer_inventory(cnn_onnx)).layers
    assert "/conv1/Conv" not in table and table["/conv2/Conv"].bits == 4 and table["/conv3/Conv"].bits == 8
