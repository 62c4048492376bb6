"""Sensitivity and suggestion benchmark: sweep wall times, activation-cache speed-up, 1/6-size plans.

Run from the repository root::

    python benchmarks/sensitivity.py [--repeats 3] [--threads N]

Writes ``benchmarks/results/sensitivity.md`` and ``.json``. Every sweep runs without the disk cache;
times are medians over ``--repeats`` runs (the machine is shared, so they are noisy).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from compress_core import load_model  # noqa: E402
from compress_core.analysis.sensitivity import run_sensitivity  # noqa: E402
from compress_core.analysis.suggest import suggest_plan, uniform_plan  # noqa: E402
from compress_core.analysis.sweep import Sweep  # noqa: E402
from compress_core.ort.runtime import runtime_line, runtime_record  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
SIZE_TARGET = 1 / 6
SWEEPS = {
    "digits_cnn": (Sweep(kinds=("bits", "prune")), 10.0),
    "digits_resnet": (Sweep(kinds=("bits", "prune")), 60.0),
    "minilm": (Sweep(kinds=("bits",)), 120.0),
}


def timed_sweep(handle, sweep: Sweep, repeats: int, staged: bool = True) -> tuple[float, object]:
    """Median wall time (s) of ``repeats`` uncached sweeps, and the last result."""
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        result = run_sensitivity(handle, sweep, cache=False, staged=staged)
        times.append(time.perf_counter() - started)
    return statistics.median(times), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    report = {
        "runtime": runtime_record(torch.get_num_threads(), threads_of="torch"),
        "machine": {"cpus": torch.get_num_threads(), "python": platform.python_version(), "torch": torch.__version__},
        "sweeps": {},
        "suggestions": {},
    }
    handles = {}
    for name, (sweep, limit) in SWEEPS.items():
        handles[name] = handle = load_model(name)
        seconds, result = timed_sweep(handle, sweep, args.repeats if name == "digits_cnn" else 1)
        report["sweeps"][name] = {
            "kinds": list(sweep.kinds),
            "layers": len({row.layer for row in result.rows}),
            "cells": len(result.rows),
            "seconds": round(seconds, 2),
            "limit_seconds": limit,
            "strategy": result.strategy,
            "most_sensitive_to_2_bits": result.ranking("bits")[:3] if 2 in sweep.bits else None,
        }
        print(name, report["sweeps"][name], flush=True)
    bits_only = Sweep(kinds=("bits",))
    staged, _ = timed_sweep(handles["digits_resnet"], bits_only, 1)
    full, _ = timed_sweep(handles["digits_resnet"], bits_only, 1, staged=False)
    report["activation_cache"] = {
        "model": "digits_resnet",
        "sweep": "bits",
        "staged_seconds": round(staged, 2),
        "full_pass_seconds": round(full, 2),
        "speedup": round(full / staged, 2),
    }
    print(report["activation_cache"], flush=True)
    for name in ("digits_cnn", "digits_resnet"):
        handle = handles[name]
        table = run_sensitivity(handle, SWEEPS[name][0], cache=False)
        suggestion = suggest_plan(handle, table, target_size=SIZE_TARGET)
        plan, uniform = uniform_plan(handle, SIZE_TARGET)
        report["suggestions"][name] = {
            "target_size": SIZE_TARGET,
            "suggested": suggestion.metrics,
            "met": suggestion.met,
            "plan": suggestion.plan.to_dict()["layers"],
            "uniform_bits": plan.default.bits,
            "uniform": uniform,
        }
        print(name, report["suggestions"][name], flush=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "sensitivity.json").write_text(json.dumps(report, indent=2))
    (RESULTS / "sensitivity.md").write_text(markdown(report))


def markdown(report: dict) -> str:
    """The report as a short Markdown page."""
    lines = [
        "# Sensitivity benchmark",
        "",
        runtime_line(report["runtime"]),
        "",
        f"`python benchmarks/sensitivity.py`; {report['machine']}",
        "",
        "## Sweeps (no disk cache)",
        "",
        "| model | kinds | layers | cells | seconds | limit | strategy |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, sweep in report["sweeps"].items():
        lines.append(
            f"| {name} | {','.join(sweep['kinds'])} | {sweep['layers']} | {sweep['cells']} | {sweep['seconds']} | {sweep['limit_seconds']} | {sweep['strategy']} |"
        )
    cache = report["activation_cache"]
    lines += [
        "",
        "## Activation cache",
        "",
        f"{cache['model']}, {cache['sweep']} sweep: staged {cache['staged_seconds']} s, full passes {cache['full_pass_seconds']} s, speed-up {cache['speedup']}x.",
        "",
        f"## Suggested plan vs uniform at size <= {SIZE_TARGET:.4f}",
        "",
        "| model | plan | accuracy % | drop | output SQNR dB | size ratio |",
        "|---|---|---|---|---|---|",
    ]
    for name, entry in report["suggestions"].items():
        for label, metrics in (
            ("suggested", entry["suggested"]),
            (f"uniform {entry['uniform_bits']}-bit", entry["uniform"]),
        ):
            lines.append(
                f"| {name} | {label} | {metrics['metric']:.2f} | {metrics['drop']:.2f} | {metrics['output_sqnr_db']:.1f} | {metrics['size_ratio']:.4f} |"
            )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
