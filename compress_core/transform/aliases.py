"""Other names a model's layers answer to in a plan: the torch modules an ONNX file's nodes came from."""

from __future__ import annotations

from compress_core.models.handle import ModelHandle
from compress_core.models.inventory import LayerInfo


def layer_aliases(handle: ModelHandle, layers: list[LayerInfo]) -> dict[str, str]:
    """Layer name -> the torch module name it was exported from, for an ONNX model whose node names
    carry torch's scopes (``torch.onnx.export``'s TorchScript exporter writes
    ``/bert/encoder/layer.0/output/dense/MatMul``); empty for torch models and for ONNX files
    without scoped names. ``Plan.with_aliases`` lets a recipe written for the torch model name them."""
    if handle.backend != "onnx":
        return {}
    from compress_core.ort.layer_map import module_scope

    scopes = {layer.name: module_scope(layer.name) for layer in layers}
    return {name: scope for name, scope in scopes.items() if scope and scope != name}
