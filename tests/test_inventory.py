"""Layer inventory: hand-computed MACs and statistics, for torch, TorchScript and ONNX alike."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from compress_core import layer_inventory, load_model, total_params
from compress_core.models.handle import EvalData, Inputs, InputSpec, ModelHandle
from compress_core.models.inventory import weight_statistics
from compress_core.ort.export import to_onnx


class Small(nn.Module):
    """Conv2d 2->4 (3x3, pad 1) on 5x5, then Linear 100->3."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 4, 3, padding=1)
        self.fc = nn.Linear(100, 3)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).flatten(1))


def _handle(model, shape) -> ModelHandle:
    spec = InputSpec(shape)
    return ModelHandle(
        "small", "torch", model.eval(), (spec,), EvalData(Inputs.single(spec.example(4)), None, "generated"), "sample"
    )


def test_hand_computed_macs_and_params():
    torch.manual_seed(0)
    handle = _handle(Small(), (2, 5, 5))
    conv, fc = layer_inventory(handle)
    assert (conv.name, conv.type, conv.weight_shape) == ("conv", "Conv2d", (4, 2, 3, 3))
    assert conv.macs == 4 * 5 * 5 * (2 * 3 * 3)  # output elements x (in channels x kernel)
    assert conv.params == 4 * 2 * 9 + 4
    assert (fc.name, fc.type, fc.macs, fc.params) == ("fc", "Linear", 100 * 3, 303)
    scripted = _handle(torch.jit.trace(handle.model, torch.zeros(1, 2, 5, 5)), (2, 5, 5))
    assert [(layer.name, layer.macs) for layer in layer_inventory(scripted)] == [("conv", 1800), ("fc", 300)]


def test_onnx_macs_equal_torch_macs():
    handle = _handle(Small(), (2, 5, 5))
    onnx_handle = handle.replace(backend="onnx", model=to_onnx(handle), kind="onnx")
    assert [layer.macs for layer in layer_inventory(onnx_handle)] == [1800, 300]
    assert total_params(onnx_handle) == total_params(handle) == 4 * 2 * 9 + 4 + 303


def test_statistics_of_a_known_weight():
    weight = np.array([[1.0, -1.0, 0.0, 0.0], [2.0, 2.0, 2.0, -6.0]], dtype=np.float32)
    stats = weight_statistics(weight, out_axis=0)
    assert stats["min"] == -6.0 and stats["max"] == 2.0
    assert stats["mean"] == pytest.approx(0.0)
    assert stats["abs_mean"] == pytest.approx(14 / 8)
    assert stats["sparsity"] == pytest.approx(2 / 8)
    assert stats["channel_min"] == [-1.0, -6.0] and stats["channel_max"] == [1.0, 2.0]
    centred = weight.ravel().astype(np.float64)
    assert stats["kurtosis"] == pytest.approx(((centred**4).mean() / centred.std() ** 4) - 3)
    transposed = weight_statistics(weight.T.copy(), out_axis=1)
    assert transposed["channel_min"] == [-1.0, -6.0]


@pytest.mark.parametrize(
    "name,count,types",
    [
        ("digits_cnn", 5, {"Conv2d": 3, "Linear": 2}),
        ("digits_mlp", 4, {"Linear": 4}),
        ("digits_transformer", 14, {"Linear": 14}),
        ("digits_lstm", 3, {"LSTM": 2, "Linear": 1}),
        ("digits_resnet", 16, {"Conv2d": 15, "Linear": 1}),
    ],
)
def test_sample_inventories(name, count, types):
    handle = load_model(name)
    layers = layer_inventory(handle)
    assert len(layers) == count
    assert {t: sum(layer.type == t for layer in layers) for t in types} == types
    assert all(layer.macs > 0 for layer in layers)
    weights = sum(int(np.prod(layer.weight_shape)) for layer in layers)
    assert weights <= total_params(handle) == sum(p.numel() for p in handle.model.parameters())


def test_lstm_macs_count_every_time_step():
    layers = {layer.name: layer for layer in layer_inventory(load_model("digits_lstm"))}
    assert layers["lstm.weight_ih_l0"].macs == 8 * 256 * 8
    assert layers["lstm.weight_hh_l0"].macs == 8 * 256 * 64


def test_onnx_file_of_resnet_matches(tmp_path):
    handle = load_model("digits_resnet")
    onnx.save(to_onnx(handle, fold_batchnorm=False), tmp_path / "r.onnx")
    exported = load_model(tmp_path / "r.onnx")
    assert [layer.macs for layer in layer_inventory(exported)] == [layer.macs for layer in layer_inventory(handle)]
    assert total_params(exported) == total_params(handle)
