"""The fix loop: one change for one layer of the ranked list, re-exported, before and after.

A fix is a change to the plan (``fixed_plan``): keep the layer float, raise its bits (to 8 by
default), or switch its granularity (per channel <-> per tensor); or a change to the int8 options
(``fixed_options``): another calibration method, which holds for the whole model. ``int8_outcome``
quantizes a compressed model and measures what a user weighs: the ranked quality figure in ONNX
Runtime on the evaluation data and the file's size; ``compare`` times both files side by side in one
run (``ort.latency.measure_latency``, interleaved), so their milliseconds are comparable.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from compress_core.analysis.metrics import output_quality, user_metric_label
from compress_core.errors import CompressError
from compress_core.ort.artifacts import headline, run_onnx
from compress_core.ort.conv_channels import PaddedConv
from compress_core.ort.int8 import CALIBRATION_METHODS, Int8Options, quantize_int8
from compress_core.ort.latency import measure_latency
from compress_core.pipeline import CompressedModel
from compress_core.plan import Plan
from compress_core.plan.layer_config import LayerConfig

FIX_ACTIONS = ("float", "bits", "granularity", "calibration")
FIX_BITS = 8
TIMING_BATCH = 32
TIMING_RUNS = 20


@dataclass(frozen=True)
class Fix:
    """One fix: ``action`` (one of ``FIX_ACTIONS``) on ``layer``; ``bits`` for ``bits``, ``method``
    for ``calibration`` (whose layer is ignored: calibration is model-wide)."""

    action: str
    layer: str = ""
    bits: int = FIX_BITS
    method: str = "entropy"

    def __post_init__(self) -> None:
        if self.action not in FIX_ACTIONS:
            raise CompressError(f"fix '{self.action}' is not allowed; use one of {', '.join(FIX_ACTIONS)}")
        if self.action == "calibration" and self.method not in CALIBRATION_METHODS:
            raise CompressError(
                f"calibration method '{self.method}' is not allowed; use one of {', '.join(CALIBRATION_METHODS)}"
            )

    def describe(self) -> str:
        """One line for a table or a button: what the fix changes."""
        return {
            "float": f"keep {self.layer} float",
            "bits": f"{self.layer} to {self.bits} bits",
            "granularity": f"switch {self.layer}'s granularity",
            "calibration": f"{self.method} calibration",
        }[self.action]


@dataclass(frozen=True)
class Outcome:
    """What a quantized model gives: its ranked quality figure (``key``: accuracy, agreement, ...),
    its file and that file's bytes, and the convolutions whose input channels the export padded."""

    key: str
    quality: float | None
    path: Path
    bytes: int
    padded: tuple[PaddedConv, ...] = ()


def fixed_plan(plan: Plan, layer_names: list[str], fix: Fix) -> Plan:
    """``plan`` with ``fix`` applied to its layer (a new plan; ``plan`` is unchanged).

    Raises ``CompressError`` for a layer the model lacks, one the plan leaves float (nothing to
    raise or switch), or bits the layer already has.
    """
    if fix.action == "calibration":
        return plan
    if fix.layer not in layer_names:
        raise CompressError(f"layer '{fix.layer}' is not a layer of the model; fix one of the ranked layers")
    current = plan.config_for(fix.layer)
    if fix.action == "float":
        change: LayerConfig | None = None
    elif current is None or current.bits is None:
        raise CompressError(f"layer '{fix.layer}' is float in the plan: there are no bits or granularity to change")
    elif fix.action == "bits":
        if current.bits == fix.bits:
            raise CompressError(f"layer '{fix.layer}' is already at {fix.bits} bits; keep it float instead")
        change = dataclasses.replace(current, bits=fix.bits)
    else:
        change = dataclasses.replace(current, granularity="tensor" if current.granularity == "channel" else "channel")
    return Plan(default=plan.default, layers={**plan.layers, fix.layer: change})


def fixed_options(options: Int8Options, fix: Fix) -> Int8Options:
    """``options`` with the fix's calibration method (unchanged for a per-layer fix)."""
    return dataclasses.replace(options, method=fix.method) if fix.action == "calibration" else options


def int8_outcome(model: CompressedModel, options: Int8Options, path: str | Path) -> Outcome:
    """Quantize ``model`` to ``path`` and measure its ranked quality in ONNX Runtime."""
    result = quantize_int8(model.compressed, path, options)
    written = result.path
    original = model.original.handle
    output = original.quality.output
    outputs = run_onnx(written, original.data.inputs, original.fixed_batch, output, original.output_axis(output))
    measured = output_quality(original, model.original.baseline().reference, outputs)
    key, value = headline(measured, original.task, user_metric_label(original))
    return Outcome(key, value, written, written.stat().st_size, tuple(result.padded))


def compare(before: Outcome, after: Outcome, model: CompressedModel, runs: int = TIMING_RUNS) -> dict[str, Any]:
    """Before and after side by side: quality, median ms per batch (timed in one interleaved run) and
    bytes, with the changes."""
    inputs = model.original.handle.data.inputs
    batch = model.original.handle.fixed_batch or TIMING_BATCH
    timed = {
        result.name: result.median_ms
        for result in measure_latency(
            {"before": before.path, "after": after.path}, inputs, batch=batch, warmup=2, runs=runs
        )
    }
    rows = {}
    for name, outcome in (("before", before), ("after", after)):
        rows[name] = {"quality": outcome.quality, "ms": timed.get(name), "bytes": outcome.bytes}
    return {"key": before.key, "batch": batch, **rows}
