"""Suggest for speed (``suggest --objective latency``): int8 where it is faster on this CPU, float elsewhere.

1. Export the all-8-bit plan with every layer in int8 (the int8 path's own float layers turned off,
   so that each layer's int8 kernel is seen) and profile it and the fp32 file in ONNX Runtime
   (``ort.profiling``: mean kernel ms per node, summed per layer, quantize / dequantize left out).
2. The candidates to keep float are the layers whose int8 kernel takes ``SLOWER_MARGIN`` (1.25)
   times their fp32 time or more on this CPU (a Conv with one input channel, a layer too small to
   gain), slowest first.
3. A kernel time leaves out what keeping a layer float adds around it: a quantize, and layout
   changes (ORT's NCHWc reorders, a transpose per integer consumer). So each candidate is tried on
   the exported file: the plan with it float is timed interleaved against the plan so far, and the
   layer stays float only when the file runs in at most ``ACCEPT`` (0.97) of the time. On
   ``digits_resnet`` the one-channel stem runs 5x slower in int8, yet its file is faster with it in
   int8. Every other layer stays at 8 bits.
4. Predict the plan's speed-up from the profiles: the fp32 file's total kernel time over the
   all-int8 file's, with each float layer's int8 time replaced by its fp32 time.
5. Time fp32, the all-int8 file and the plan's int8 file interleaved (``ort.latency``), and
   measure each int8 file's quality in ONNX Runtime: the measured speed-up stands next to the
   predicted one.
"""

from __future__ import annotations

import tempfile
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from compress_core.errors import CompressError
from compress_core.models.handle import ModelHandle
from compress_core.ort.artifacts import INT8_ONNX, ORIGINAL_ONNX, ExportResult, export_artifacts, headline
from compress_core.ort.int8 import Int8Options
from compress_core.ort.latency import measure_latency
from compress_core.ort.profiling import layer_times, profile_nodes
from compress_core.pipeline import PreparedModel, compress
from compress_core.plan import Plan
from compress_core.plan.layer_config import LayerConfig

FP32, ALL_INT8, PLAN = "fp32", "all int8", "latency plan"
SLOWER_MARGIN = 1.25  # kernel medians of one layer vary by 10-20% between runs on a shared machine
ACCEPT = 0.97  # a layer stays float when its file runs in at most this share of the time with it in int8


@dataclass(frozen=True)
class LayerTime:
    """One layer's kernel ms per run in the fp32 file and in the all-int8 file (None: not seen)."""

    layer: str
    fp32_ms: float | None
    int8_ms: float | None

    @property
    def int8_slower(self) -> bool:
        """int8 takes at least ``SLOWER_MARGIN`` times the fp32 time (a margin over the profiler's noise)."""
        return self.fp32_ms is not None and self.int8_ms is not None and self.int8_ms >= SLOWER_MARGIN * self.fp32_ms


@dataclass
class LatencySuggestion:
    """The plan for speed, why, and what its exported int8 file measured.

    ``predicted_speedup`` (plan) and ``all_int8_predicted`` come from the profiles; ``measured`` holds
    median ms and speed-ups over fp32 of the interleaved timing (keys ``FP32``, ``ALL_INT8``,
    ``PLAN``); ``quality`` the ORT-measured headline metric (``metric``) of each file; ``tried`` each
    candidate layer with the time of the file with it float over the time without (``ratio``).
    """

    plan: Plan
    float_layers: list[str]
    layers: list[LayerTime]
    predicted_speedup: float
    all_int8_predicted: float
    measured: dict[str, dict[str, float]]
    quality: dict[str, float | None]
    metric: str
    batch: int
    threads: int
    tried: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "plan": self.plan.to_dict()}


