"""One compressed model, from plan to int8 file: ``compress(original, plan)`` applies the plan once,
and everything downstream (metrics, fine-tuning, export, int8) reads what it derives.

``PreparedModel`` is a handle together with what the pipeline derives from it, each computed at most
once, on first use: its layer inventory, its fp32 ONNX export (``to_onnx``: BatchNorm folded, as
deployed), the zip size of that export, the map from its layers to the export's nodes
(``ort.layer_map``), its outputs on its evaluation data, and its metrics as the baseline.
``CompressedModel`` is the pipeline object: the original's ``PreparedModel`` (shared by every plan
of the model), the plan, and the compressed model's ``PreparedModel``. ``fine_tuned`` puts a
fine-tuned compressed model in its place and keeps the rest.

What these objects return is shared (the app caches them for every session): never mutate it.
``CompressedModel.evaluate`` hands out a copy.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, Any

import numpy as np

from compress_core.analysis.metrics import Baseline, compression_details, measure, per_output_fidelity, zip_size
from compress_core.errors import CompressError
from compress_core.models.handle import ModelHandle
from compress_core.models.inventory import LayerInfo, layer_inventory
from compress_core.plan import Plan
from compress_core.transform.apply import apply_plan

if TYPE_CHECKING:
    import onnx

    from compress_core.ort.layer_map import LayerTarget


class PreparedModel:
    """A model handle and what is derived from it, each computed once, when first asked for."""

    def __init__(self, handle: ModelHandle) -> None:
        self.handle = handle
        self._baselines: dict[bool, Baseline] = {}

    def __repr__(self) -> str:
        return f"PreparedModel({self.handle.name!r})"

    @cached_property
    def inventory(self) -> list[LayerInfo]:
        """The handle's compressible layers (``layer_inventory``)."""
        return layer_inventory(self.handle)

    @cached_property
    def onnx_model(self) -> onnx.ModelProto:
        """The handle's fp32 ONNX export (``to_onnx``, BatchNorm folded)."""
        from compress_core.ort.export import to_onnx

        return to_onnx(self.handle)

    @cached_property
    def zip_bytes(self) -> int:
        """Bytes of the ONNX export after zip compression (``metrics.zip_size``)."""
        return zip_size(self.onnx_model.SerializeToString())

    @cached_property
    def layer_targets(self) -> dict[str, LayerTarget]:
        """Each layer's node and weight tensor in the ONNX export (``layer_map.layer_targets``)."""
        from compress_core.ort.layer_map import layer_targets

        return layer_targets(self.handle, self.onnx_model, self.inventory)

    @cached_property
    def all_outputs(self) -> tuple[np.ndarray, ...]:
        """Every output of the model on its evaluation data, batch axis first (one run)."""
        return tuple(self.handle.run_outputs(self.handle.data.inputs))

    @property
    def outputs(self) -> np.ndarray:
        """The model's ranked output on its evaluation data."""
        return self.all_outputs[self.handle.quality.output]

    def metrics(
        self, reference: Baseline | None, with_zip: bool = True, layers: list[LayerInfo] | None = None
    ) -> dict[str, Any]:
        """``metrics.model_metrics`` of ``outputs`` against ``reference``'s (this model's own when None),
        from the cached inventory and export (``with_zip=False`` leaves ``zip_bytes`` out, and the
        export undone); ``outputs`` per output (``per_output_fidelity``) for a model with several.
        ``layers`` may stand for the inventory where it has the same names and shapes (a plan that
        keeps every shape: the original's), sparing its weight statistics."""
        if reference is None:
            references, ranked = self.all_outputs, self.outputs
        else:
            references, ranked = reference.outputs, reference.reference
        layers = self.inventory if layers is None else layers
        result = measure(self.handle, ranked, self.outputs, layers, self.zip_bytes if with_zip else None)
        if len(self.all_outputs) > 1:
            result["outputs"] = per_output_fidelity(self.handle, references, self.all_outputs)
        return result

    def baseline(self, with_zip: bool = True) -> Baseline:
        """This model as the reference: its outputs and its own metrics (computed once per ``with_zip``)."""
        if with_zip not in self._baselines:
            self._baselines[with_zip] = Baseline(self.outputs, self.metrics(None, with_zip), self.all_outputs)
        return self._baselines[with_zip]


@dataclass(frozen=True, eq=False)
class CompressedModel:
    """The original, the plan and the compressed model (``compress`` makes one; build it once per
    model and plan). The compressed handle shares the original's evaluation data."""

    original: PreparedModel
    plan: Plan
    compressed: PreparedModel
    _evaluations: dict[bool, dict[str, Any]] = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.compressed.handle.compression is None:
            raise CompressError(
                f"model '{self.compressed.handle.name}' carries no plan; apply a plan to get a compressed model"
            )

    def evaluate(self, with_zip: bool = True) -> dict[str, Any]:
        """``metrics.evaluate`` of the original and the compressed model (computed once per
        ``with_zip``, the original's half shared by every plan); a copy the caller may keep."""
        if with_zip not in self._evaluations:
            base = self.original.baseline(with_zip)
            same_shapes = self.original.inventory if self._keeps_shapes else None
            compressed = {
                **self.compressed.metrics(base, with_zip, same_shapes),
                **compression_details(self.compressed.handle),
            }
            self._evaluations[with_zip] = {"original": base.metrics, "compressed": compressed}
        return copy.deepcopy(self._evaluations[with_zip])

    @property
    def _keeps_shapes(self) -> bool:
        """Whether the plan leaves every layer's weight shape (and so names, shapes and MACs) as it was."""
        configs = [self.plan.default, *self.plan.layers.values()]
        return all(config is None or config.keeps_shape for config in configs)

    def fine_tuned(self, handle: ModelHandle) -> CompressedModel:
        """The same original and plan with ``handle`` (``recover.finetune``'s result) as the compressed model."""
        return CompressedModel(self.original, self.plan, PreparedModel(handle))


def compress(original: ModelHandle | PreparedModel, plan: Plan) -> CompressedModel:
    """Apply ``plan`` to ``original`` (``apply_plan``) and return the pipeline object.

    Pass a ``PreparedModel`` to share the original's inventory, export and baseline between plans.
    Raises ``CompressError`` for a plan the model cannot take.
    """
    prepared = original if isinstance(original, PreparedModel) else PreparedModel(original)
    return CompressedModel(prepared, plan, PreparedModel(apply_plan(prepared.handle, plan, prepared.inventory)))
