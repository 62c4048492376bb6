"""``inspect MODEL``: the layer table (``--json`` for the same as JSON), with each layer's precision
and, for a model that is already quantized, which quantization ops it holds."""

from __future__ import annotations

import argparse

from compress_core.cli.common import add_model_arguments, format_table, load_from_args, print_json
from compress_core.models.inventory import layer_inventory, total_params
from compress_core.models.onnx_quantized import quantized_op_counts

COLUMNS = ("name", "type", "weight_shape", "params", "macs", "min", "max", "std", "kurtosis", "sparsity", "precision")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("inspect", help="list the compressible layers with statistics")
    add_model_arguments(parser)
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    handle = load_from_args(args)
    layers = layer_inventory(handle)
    quantization = quantized_op_counts(handle.model) if handle.backend == "onnx" else {}
    summary = {
        "model": handle.name,
        "backend": handle.backend,
        "input_shape": list(handle.input_spec.shape),
        "inputs": [spec.describe() for spec in handle.input_specs],
        "layers": len(layers),
        "layer_params": sum(layer.params for layer in layers),
        "total_params": total_params(handle),
        "macs": sum(layer.macs for layer in layers),
        "data": handle.data.origin,
        "already_quantized": bool(quantization),
        "quantization_ops": quantization,
        "quantized_layers": sum(layer.quantized for layer in layers),
    }
    if args.json:
        print_json({**summary, "layer_table": [layer.to_dict() for layer in layers]})
        return 0
    rows = [[getattr(layer, column) for column in COLUMNS] for layer in layers]
    print(format_table(COLUMNS, rows))
    print(
        f"\n{summary['layers']} layers, {summary['layer_params']:,} parameters in them "
        f"({summary['total_params']:,} in the whole model), {summary['macs']:,} MACs per sample; "
        f"evaluation data: {summary['data']}"
    )
    if quantization:
        ops = ", ".join(f"{count} {op}" for op, count in quantization.items())
        print(
            f"already quantized: {summary['quantized_layers']} of {len(layers)} layers are stored as integers "
            f"({ops}); a plan can change only the float layers: compress the float original instead"
        )
    return 0
