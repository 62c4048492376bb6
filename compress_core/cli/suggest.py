"""``suggest MODEL --target-size R`` (or ``--objective latency``): a per-layer plan, saved as a recipe."""

from __future__ import annotations

import argparse
from pathlib import Path

from compress_core.analysis.runners import using
from compress_core.analysis.suggest import suggest_plan, uniform_plan
from compress_core.analysis.suggest_latency import PLAN, suggest_latency
from compress_core.cli.common import add_model_arguments, format_table, load_from_args
from compress_core.cli.sensitivity import (
    add_runner_arguments,
    add_sweep_arguments,
    cache_from_args,
    runner_from_args,
    sweep_from_args,
)
from compress_core.models.handle import ModelHandle
from compress_core.ort.int8 import Int8Options

SHOWN = ("metric", "drop", "output_sqnr_db", "size_ratio", "macs_ratio", "plan_bytes")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``suggest`` subcommand."""
    parser = subparsers.add_parser("suggest", help="suggest a per-layer plan for a size / MACs / drop budget")
    add_model_arguments(parser)
    parser.add_argument("--target-size", type=float, help="plan bytes / float bytes to reach, e.g. 0.15")
    parser.add_argument(
        "--target-macs",
        type=float,
        help="compressed / original MACs to reach, e.g. 0.7 (needs structured or rank kinds)",
    )
    parser.add_argument("--max-drop", type=float, help="largest allowed drop of the metric, in points, e.g. 1.0")
    parser.add_argument("--out", type=Path, required=True, help="recipe file to write (.yaml, or .json)")
    parser.add_argument(
        "--objective",
        choices=("size", "latency"),
        default="size",
        help="size: meet the budgets with the least drop; latency: 8 bits where ONNX Runtime's int8 kernel is "
        "faster than fp32 on this CPU, float elsewhere (profiled, then measured on the exported file)",
    )
    parser.add_argument("--dynamic", action="store_true", help="latency objective: dynamic int8 (transformers)")
    parser.add_argument(
        "--compare-uniform",
        action="store_true",
        help="also measure the widest uniform bit width within the size target",
    )
    add_sweep_arguments(parser, default_kinds="bits,prune")
    add_runner_arguments(parser)
    parser.set_defaults(func=run_on_runner)


def run_on_runner(args: argparse.Namespace) -> int:
    """``run`` with the sensitivity sweep's cells where ``--workers`` / ``--ray`` say."""
    with runner_from_args(args) as runner, using(runner):
        return run(args)


def run(args: argparse.Namespace) -> int:
    handle = load_from_args(args)
    if args.objective == "latency":
        return run_latency(handle, args)
    sweep = sweep_from_args(args)
    suggestion = suggest_plan(
        handle,
        target_size=args.target_size,
        target_macs=args.target_macs,
        max_drop=args.max_drop,
        sweep=sweep,
        cache=cache_from_args(args),
    )
    suggestion.plan.save(args.out)
    rows = [["suggested", *(suggestion.metrics[key] for key in SHOWN)]]
    if args.compare_uniform and args.target_size is not None:
        plan, metrics = uniform_plan(handle, args.target_size, sweep)
        assert plan.default is not None, "a uniform plan is its default config"
        rows.append([f"uniform {plan.default.bits}-bit", *(metrics[key] for key in SHOWN)])
    print(format_table(("plan", *SHOWN), rows))
    status = "all budgets met" if suggestion.met else "; ".join(suggestion.notes)
    print(f"\n{len(suggestion.plan.layers)} layers planned; {status}; recipe written to {args.out}")
    return 0 if suggestion.met else 1


def run_latency(handle: ModelHandle, args: argparse.Namespace) -> int:
    """``suggest --objective latency``: the plan, each layer's kernel times, predicted and measured speed."""
    found = suggest_latency(handle, Int8Options(dynamic=args.dynamic))
    found.plan.save(args.out)
    ratios = {entry["layer"]: entry["ratio"] for entry in found.tried}
    print(
        format_table(
            ("layer", "fp32 ms", "int8 ms", "time with it float", "plan"),
            [
                [
                    row.layer,
                    row.fp32_ms,
                    row.int8_ms,
                    ratios.get(row.layer),
                    "float" if row.layer in found.float_layers else "8 bits",
                ]
                for row in found.layers
            ],
        )
    )
    rows = [
        [name, timing["median_ms"], timing["speedup"], found.quality[name]] for name, timing in found.measured.items()
    ]
    print()
    print(format_table(("file", "median ms", "speed-up", found.metric), rows))
    print(
        f"\npredicted speed-up {found.predicted_speedup:.2f}x (all int8: {found.all_int8_predicted:.2f}x), measured "
        f"{found.measured[PLAN]['speedup']:.2f}x at batch {found.batch}, {found.threads} threads; "
        f"{len(found.float_layers)} layer(s) kept float; recipe written to {args.out}"
    )
    return 0
