"""``inspect MODEL``: the layer table (``--json`` for the same as JSON)."""

from __future__ import annotations

import argparse

from compress_core.cli.common import add_model_arguments, format_table, load_from_args, print_json
from compress_core.models.inventory import layer_inventory, total_params

COLUMNS = ("name", "type", "weight_shape", "params", "macs", "min", "max", "std", "kurtosis", "sparsity")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("inspect", help="list the compressible layers with statistics")
    add_model_arguments(parser)
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    handle = load_from_args(args)
    layers = layer_inventory(handle)
    summary = {
        "model": handle.name,
        "backend": handle.backend,
        "input_shape": list(handle.input_spec.shape),
        "layers": len(layers),
        "layer_params": sum(layer.params for layer in layers),
        "total_params": total_params(handle),
        "macs": sum(layer.macs for layer in layers),
        "data": handle.data.origin,
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
    return 0
