"""A sweep of a static-batch ONNX file runs its samples in one call when the graph takes any batch
(``analysis.free_batch``), checked on two samples; a graph that bakes its batch in keeps it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from compress_core import load_model
from compress_core.analysis.cell_weights import perturb_weight
from compress_core.analysis.onnx_cells import OnnxCells
from compress_core.analysis.sensitivity import run_sensitivity
from compress_core.analysis.suggest import measure_plan
from compress_core.analysis.sweep import Sweep, config_for
from compress_core.models.handle import EvalData, ModelHandle
from compress_core.models.inputs import Inputs
from compress_core.models.inventory import layer_inventory
from compress_core.ort.export import to_onnx
from compress_core.plan import Plan
from compress_core.transform.apply import apply_plan

SAMPLES = 40
SWEEP = Sweep(bits=(4,), prune=(0.5,), kinds=("bits", "prune"))


def _batch_of_one(model: onnx.ModelProto) -> onnx.ModelProto:
    """The model with its inputs' and outputs' first dim fixed at 1, as a batch-1 export declares it."""
    for value in [*model.graph.input, *model.graph.output]:
        value.type.tensor_type.shape.dim[0].dim_value = 1
    return model


@pytest.fixture(scope="module")
def cnn_of_one(tmp_path_factory: pytest.TempPathFactory) -> ModelHandle:
    """digits_cnn exported to ONNX (its graph takes any batch) with a declared batch of 1."""
    sample = load_model("digits_cnn")
    path = tmp_path_factory.mktemp("free_batch") / "digits_cnn_b1.onnx"
    onnx.save(_batch_of_one(to_onnx(sample)), str(path))
    handle = load_model(path)
    return handle.replace(data=EvalData(sample.data.inputs[:SAMPLES], sample.data.labels[:SAMPLES], "test split"))


def test_a_graph_that_takes_any_batch_runs_the_samples_in_one_call(cnn_of_one):
    assert cnn_of_one.fixed_batch == 1 and len(cnn_of_one.input_batches(cnn_of_one.data.inputs)) == SAMPLES
    layers = layer_inventory(cnn_of_one)
    cells = OnnxCells(cnn_of_one, layers)
    assert cells.batch_note == "the file's batch of 1 freed"
    assert [len(batch) for batch in cells.batches] == [SAMPLES]
    assert [len(batch) for batch in OnnxCells(cnn_of_one, layers, batch_size=16).batches] == [16, 16, 8]
    assert np.allclose(cells.run(), cnn_of_one.run(cnn_of_one.data.inputs), atol=1e-4)
    for layer in (layers[0], layers[-2]):
        weight, _ = perturb_weight(cells.weight(layer), layer, "bits", 4, SWEEP)
        fed = cells.run({layer.weight_name: weight.numpy()})
        plan = Plan(layers={layer.name: config_for("bits", 4, SWEEP)})
        expected = apply_plan(cnn_of_one, plan, layers).run(cnn_of_one.data.inputs)  # 40 calls of one sample
        assert fed.shape == expected.shape == (SAMPLES, 10)
        assert np.allclose(fed, expected, atol=1e-5 * float(np.abs(expected).max())), layer.name


def test_a_sweep_of_the_freed_batch_gives_what_apply_plan_gives(cnn_of_one):
    result = run_sensitivity(cnn_of_one, SWEEP, cache=False)
    assert result.strategy == "one ONNX Runtime session, weights fed per cell; the file's batch of 1 freed"
    assert len(result.rows) == 5 * 2 and result.baseline == 100.0
    reference = cnn_of_one.run(cnn_of_one.data.inputs)
    layers = layer_inventory(cnn_of_one)
    for row in result.rows[::3]:
        plan = Plan(layers={row.layer: config_for(row.kind, row.level, SWEEP)})
        assert row.metric == pytest.approx(measure_plan(cnn_of_one, plan, reference, layers)["metric"]), row


def _tiny(path: Path, kind: str) -> ModelHandle:
    """x [1, 4] -> MatMul -> y [1, 4], with a part that ties the graph to its batch of 1 (``kind``):
    ``reshape`` flattens the output to [1, -1] (another shape at batch 2), ``mix`` adds the sum over
    the batch (same shape, other values), ``fixed`` reshapes the input to [1, 4] (fails at batch 2)."""
    weight = numpy_helper.from_array(np.arange(16, dtype=np.float32).reshape(4, 4) / 10, "w")
    shape = numpy_helper.from_array(np.array([1, -1] if kind == "reshape" else [1, 4], np.int64), "shape")
    nodes = {
        "reshape": [helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("Reshape", ["h", "shape"], ["y"])],
        "mix": [
            helper.make_node("MatMul", ["x", "w"], ["h"]),
            helper.make_node("ReduceSum", ["x"], ["s"], axes=[0], keepdims=1),
            helper.make_node("Add", ["h", "s"], ["y"]),
        ],
        "fixed": [helper.make_node("Reshape", ["x", "shape"], ["r"]), helper.make_node("MatMul", ["r", "w"], ["y"])],
    }[kind]
    graph = helper.make_graph(
        nodes,
        kind,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
        [weight, shape],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 12)])
    model.ir_version = 7
    onnx.save(model, str(path / f"{kind}.onnx"))
    handle = load_model(path / f"{kind}.onnx")
    data = np.random.default_rng(0).standard_normal((6, 4)).astype(np.float32)
    return handle.replace(data=EvalData(Inputs.single(data, "x"), None, "generated"))


@pytest.mark.parametrize(
    ("kind", "reason"),
    [
        ("reshape", "output 0 has shape (1, 8) for 2 samples, (1, 4) for one"),
        ("mix", "output 0 differs between a batch of 2 and two batches of 1"),
        ("fixed", "a batch of 2 fails in ONNX Runtime"),
    ],
)
def test_a_graph_tied_to_its_batch_keeps_it(tmp_path, kind, reason):
    handle = _tiny(tmp_path, kind)
    assert handle.fixed_batch == 1
    layers = layer_inventory(handle)
    cells = OnnxCells(handle, layers)
    assert cells.batch_note.startswith(f"the file's batch of 1 kept: {reason}"), cells.batch_note
    assert [len(batch) for batch in cells.batches] == [1] * 6
    assert np.allclose(cells.run(), handle.run(handle.data.inputs), atol=1e-5)
    halved = 0.5 * cells.weight(layers[0]).numpy()
    x = handle.data.inputs.first
    expected = x @ halved + (x if kind == "mix" else 0.0)  # a batch of one: its sum over the batch is itself
    assert np.allclose(cells.run({layers[0].weight_name: halved}), expected, atol=1e-5)
