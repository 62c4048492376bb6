"""``apply MODEL --recipe R --out DIR``: write the compressed model and its metrics."""

from __future__ import annotations

import argparse
from pathlib import Path

import onnx

from compress_core import jsonio
from compress_core.analysis.report import metrics_markdown
from compress_core.atomic import atomic_write_bytes, atomic_write_text
from compress_core.cli.common import add_model_arguments, load_from_args
from compress_core.models.torchscript import save_torchscript
from compress_core.pipeline import compress
from compress_core.plan import Plan


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("apply", help="apply a recipe and write the compressed model and metrics")
    add_model_arguments(parser)
    parser.add_argument("--recipe", required=True, help="recipe file (YAML or JSON)")
    parser.add_argument("--out", required=True, help="output folder")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    handle = load_from_args(args)
    plan = Plan.load(args.recipe)
    model = compress(handle, plan)
    metrics = model.evaluate()
    compressed = model.compressed.handle
    out = Path(args.out)
    written = [atomic_write_bytes(out / "model.onnx", model.compressed.onnx_model.SerializeToString())]
    if compressed.backend == "torch":
        save_torchscript(compressed, out / "model.ts")
        written.append(out / "model.ts")
    written.append(plan.save(out / "recipe.yaml"))
    written.append(atomic_write_text(out / "metrics.json", jsonio.dumps(metrics)))
    written.append(
        atomic_write_text(
            out / "metrics.md",
            metrics_markdown(
                metrics, f"{handle.name}: original and compressed", handle.task, handle.quality.metric_label
            ),
        )
    )
    onnx.checker.check_model(str(out / "model.onnx"))
    for path in written:
        print(path)
    return 0
