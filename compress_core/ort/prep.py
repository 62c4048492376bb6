"""Make an ONNX graph fit for ONNX Runtime's quantizer: a recent opset and weights as initializers.

Real models are messier than fresh exports: opsets below 13 (where a per-channel
``DequantizeLinear`` is invalid), weights held in ``Constant`` nodes or forwarded by ``Identity``
nodes (the quantizer only quantizes initializers), and initializers also listed as graph inputs
(older exporters; such weights can be overridden at run time, so the quantizer leaves them alone).
"""

from __future__ import annotations

import onnx
from onnx import version_converter

from compress_core.errors import CompressError, first_line
from compress_core.ort.export import fold_constant_identities
from compress_core.transform.onnx_backend import constants_to_initializers

MIN_OPSET = 13  # per-channel DequantizeLinear
INT4_OPSET = 21  # 4-bit and 16-bit QuantizeLinear / DequantizeLinear


def prepare_for_quantization(model: onnx.ModelProto, min_opset: int = MIN_OPSET) -> tuple[onnx.ModelProto, list[str]]:
    """A cleaned copy of ``model`` at opset ``min_opset`` or above, and one sentence per change made.

    ``min_opset`` is 13 for int8 (per-channel DequantizeLinear) and 21 when weights are stored in
    int4 or int16.
    """
    prepared = onnx.ModelProto()
    prepared.CopyFrom(model)
    notes = []
    opset = default_opset(prepared)
    if opset < min_opset:
        try:
            prepared = version_converter.convert_version(prepared, min_opset)
        except Exception as exc:  # the converter raises bare RuntimeErrors from C++
            first = first_line(exc, 200)
            raise CompressError(
                f"the model's opset {opset} could not be converted to {min_opset} for integer storage ({first})"
            ) from exc
        notes.append(f"converted from opset {opset} to {min_opset} (per-channel int8 needs 13, int4/int16 storage 21)")
    moved = constants_to_initializers(prepared)
    if moved:
        notes.append(f"moved {moved} Constant-node tensor(s) into initializers so that they can be quantized")
    fold_constant_identities(prepared)
    initializers = {init.name for init in prepared.graph.initializer}
    inputs = [value for value in prepared.graph.input if value.name not in initializers]
    if len(inputs) != len(prepared.graph.input):
        notes.append(f"removed {len(prepared.graph.input) - len(inputs)} initializer(s) from the graph inputs")
        del prepared.graph.input[:]
        prepared.graph.input.extend(inputs)
    return onnx.shape_inference.infer_shapes(prepared), notes


def default_opset(model: onnx.ModelProto) -> int:
    """The version of the default (``ai.onnx``) operator set the model imports."""
    return next((entry.version for entry in model.opset_import if entry.domain in ("", "ai.onnx")), 0)
