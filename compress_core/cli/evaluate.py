"""``evaluate MODEL [--recipe R]``: original and compressed metrics side by side."""

from __future__ import annotations

import argparse

from compress_core.analysis.report import format_value, metric_rows
from compress_core.cli.common import add_model_arguments, format_table, load_from_args, print_json
from compress_core.pipeline import PreparedModel, compress
from compress_core.plan import Plan


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("evaluate", help="accuracy, fidelity, size and MACs, before and after a recipe")
    add_model_arguments(parser)
    parser.add_argument("--recipe", help="recipe file (YAML or JSON); without it only the original is measured")
    parser.add_argument("--json", action="store_true", help="print one JSON object {original, compressed}")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    handle = load_from_args(args)
    if args.recipe:
        metrics = compress(handle, Plan.load(args.recipe)).evaluate()
    else:
        metrics = {"original": PreparedModel(handle).baseline().metrics}
    if args.json:
        print_json(metrics)
        return 0
    columns = [key for key in ("original", "compressed") if key in metrics]
    rows = [
        [label, *(format_value(metrics[c].get(key), kind) for c in columns)]
        for key, label, kind in metric_rows(handle.task, handle.quality.metric_label)
    ]
    print(format_table(["metric", *columns], rows))
    for note in metrics.get("compressed", {}).get("notes", []):
        print(f"note: {note}")
    if handle.data.generated:
        print(
            "note: no evaluation data was given; inputs were generated, so only fidelity to the original is meaningful"
        )
    return 0
