"""``bench DIR``: latency, speed-up, quality and size of an export folder's ONNX files, side by side.

The first line names the CPU, its int8 features, ONNX Runtime's version and the thread count: the
figures below hold for that machine only.
"""

from __future__ import annotations

import argparse

from compress_core.cli.common import format_table, print_json
from compress_core.ort.bench import UNASSIGNED, bench_folder, layer_comparison
from compress_core.ort.runtime import cpu_from_record, int8_notes, runtime_line

FLOAT_FILES = ("original_fp32", "compressed_fp32")  # every layer of these is float: no news
COLUMNS = ("name", "median_ms", "p10_ms", "p90_ms", "speedup", "accuracy", "bytes", "zip_bytes", "float_nodes")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("bench", help="measure the ONNX files of an export folder in ONNX Runtime")
    parser.add_argument("folder", metavar="DIR", help="a folder written by: export MODEL --recipe R --out DIR")
    parser.add_argument("--threads", type=int, default=2, help="intra-op threads (default 2)")
    parser.add_argument("--batch", type=int, default=32, help="batch size (default 32)")
    parser.add_argument("--runs", type=int, default=50, help="timed runs per candidate, interleaved (default 50)")
    parser.add_argument("--warmup", type=int, default=5, help="untimed runs per candidate first (default 5)")
    parser.add_argument("--json", action="store_true", help="print the candidates as JSON")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    rows = bench_folder(args.folder, args.threads, args.batch, args.runs, args.warmup)
    if args.json:
        print_json(rows)
        return 0
    print(runtime_line(rows[0]["runtime"]))
    print(format_table(COLUMNS, [[row[column] for column in COLUMNS] for row in rows]))
    print(
        f"\nbatch {args.batch}, {args.threads} threads, {args.runs} interleaved runs; speedup over original_fp32; "
        f"accuracy is {rows[0]['quality']} on the folder's evaluation data"
    )
    for row in rows:
        if row["float_layers"] and row["name"] not in FLOAT_FILES:
            print(f"{row['name']}: still float after ORT's optimization: {', '.join(row['float_layers'])}")
        slowest = ", ".join(f"{t['layer'] or t['node']} {100 * t['share']:.0f}%" for t in row["top_layers"][:3])
        print(f"{row['name']}: slowest nodes: {slowest}")
    for note in int8_notes(cpu_from_record(rows[0]["runtime"])):
        print(f"this CPU: {note}")
    per_layer = layer_comparison(rows)
    if per_layer:
        slower = [
            f"{row['layer']} ({row['fp32_ms']:.3f} -> {row['int8_ms']:.3f} ms)"
            for row in per_layer
            if row["speedup"] < 1
        ]
        unassigned = {row["name"]: row["layer_ms"].get(UNASSIGNED, 0.0) for row in rows}
        print(
            "per layer (profiler), compressed_fp32 -> compressed_int8: "
            + (
                f"int8 is slower on {', '.join(slower)}"
                if slower
                else f"int8 is faster on all {len(per_layer)} integer layers"
            )
            + f"; speed-ups from {per_layer[0]['speedup']:.2f}x to {per_layer[-1]['speedup']:.2f}x;"
            + f" nodes of no layer (quantize, transposes, pooling, adds) {unassigned['compressed_fp32']:.3f}"
            + f" -> {unassigned['compressed_int8']:.3f} ms"
        )
    return 0
