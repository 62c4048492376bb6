"""Compression Explorer's engine: load a model, list its layers, plan and apply per-layer compression,
measure it, and export it to ONNX and int8. Pure Python, no Streamlit.

The public API, stage by stage (each name's own docstring gives the details)::

    from compress_core import load_model, Plan, LayerConfig, compress, export_artifacts

    original = load_model("digits_cnn")                   # models: samples, ONNX, .pt2, weights
    plan = Plan(default=LayerConfig(bits=8))              # plan: per-layer settings, or Plan.load(recipe)
    model = compress(original, plan)                      # pipeline: apply once, reuse everywhere
    print(model.evaluate()["compressed"]["accuracy"])
    export_artifacts(model, "out/", int8=Int8Options())   # ort: ONNX fp32 + int8, report

``apply_plan`` returns only the compressed handle; ``evaluate`` compares two handles;
``run_sensitivity`` sweeps each layer; ``suggest_plan`` proposes a plan for a budget;
``quantize_int8`` writes the int8 ONNX file of a compressed model. Every bad input raises
``CompressError`` with a one-line message.
"""

from compress_core.analysis.metrics import evaluate
from compress_core.analysis.sensitivity import run_sensitivity
from compress_core.analysis.suggest import suggest_plan
from compress_core.analysis.sweep import Sweep
from compress_core.errors import CompressError
from compress_core.models.handle import EvalData, InputSpec, ModelHandle
from compress_core.models.inventory import LayerInfo, layer_inventory, total_params
from compress_core.models.loading import load_model
from compress_core.models.torchscript import save_torchscript
from compress_core.ort.artifacts import export_artifacts
from compress_core.ort.int8 import Int8Options, quantize_int8
from compress_core.pipeline import CompressedModel, compress
from compress_core.plan import LayerConfig, Plan, PruneConfig
from compress_core.transform.apply import apply_plan

__all__ = [
    "CompressError",
    "CompressedModel",
    "EvalData",
    "InputSpec",
    "Int8Options",
    "LayerConfig",
    "LayerInfo",
    "ModelHandle",
    "Plan",
    "PruneConfig",
    "Sweep",
    "apply_plan",
    "compress",
    "evaluate",
    "export_artifacts",
    "layer_inventory",
    "load_model",
    "quantize_int8",
    "run_sensitivity",
    "save_torchscript",
    "suggest_plan",
    "total_params",
]
