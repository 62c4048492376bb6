"""load_model: every format from files the tests create, and every bad input with its message."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import safetensors.torch
import torch
from torch import nn

from compress_core import CompressError, layer_inventory, load_model, save_torchscript, total_params
from compress_core.models.evaldata import MAX_DATA_BYTES_ENV, load_npz
from compress_core.models.inputs import InputSpec
from compress_core.ort.export import to_onnx

TRUST_REFUSAL = (
    r"loading it runs code stored in the file, so it is refused unless you say you trust it \(CLI: --trust-code"
)


@pytest.fixture(scope="module")
def cnn():
    return load_model("digits_cnn")


@pytest.fixture(scope="module")
def files(cnn, tmp_path_factory):
    folder = tmp_path_factory.mktemp("models")
    onnx.save(to_onnx(cnn, fold_batchnorm=False), folder / "cnn.onnx")
    save_torchscript(cnn, folder / "cnn.ts")
    torch.export.save(torch.export.export(cnn.model, (torch.zeros(1, 1, 8, 8),)), folder / "cnn.pt2")
    torch.save(cnn.model.state_dict(), folder / "cnn_state.pt")
    torch.save(cnn.model, folder / "cnn_full.pt")
    safetensors.torch.save_file(cnn.model.state_dict(), folder / "cnn.safetensors")
    return folder


def _summary(handle):
    layers = layer_inventory(handle)
    return len(layers), sum(int(np.prod(layer.weight_shape)) for layer in layers), total_params(handle)


def test_sample_has_its_test_split(cnn):
    assert cnn.backend == "torch"
    assert cnn.input_spec.shape == (1, 8, 8)
    assert cnn.data.inputs.first.shape == (450, 1, 8, 8)
    assert cnn.data.labels is not None and not cnn.data.generated


@pytest.mark.parametrize("filename,kind", [("cnn.onnx", "onnx"), ("cnn.ts", "torchscript"), ("cnn.pt2", "exported")])
def test_every_format_has_the_same_layers_and_parameters(cnn, files, filename, kind):
    handle = load_model(files / filename, trust_code=kind == "torchscript")
    assert handle.kind == kind
    assert handle.input_spec.shape == (1, 8, 8)
    assert handle.data.generated
    assert _summary(handle) == _summary(cnn) == (5, 40_208, sum(p.numel() for p in cnn.model.parameters()))
    outputs = handle.run(cnn.data.inputs[:16])
    np.testing.assert_allclose(outputs, cnn.run(cnn.data.inputs[:16]), atol=1e-4)


def test_state_dict_needs_and_uses_an_architecture(files):
    with pytest.raises(CompressError, match=r"cnn_state.pt: is a state_dict .*--architecture"):
        load_model(files / "cnn_state.pt")
    handle = load_model(files / "cnn_state.pt", architecture="digits_cnn")
    assert handle.kind == "state_dict" and handle.data.labels is not None
    with pytest.raises(CompressError, match=r"does not fit architecture 'digits_mlp'"):
        load_model(files / "cnn_state.pt", architecture="digits_mlp")
    with pytest.raises(CompressError, match=r"unknown architecture 'resnet50'"):
        load_model(files / "cnn_state.pt", architecture="resnet50")


def test_safetensors_is_a_state_dict(files):
    with pytest.raises(CompressError, match=r"cnn.safetensors: is a state_dict .*--architecture"):
        load_model(files / "cnn.safetensors")
    handle = load_model(files / "cnn.safetensors", architecture="digits_cnn")
    assert handle.kind == "state_dict" and len(layer_inventory(handle)) == 5


def test_full_pickle_is_refused_without_trust(files):
    with pytest.raises(
        CompressError, match=r"cnn_full.pt: is a full Python pickle, not plain weights; " + TRUST_REFUSAL
    ):
        load_model(files / "cnn_full.pt")
    handle = load_model(files / "cnn_full.pt", trust_pickle=True, input_shape=(1, 8, 8))
    assert handle.kind == "pickle" and len(layer_inventory(handle)) == 5


@pytest.mark.parametrize("suffix", [".ts", ".pt"])
def test_torchscript_needs_trust_even_when_this_project_wrote_it(cnn, tmp_path, monkeypatch, suffix):
    save_torchscript(cnn, tmp_path / f"mine{suffix}")
    opened = []
    monkeypatch.setattr(torch.jit, "load", lambda *args, **kwargs: opened.append(args))
    with pytest.raises(CompressError, match=rf"mine\{suffix}: is a TorchScript archive; " + TRUST_REFUSAL):
        load_model(tmp_path / f"mine{suffix}")
    assert opened == []
    monkeypatch.undo()
    for trust in ({"trust_code": True}, {"trust_pickle": True}):
        handle = load_model(tmp_path / f"mine{suffix}", **trust)
        assert handle.kind == "torchscript" and handle.input_spec.shape == (1, 8, 8)


def test_npz_data_with_and_without_labels(files, tmp_path, cnn):
    np.savez(tmp_path / "d.npz", inputs=cnn.data.inputs.first[:20], labels=cnn.data.labels[:20])
    handle = load_model(files / "cnn.onnx", data=tmp_path / "d.npz")
    assert handle.data.origin == "file d.npz" and len(handle.data) == 20
    np.savez(tmp_path / "x.npz", inputs=cnn.data.inputs.first[:7])
    assert load_model("digits_cnn", data=tmp_path / "x.npz").data.labels is None


@pytest.mark.parametrize(
    "make,message",
    [
        (lambda p: p / "missing.onnx", r"missing.onnx: no such file, and not a sample name"),
        (lambda p: _write(p / "model.h5", b"x"), r"model.h5: unknown model file extension '.h5'"),
        (lambda p: _write(p / "bad.onnx", b"\x08\x07garbage"), r"bad.onnx: not a valid ONNX model"),
        (lambda p: _write(p / "bad.ts", b"PK\x03\x04broken"), r"bad.ts: not a readable TorchScript file"),
        (lambda p: _write(p / "bad.pt2", b"nothing"), r"bad.pt2: not a readable torch.export"),
        (
            lambda p: _write(p / "bad.pt", b"\x80\x02junk"),
            r"bad.pt: (not a readable PyTorch file|is a full Python pickle)",
        ),
    ],
)
def test_bad_model_files(tmp_path, make, message):
    with pytest.raises(CompressError, match=message):
        load_model(make(tmp_path))


def test_truncated_onnx_and_torchscript(files, tmp_path):
    for name, message in (("cnn.onnx", "not a valid ONNX model"), ("cnn.ts", "not a readable TorchScript file")):
        data = (files / name).read_bytes()
        truncated = _write(tmp_path / name, data[: len(data) // 2])
        with pytest.raises(CompressError, match=message):
            load_model(truncated)


def test_bad_npz_files(files, tmp_path):
    np.savez(tmp_path / "nothing.npz", x=np.zeros((3, 1, 8, 8), np.float32))
    with pytest.raises(
        CompressError,
        match=r"nothing.npz: has no array for input 'input' \(found: x\); expected 'input' \(or 'inputs'\)",
    ):
        load_model("digits_cnn", data=tmp_path / "nothing.npz")
    np.savez(tmp_path / "shape.npz", inputs=np.zeros((3, 64), np.float32))
    with pytest.raises(
        CompressError,
        match=r"cnn.onnx: input 'input' is declared \[N, 1, 8, 8\]; samples of shape \(64,\) \(from .*shape.npz\)",
    ):
        load_model(files / "cnn.onnx", data=tmp_path / "shape.npz")
    np.savez(tmp_path / "labels.npz", inputs=np.zeros((3, 1, 8, 8), np.float32), labels=np.zeros(2, np.int64))
    with pytest.raises(CompressError, match=r"'labels' has shape \(2,\)"):
        load_model("digits_cnn", data=tmp_path / "labels.npz")
    with pytest.raises(CompressError, match=r"absent.npz: no such data file"):
        load_model("digits_cnn", data=tmp_path / "absent.npz")


def test_npz_size_limit_from_argument_and_environment(tmp_path, monkeypatch):
    np.savez(tmp_path / "d.npz", inputs=np.zeros((4, 1, 8, 8), np.float32), labels=np.arange(4))
    assert len(load_npz(tmp_path / "d.npz", [InputSpec((1, 8, 8))], max_bytes=1024)) == 4  # inputs: exactly 1,024 bytes
    too_big = r"d.npz: member 'inputs.npy' takes 1,024 bytes once loaded \(shape \(4, 1, 8, 8\), float32\), over the limit of 1,023 bytes"
    with pytest.raises(CompressError, match=too_big):
        load_npz(tmp_path / "d.npz", [InputSpec((1, 8, 8))], max_bytes=1023)
    monkeypatch.setenv(MAX_DATA_BYTES_ENV, "1000")
    with pytest.raises(
        CompressError, match=r"over the limit of 1,000 bytes; use less data or raise " + MAX_DATA_BYTES_ENV
    ):
        load_model("digits_cnn", data=tmp_path / "d.npz")
    monkeypatch.setenv(MAX_DATA_BYTES_ENV, "lots")
    with pytest.raises(CompressError, match=r"COMPRESS_EXPLORER_MAX_DATA_BYTES='lots' is not a whole number of bytes"):
        load_model("digits_cnn", data=tmp_path / "d.npz")


def test_npz_fortran_order_and_integer_inputs(tmp_path):
    inputs = np.asfortranarray(np.arange(3 * 64, dtype=np.int16).reshape(3, 1, 8, 8))
    np.savez(tmp_path / "f.npz", inputs=inputs, labels=np.array([2, 0, 1], np.uint8))
    data = load_npz(tmp_path / "f.npz", [InputSpec((1, 8, 8), "int64")])
    assert data.inputs.first.dtype == np.int64 and data.labels.dtype == np.int64
    np.testing.assert_array_equal(data.inputs.first, inputs)
    np.testing.assert_array_equal(data.labels, [2, 0, 1])


def test_input_shape_that_does_not_fit(files):
    with pytest.raises(CompressError, match=r"does not run on input of shape \(1, 3, 5\)"):
        load_model(files / "cnn_full.pt", trust_pickle=True, input_shape=(3, 5))


def test_scripted_module_without_shape_asks_for_one(tmp_path):
    scripted = torch.jit.script(nn.Sequential(nn.Linear(4, 3)))
    scripted.save(str(tmp_path / "s.ts"))
    with pytest.raises(
        CompressError,
        match=r"s.ts: input 'input' \(shape unknown\) is open; give one sample's shape without the batch axis \(CLI: --input-shape",
    ):
        load_model(tmp_path / "s.ts", trust_code=True)
    assert load_model(tmp_path / "s.ts", input_shape=(4,), trust_code=True).input_spec.shape == (4,)


def test_onnx_weights_in_constant_nodes(tmp_path):
    weight = np.arange(12, dtype=np.float32).reshape(3, 4) / 10
    graph = onnx.helper.make_graph(
        [
            onnx.helper.make_node("Constant", [], ["w"], value=onnx.numpy_helper.from_array(weight, "w")),
            onnx.helper.make_node("MatMul", ["x", "w"], ["y"], name="mm"),
        ],
        "g",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["batch", 3])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["batch", 4])],
    )
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)])
    onnx.save(model, tmp_path / "const.onnx")
    handle = load_model(tmp_path / "const.onnx")
    (layer,) = layer_inventory(handle)
    assert (layer.name, layer.type, layer.weight_shape, layer.out_axis, layer.macs) == ("mm", "MatMul", (3, 4), 1, 12)
    assert layer.channel_max == pytest.approx([0.8, 0.9, 1.0, 1.1])


def test_onnx_external_data(cnn, tmp_path):
    model = to_onnx(cnn)
    onnx.save(
        model,
        tmp_path / "ext.onnx",
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location="ext.data",
        size_threshold=0,
    )
    assert (tmp_path / "ext.data").stat().st_size > 100_000
    assert len(layer_inventory(load_model(tmp_path / "ext.onnx"))) == 5


def _write(path, data: bytes):
    path.write_bytes(data)
    return path