def suggest_latency(
    handle: ModelHandle,
    int8: Int8Options | None = None,
    threads: int = 2,
    batch: int = 32,
    runs: int = 30,
    profile_runs: int = 10,
    bits: int = 8,
) -> LatencySuggestion:
    """The plan that keeps float the layers whose int8 kernel is slower than fp32 on this CPU where the
    exported file runs faster so (the module's docstring says how), with its predicted and measured
    speed-up over fp32 at ``batch`` on ``threads`` threads. ``int8`` are the export options (static
    by default); ``runs`` timed runs per comparison."""
    if handle.fixed_batch:
        batch = handle.fixed_batch
    options = int8 or Int8Options()
    prepared = PreparedModel(handle)
    every_layer = Plan(default=LayerConfig(bits=bits))
    with tempfile.TemporaryDirectory() as scratch:
        probe = export_artifacts(
            compress(prepared, every_layer), Path(scratch) / "all", replace(options, float_narrow_convs=False)
        )
        if INT8_ONNX not in probe.files:
            raise CompressError(f"model '{handle.name}': no int8 file was written, so int8 speed cannot be profiled")
        nodes = probe.metrics["layer_nodes"]
        inputs = handle.data.inputs
        fp32_profile = profile_nodes(probe.files[ORIGINAL_ONNX], inputs, nodes, threads, batch, profile_runs)
        int8_profile = profile_nodes(probe.files[INT8_ONNX], inputs, nodes, threads, batch, profile_runs)
        fp32_ms, int8_ms = layer_times(fp32_profile), layer_times(int8_profile)
        layers = [LayerTime(layer, fp32_ms.get(layer), int8_ms.get(layer)) for layer in nodes]
        candidates = sorted(
            (row for row in layers if row.int8_slower),
            key=lambda row: row.int8_ms - row.fp32_ms,  # type: ignore[operator]
            reverse=True,
        )
        plan, chosen = every_layer, probe
        tried: list[dict[str, Any]] = []
        for index, row in enumerate(candidates):
            trial = Plan(default=LayerConfig(bits=bits), layers={**plan.layers, row.layer: None})
            export = export_artifacts(compress(prepared, trial), Path(scratch) / f"trial{index}", options)
            pair = {"without": chosen.files[INT8_ONNX], "with": export.files[INT8_ONNX]}
            timed = {t.name: t.median_ms for t in measure_latency(pair, inputs, threads, batch, 3, runs, "without")}
            ratio = timed["with"] / timed["without"]
            tried.append({"layer": row.layer, "fp32_ms": row.fp32_ms, "int8_ms": row.int8_ms, "ratio": ratio})
            if ratio <= ACCEPT:
                plan, chosen = trial, export
        slower = [name for name, config in plan.layers.items() if config is None]
        fp32_total = sum(row.ms for row in fp32_profile)
        int8_total = sum(row.ms for row in int8_profile)
        saved = sum(int8_ms[layer] - fp32_ms[layer] for layer in slower)
        files = {FP32: probe.files[ORIGINAL_ONNX], ALL_INT8: probe.files[INT8_ONNX]}
        if chosen is not probe:  # else the plan is the all-int8 plan: one file, timed once
            files[PLAN] = chosen.files[INT8_ONNX]
        timings = measure_latency(files, inputs, threads, batch, warmup=5, runs=runs, baseline=FP32)
        metric, quality = _quality(probe, chosen)
    measured = {row.name: {"median_ms": row.median_ms, "speedup": row.speedup} for row in timings}
    measured.setdefault(PLAN, measured[ALL_INT8])
    notes = [
        f"{entry['layer']}: int8 kernel {entry['int8_ms']:.3f} ms against fp32 {entry['fp32_ms']:.3f} ms; the file "
        f"with it float took {entry['ratio']:.2f} of the time: {'kept float' if entry['ratio'] <= ACCEPT else 'kept int8'}"
        for entry in tried
    ]
    return LatencySuggestion(
        plan=plan,
        float_layers=slower,
        layers=layers,
        predicted_speedup=fp32_total / max(int8_total - saved, 1e-9),
        all_int8_predicted=fp32_total / max(int8_total, 1e-9),
        measured=measured,
        quality=quality,
        metric=metric,
        batch=batch,
        threads=threads,
        tried=tried,
        notes=notes,
    )


def _quality(probe: ExportResult, chosen: ExportResult) -> tuple[str, dict[str, float | None]]:
    """The headline metric of the fp32 file, the all-int8 file and the plan's int8 file, as ORT measured them."""
    task, label = probe.metrics["task"], probe.metrics.get("metric_label")
    artifacts = probe.metrics["artifacts"]
    key = headline(artifacts[ORIGINAL_ONNX], task, label)[0]
    return key, {
        FP32: headline(artifacts[ORIGINAL_ONNX], task, label)[1],
        ALL_INT8: headline(artifacts[INT8_ONNX], task, label)[1],
        PLAN: headline(chosen.metrics["artifacts"][INT8_ONNX], task, label)[1],
    }
