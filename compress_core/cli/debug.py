"""``debug MODEL --recipe R --out DIR``: which layer of the int8 model loses quality, and which is slow.

Writes ``layers.csv``, ``node_data.json`` (and ``node_data/``), ``report.md`` and the two ONNX files
(``compress_core.debug.report``); prints the ranked layers.
"""

from __future__ import annotations

import argparse

from compress_core.cli.common import add_calibration_arguments, add_model_arguments, format_table, load_from_args
from compress_core.debug.report import DEBUG_SAMPLES, REPORT, debug_model
from compress_core.ort.int8 import Int8Options
from compress_core.pipeline import compress
from compress_core.plan import Plan

SHOWN_ROWS = 10


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "debug", help="per-layer error and time of the static int8 model, ranked, with a graph overlay"
    )
    add_model_arguments(parser)
    parser.add_argument("--recipe", required=True, help="the plan: a YAML or JSON recipe file")
    parser.add_argument("--out", required=True, help="folder for layers.csv, node_data.json, report.md")
    parser.add_argument(
        "--samples", type=int, default=DEBUG_SAMPLES, metavar="N", help="evaluation samples the layers are measured on"
    )
    add_calibration_arguments(parser)
    parser.add_argument(
        "--activations", choices=("uint8", "int8"), default=Int8Options.activations, help="activation type"
    )
    parser.add_argument("--no-speed", action="store_true", help="skip profiling (errors only)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    handle = load_from_args(args)
    plan = Plan.load(args.recipe)
    options = Int8Options(args.calibrate_method, args.calibration, args.activations)
    result = debug_model(compress(handle, plan), args.out, options, args.samples, speed=not args.no_speed)
    columns = ("rank", "layer", "bits", "output_sqnr_db", "own_sqnr_db", "weight_sqnr_db", "activation_sqnr_db")
    headers = (*columns[:3], "output dB", "own dB", "weight dB", "activation dB", "int8 x", "suggestion")
    rows = [[row[key] for key in columns] + [row["speedup"], row["suggestion"]] for row in result.rows[:SHOWN_ROWS]]
    print(format_table(headers, rows))
    value = result.quality["int8"]
    shown = "n/a" if value is None else f"{100 * value:.2f}%"
    print(f"\nint8 {result.quality['key']}: {shown}; wrote {len(result.files)} files to {args.out} (report: {REPORT})")
    return 0
