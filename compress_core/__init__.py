"""Compression Explorer's engine: load a model, list its layers, plan and apply per-layer compression.

Pure Python, no Streamlit. The public API is re-exported here.
"""

from compress_core.errors import CompressError
from compress_core.models.handle import EvalData, InputSpec, ModelHandle
from compress_core.models.inventory import LayerInfo, layer_inventory, total_params
from compress_core.models.loading import load_model, save_torchscript

__all__ = [
    "CompressError",
    "EvalData",
    "InputSpec",
    "LayerInfo",
    "ModelHandle",
    "layer_inventory",
    "load_model",
    "save_torchscript",
    "total_params",
]
