"""Sweep cells of an ONNX model in one ONNX Runtime session: each swept weight is an overridable input.

A sensitivity cell changes one layer's weight and runs the model on the evaluation data. Rewriting the
graph and building a session for every cell (``apply_plan``) costs more than the forward pass itself.
Here the graph is copied once, with every compressible float weight listed also as a graph input (an
"overridable initializer", IR version 4 and later; older files list their initializers as inputs
already); one session serves the whole sweep, and a cell feeds only its perturbed weight, every other
weight keeping its initializer value.

A fed weight stands for what ``apply_plan`` writes for that layer: the quantized values for ``bits``,
the masked weight for unstructured and N:M pruning, and for ``rank`` the product of the two factors
(``apply_plan`` runs them as two nodes: the same function of the input, up to float rounding). What a
weight swap cannot stand for is left to ``apply_plan``: structured pruning (which the ONNX transform
refuses anyway), weights that are not float initializers (an ``Identity`` of one, or integer weights),
and ``rank`` on a weight shared by several nodes (``apply_plan`` factorizes only the layer's node).

Such a session cannot fold the overridable weights into their neighbours (a BatchNorm after a Conv
stays a separate node), so a pass takes a little longer than in the model's own session; the sweep's
reference outputs come from this same session, so that a cell's change is the only difference measured.
A file with a static batch (``[1, 1, 64, width]``) whose graph takes any batch (``free_batch``: checked
on two samples) runs here in batches of ``batch_size``, not one call per sample; it runs in the file's
own batch otherwise.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np
import onnx
import torch
from onnx import helper, numpy_helper

from compress_core.analysis.free_batch import batch_mismatch, freed_batch
from compress_core.models.handle import RUN_BATCH, ModelHandle
from compress_core.models.inputs import Inputs, in_batches
from compress_core.models.inventory import LayerInfo
from compress_core.models.sessions import make_session
from compress_core.transform.onnx_backend import constants_to_initializers

FED_KINDS = ("bits", "prune", "rank")
"""Cell kinds whose effect is a new value of the layer's weight alone."""


class OnnxCells:
    """One session over a copy of the handle's graph in which the layers' weights can be fed.

    ``run`` returns the handle's ranked output over its evaluation data, run in ``batches``: of
    ``batch_size`` samples, or of the file's static batch (``ModelHandle.input_batches``) when its
    graph does not take another (``batch_note`` says which, and why). ``threads``: the session's
    intra-op threads (a sweep's worker limits them; None: ONNX Runtime's default).
    """

    def __init__(
        self,
        handle: ModelHandle,
        layers: list[LayerInfo],
        batch_size: int = RUN_BATCH,
        threads: int | None = None,
    ) -> None:
        self.handle = handle
        model = onnx.ModelProto()
        model.CopyFrom(handle.model)
        constants_to_initializers(model, float_only=True)  # as apply_plan does: every weight an initializer
        initializers = {init.name: init for init in model.graph.initializer}
        listed = {value.name for value in model.graph.input}
        self.uses = Counter(name for node in model.graph.node for name in node.input)
        self.weights: dict[str, np.ndarray] = {}
        for layer in layers:
            init = initializers.get(layer.weight_name)
            if init is None or init.data_type != onnx.TensorProto.FLOAT or layer.weight_name in self.weights:
                continue
            self.weights[layer.weight_name] = numpy_helper.to_array(init).astype(np.float32)
            if layer.weight_name not in listed:
                model.graph.input.append(helper.make_tensor_value_info(init.name, init.data_type, list(init.dims)))
        self.session, self.batches, self.batch_note = self._batched_session(model, batch_size, threads)
        self.output = self.session.get_outputs()[handle.quality.output].name

    def _batched_session(
        self, model: onnx.ModelProto, batch_size: int, threads: int | None
    ) -> tuple[Any, list[Inputs], str]:
        """The session, the evaluation batches it runs and a note on them: batches of ``batch_size``
        in a copy with the batch freed when the file's static batch is smaller and the copy passes
        ``batch_mismatch``; else the file's own batches in a session over ``model``."""
        handle, label = self.handle, f"'{self.handle.name}'"
        data = handle.data.inputs
        fixed = handle.fixed_batch
        if fixed is None or len(data) <= fixed or batch_size <= fixed:
            return make_session(model, threads, label=label), handle.input_batches(data, batch_size), ""
        session: Any = make_session(freed_batch(model, handle), threads, label=label)
        mismatch = batch_mismatch(session, handle, data)
        if mismatch is None:
            return session, in_batches(data, batch_size), f"the file's batch of {fixed} freed"
        session = make_session(model, threads, label=label)
        return session, handle.input_batches(data, batch_size), f"the file's batch of {fixed} kept: {mismatch}"

    def feeds(self, layer: LayerInfo, kind: str) -> bool:
        """Whether a ``kind`` cell of ``layer`` is a weight fed to this session (else: ``apply_plan``)."""
        if kind not in FED_KINDS or layer.weight_name not in self.weights:
            return False
        return kind != "rank" or self.uses[layer.weight_name] == 1

    def weight(self, layer: LayerInfo) -> torch.Tensor:
        """The layer's original weight (float32; a copy the caller may change)."""
        return torch.from_numpy(self.weights[layer.weight_name].copy())

    def run(self, weights: dict[str, np.ndarray] | None = None) -> np.ndarray:
        """The ranked output over the evaluation batches, with ``weights`` (by initializer name) fed in
        place of the stored ones."""
        fed = {name: np.ascontiguousarray(array, dtype=np.float32) for name, array in (weights or {}).items()}
        parts = [np.asarray(self.session.run([self.output], {**batch.feed(), **fed})[0]) for batch in self.batches]
        return ranked_output(self.handle, parts)


def ranked_output(handle: ModelHandle, parts: list[np.ndarray]) -> np.ndarray:
    """The ranked output's per-batch parts joined as ``ModelHandle.run`` returns it: along the output's
    batch axis (1 for a time-major sequence), moved first, without the rows of a fixed batch's padding."""
    axis = handle.output_axis(handle.quality.output)
    return np.moveaxis(np.concatenate(parts, axis=axis), axis, 0)[: len(handle.data)]
