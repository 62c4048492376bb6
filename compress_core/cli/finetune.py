"""``finetune MODEL --recipe R --epochs N --out DIR``: compress, recover by distillation, save.

DIR receives ``model.pt`` (the fine-tuned state_dict), the recipe (``recipe.yaml``) and
``metrics.json``: ``before`` and ``after`` in the shape of ``compress_core.analysis.metrics.evaluate``
(original vs compressed, original vs fine-tuned) plus the settings and the loss per epoch.
"""

from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path

import torch

from compress_core import jsonio
from compress_core.analysis.recover import DEFAULT_ALPHA, DEFAULT_BATCH_SIZE, DEFAULT_LR, DEFAULT_TEMPERATURE, finetune
from compress_core.analysis.report import format_value, metric_rows
from compress_core.atomic import atomic_write_bytes, atomic_write_text
from compress_core.cli.common import add_model_arguments, format_table, load_from_args
from compress_core.models.evaldata import load_npz
from compress_core.pipeline import compress
from compress_core.plan import Plan


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``finetune`` subcommand."""
    parser = subparsers.add_parser(
        "finetune", help="apply a recipe, then recover accuracy by distillation from the original"
    )
    add_model_arguments(parser)
    parser.add_argument("--recipe", required=True, help="recipe file (YAML or JSON)")
    parser.add_argument("--epochs", type=int, required=True, help="passes over the training data")
    parser.add_argument("--lr", type=float, default=DEFAULT_LR, help=f"Adam learning rate (default {DEFAULT_LR})")
    parser.add_argument(
        "--temperature",
        type=float,
        default=DEFAULT_TEMPERATURE,
        help=f"distillation temperature (default {DEFAULT_TEMPERATURE})",
    )
    parser.add_argument(
        "--alpha",
        type=float,
        default=DEFAULT_ALPHA,
        help=f"weight of the distillation term against cross-entropy (default {DEFAULT_ALPHA})",
    )
    parser.add_argument(
        "--batch-size", type=int, default=DEFAULT_BATCH_SIZE, help=f"batch size (default {DEFAULT_BATCH_SIZE})"
    )
    parser.add_argument(
        "--train-data",
        type=Path,
        help=".npz to train on (default: a digits sample's training split, else the evaluation data)",
    )
    parser.add_argument(
        "--out", required=True, type=Path, help="output folder for model.pt, recipe.yaml and metrics.json"
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Compress, fine-tune, write the three files and print before/after."""
    plan = Plan.load(args.recipe)
    original = load_from_args(args)
    model = compress(original, plan)
    train = load_npz(args.train_data, original.input_specs) if args.train_data else None
    tuned, history = finetune(
        original,
        model.compressed.handle,
        epochs=args.epochs,
        lr=args.lr,
        temperature=args.temperature,
        alpha=args.alpha,
        batch_size=args.batch_size,
        progress=lambda epoch, epochs, loss: print(f"epoch {epoch}/{epochs}: loss {loss:.4f}", file=sys.stderr),
        data=train,
    )
    before = model.evaluate(with_zip=False)
    after = model.fine_tuned(tuned).evaluate(with_zip=False)
    settings = {
        "epochs": args.epochs,
        "lr": args.lr,
        "temperature": args.temperature,
        "alpha": args.alpha,
        "batch_size": args.batch_size,
    }
    buffer = io.BytesIO()
    torch.save(tuned.model.state_dict(), buffer)
    atomic_write_bytes(args.out / "model.pt", buffer.getvalue())
    plan.save(args.out / "recipe.yaml")
    metrics = {
        "model": original.name,
        "data": original.data.origin,
        "before": before,
        "after": after,
        "finetune": {**settings, "loss_history": history},
    }
    atomic_write_text(args.out / "metrics.json", jsonio.dumps(metrics))
    models = (before["original"], before["compressed"], after["compressed"])
    rows = [
        [label, *(format_value(model.get(key), kind) for model in models)]
        for key, label, kind in metric_rows(original.task, original.quality.metric_label)
        if key != "zip_bytes"
    ]
    print(format_table(("metric", "original", "compressed", "fine-tuned"), rows))
    for note in after["compressed"]["notes"]:
        print(f"note: {note}")
    print(f"\nwrote {args.out / 'model.pt'}, {args.out / 'recipe.yaml'} and {args.out / 'metrics.json'}")
    return 0
