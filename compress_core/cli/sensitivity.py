"""``sensitivity MODEL``: the per-layer sensitivity table, written as CSV (and printed in short)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from compress_core.analysis.runners import CellRunner, runner_for
from compress_core.analysis.sensitivity import run_sensitivity
from compress_core.analysis.sweep import CSV_COLUMNS, KINDS, FailedCell, Progress, Sweep
from compress_core.atomic import atomic_write_text
from compress_core.cli.common import add_model_arguments, format_table, load_from_args
from compress_core.errors import CompressError

SHOWN_LAYERS = 10


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``sensitivity`` subcommand."""
    parser = subparsers.add_parser("sensitivity", help="measure each layer's sensitivity to bits, pruning and rank")
    add_model_arguments(parser)
    add_sweep_arguments(parser, default_kinds=",".join(KINDS))
    parser.add_argument("--hessian", action="store_true", help="add Hutchinson Hessian-trace rows (kind 'hessian')")
    parser.add_argument("--out", type=Path, required=True, help="CSV file: layer,kind,level,metric,drop,proxy")
    parser.add_argument("--quiet", action="store_true", help="no progress on stderr")
    add_runner_arguments(parser)
    parser.set_defaults(func=run)


def add_runner_arguments(parser: argparse.ArgumentParser) -> None:
    """Where the sweep's cells run: ``--workers N`` local processes, or ``--ray ADDRESS``."""
    parser.add_argument(
        "--workers",
        type=int,
        metavar="N",
        help="run cells in N local worker processes started for the run (with --ray local: the local Ray "
        "cluster's CPUs)",
    )
    parser.add_argument(
        "--ray",
        metavar="ADDRESS",
        help="run cells on Ray: auto (the cluster 'ray start' started here), ray://HOST:10001, or local (a cluster "
        "started for the run); needs pip install 'compression-explorer[ray]'",
    )


def runner_from_args(args: argparse.Namespace) -> CellRunner:
    """The runner ``--workers`` and ``--ray`` ask for (this process without them)."""
    return runner_for(args.workers, args.ray)


def add_sweep_arguments(parser: argparse.ArgumentParser, default_kinds: str) -> None:
    """The sweep's kinds and levels, and the result cache."""
    parser.add_argument(
        "--kinds", default=default_kinds, help=f"comma-separated, of {', '.join(KINDS)} (default {default_kinds})"
    )
    parser.add_argument("--bits", default="8,6,4,3,2", help="bit widths to try (default 8,6,4,3,2)")
    parser.add_argument("--ratios", default="0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.9", help="prune ratios to try")
    parser.add_argument("--ranks", default="0.75,0.5,0.25,0.1", help="ranks to try, as fractions of full rank")
    parser.add_argument(
        "--cache-dir", type=Path, help="folder for cached results (default ~/.cache/compress_explorer/sensitivity)"
    )
    parser.add_argument("--no-cache", action="store_true", help="neither read nor write cached results")


def sweep_from_args(args: argparse.Namespace) -> Sweep:
    """The ``Sweep`` the arguments describe; bad values are one-line errors."""
    return Sweep(
        bits=_bit_widths(args.bits, "--bits"),
        prune=_levels(args.ratios, "--ratios"),
        ranks=_levels(args.ranks, "--ranks"),
        kinds=tuple(kind.strip() for kind in args.kinds.split(",") if kind.strip()),
    )


def cache_from_args(args: argparse.Namespace) -> bool | Path:
    """The ``cache`` argument of ``run_sensitivity``: False, a folder, or True (the default folder)."""
    return False if args.no_cache else (args.cache_dir or True)


def _levels(text: str, option: str) -> tuple[int | float, ...]:
    """``"8,4"`` -> ``(8, 4)``, ``"0.5,0.25"`` -> ``(0.5, 0.25)``: integers stay integers."""
    try:
        return tuple(int(part) if part.strip().isdigit() else float(part) for part in text.split(",") if part.strip())
    except ValueError as exc:
        raise CompressError(f"{option} '{text}' is not a comma-separated list of numbers") from exc


def _bit_widths(text: str, option: str) -> tuple[int, ...]:
    """``"8,4"`` -> ``(8, 4)``: bit widths are integers."""
    try:
        return tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError as exc:
        raise CompressError(f"{option} '{text}' is not a comma-separated list of integers") from exc


class _ProgressLine:
    """The sweep's progress, rewritten in place on one stderr line; ``end`` closes that line, if one was
    started, so that what follows (the table, or an error) starts on its own."""

    def __init__(self) -> None:
        self.started = False

    def __call__(self, step: Progress) -> None:
        print(
            f"\rlayer {step.layer_index}/{step.layer_count} ({step.layer}), cell {step.cell}/{step.cell_count}",
            end="",
            file=sys.stderr,
            flush=True,
        )
        self.started = True

    def end(self) -> None:
        if self.started:
            print(file=sys.stderr)
            self.started = False


def run(args: argparse.Namespace) -> int:
    handle = load_from_args(args)
    sweep = sweep_from_args(args)
    progress = _ProgressLine()
    try:
        with runner_from_args(args) as runner:
            result = run_sensitivity(
                handle,
                sweep,
                hessian=args.hessian,
                cache=cache_from_args(args),
                progress=None if args.quiet else progress,
                runner=runner,
            )
    finally:
        progress.end()
    atomic_write_text(args.out, result.to_csv())
    rows = result.ranked_rows(sweep.kinds[0])[:SHOWN_LAYERS]
    print(format_table(CSV_COLUMNS, [[getattr(row, column) for column in CSV_COLUMNS] for row in rows]))
    source = "cache" if result.cached else result.strategy
    print(
        f"\n{len(result.rows)} cells measured, {len(result.skipped)} skipped{_failed(result.failed)}; original {result.metric_name} {result.baseline:.4g}{'' if handle.quality.metric_label else '%'}; "
        f"{result.seconds:.2f} s ({source}); table written to {args.out}"
    )
    return 0


def _failed(failed: list[FailedCell]) -> str:
    """``, N failed (first: ...)`` for the summary line, or nothing."""
    if not failed:
        return ""
    first = failed[0]
    return f", {len(failed)} failed (first: {first.layer} {first.kind} {first.level}: {first.error})"
