"""``bench DIR``: latency, speed-up, quality and size of an export folder's ONNX files, side by side.

The whole benchmark fits ``--budget`` seconds (default 45): batch and runs are chosen from a first
timed run of each file, and the plan (batch, runs, estimated seconds) is printed on stderr before the
long steps, then the progress with the time left. Ctrl-C stops it and prints what was measured
(exit code 130); a second Ctrl-C quits at once.

The first line names the CPU, its int8 features, ONNX Runtime's version and the thread count, and the
host that measured: the figures below hold for that machine only. Latency is measured here by default;
``--ray ADDRESS --latency-on cluster`` measures on a node of that Ray cluster instead (one task taking
``--threads`` CPUs; timings on a shared cluster are not comparable with local ones). ``--workers N``
sets the CPUs of a cluster started for the run (``--ray local``).
"""

from __future__ import annotations

import argparse
import signal
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any

from compress_core.analysis.runners import RayRunner, bench_on_ray, import_ray
from compress_core.cli.common import format_table, print_json
from compress_core.errors import CompressError
from compress_core.ort.bench import UNASSIGNED, bench_folder, layer_comparison
from compress_core.ort.budget import DEFAULT_BUDGET_S, BenchPlan, format_seconds
from compress_core.ort.runtime import cpu_from_record, int8_notes, runtime_line

FLOAT_FILES = ("original_fp32", "compressed_fp32")  # every layer of these is float: no news
COLUMNS = ("name", "median_ms", "p10_ms", "p90_ms", "speedup", "accuracy", "bytes", "zip_bytes", "float_nodes")
PROGRESS_EVERY_S = 5.0  # a progress line on stderr at most this often, besides each new step
STOPPED_EXIT = 130


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("bench", help="measure the ONNX files of an export folder in ONNX Runtime")
    parser.add_argument("folder", metavar="DIR", help="a folder written by: export MODEL --recipe R --out DIR")
    parser.add_argument("--threads", type=int, default=2, help="intra-op threads (default 2)")
    parser.add_argument(
        "--budget",
        type=float,
        default=DEFAULT_BUDGET_S,
        metavar="SECONDS",
        help=f"seconds the whole benchmark may take (default {DEFAULT_BUDGET_S:g}); batch and runs not given are "
        "chosen to fit it; 0 for no budget (batch 32, 50 runs)",
    )
    parser.add_argument(
        "--batch", type=int, help="batch size (default: the largest up to 32 that fits the budget; a static batch wins)"
    )
    parser.add_argument(
        "--runs", type=int, help="timed runs per candidate, interleaved (default: as many as fit, 5 to 100)"
    )
    parser.add_argument("--warmup", type=int, help="untimed runs per candidate first (default: 1 to 5)")
    parser.add_argument("--json", action="store_true", help="print the candidates as JSON")
    parser.add_argument(
        "--ray", metavar="ADDRESS", help="a Ray cluster (auto, ray://HOST:10001, local) for --latency-on cluster"
    )
    parser.add_argument(
        "--workers", type=int, metavar="N", help="CPUs of the cluster started for the run (--ray local)"
    )
    parser.add_argument(
        "--latency-on",
        choices=("local", "cluster"),
        default="local",
        help="where latency is measured: here (default) or on a node of the --ray cluster",
    )
    parser.set_defaults(func=run)


class _Progress:
    """Progress lines on stderr: one per step, and one every ``PROGRESS_EVERY_S`` seconds within it."""

    def __init__(self) -> None:
        self.step = ""
        self.printed = 0.0

    def __call__(self, fraction: float, text: str) -> None:
        step = text.split(":")[0].split(";")[0]
        now = time.monotonic()
        if step != self.step or now - self.printed >= PROGRESS_EVERY_S:
            self.step, self.printed = step, now
            print(f"[{100 * fraction:3.0f}%] {text}", file=sys.stderr, flush=True)


def run(args: argparse.Namespace) -> int:
    budget = args.budget if args.budget and args.budget > 0 else None
    stop = threading.Event()
    plans: list[BenchPlan] = []

    def on_plan(plan: BenchPlan) -> None:
        plans.append(plan)
        print(f"plan: {plan.summary()}", file=sys.stderr, flush=True)

    host = socket.gethostname()
    if args.ray is not None:
        import_ray()  # without Ray: one line saying how to install it
    if args.latency_on == "cluster" and args.ray is None:
        raise CompressError("--latency-on cluster needs --ray ADDRESS (auto, ray://HOST:10001 or local)")
    if args.latency_on == "local" and (args.ray is not None or args.workers is not None):
        print(
            f"latency is measured here, on {host}: --latency-on cluster measures on the cluster instead",
            file=sys.stderr,
            flush=True,
        )
    start = time.monotonic()
    with _stop_on_interrupt(stop):
        if args.latency_on == "cluster":
            print("benchmarking on a node of the Ray cluster (no progress shown)", file=sys.stderr, flush=True)
            with RayRunner(args.ray, args.workers) as cluster:
                rows, host = bench_on_ray(
                    cluster,
                    Path(args.folder),
                    args.threads,
                    stop.is_set,
                    batch=args.batch,
                    runs=args.runs,
                    warmup=args.warmup,
                    budget_s=budget,
                )
        else:
            rows = bench_folder(
                args.folder,
                args.threads,
                args.batch,
                args.runs,
                args.warmup,
                _Progress(),
                budget_s=budget,
                cancel=stop.is_set,
                on_plan=on_plan,
            )
    seconds = time.monotonic() - start
    stopped = stop.is_set()
    if args.json:
        print_json([{**row, "host": host} for row in rows])
        return STOPPED_EXIT if stopped else 0
    if not rows:
        print(f"stopped after {format_seconds(seconds)}, before any file was timed", file=sys.stderr)
        return STOPPED_EXIT
    print(f"{runtime_line(rows[0]['runtime'])}; measured on host {host}")
    print(format_table(COLUMNS, [[row[column] for column in COLUMNS] for row in rows]))
    budget_text = f" of a {format_seconds(budget)} budget" if budget is not None else ""
    estimate_text = f" (estimated {format_seconds(plans[0].estimated_s)})" if plans else ""
    print(
        f"\nbatch {rows[0]['batch']}, {args.threads} threads, {rows[0]['runs']} interleaved runs after "
        f"{rows[0]['warmup']} warm-up; measured in {seconds:.1f} s{budget_text}{estimate_text}; speedup over "
        f"original_fp32; accuracy is {rows[0]['quality']} on the folder's evaluation data"
    )
    if stopped:
        unfinished = [row["name"] for row in rows if not row["complete"]]
        print(
            "stopped early: the timed runs so far are kept"
            + (f"; no quality, census or profile for {', '.join(unfinished)}" if unfinished else "")
        )
    for row in (row for row in rows if row["complete"]):
        if row["float_layers"] and row["name"] not in FLOAT_FILES:
            print(f"{row['name']}: still float after ORT's optimization: {', '.join(row['float_layers'])}")
        slowest = ", ".join(f"{t['layer'] or t['node']} {100 * t['share']:.0f}%" for t in row["top_layers"][:3])
        print(f"{row['name']}: slowest nodes: {slowest}")
    for note in int8_notes(cpu_from_record(rows[0]["runtime"])):
        print(f"this CPU: {note}")
    per_layer = layer_comparison([row for row in rows if row["complete"]])
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
    return STOPPED_EXIT if stopped else 0


class _stop_on_interrupt:
    """While open, Ctrl-C sets ``stop`` (the benchmark ends at its next run and keeps what it has);
    a second Ctrl-C raises ``KeyboardInterrupt``. Only in the main thread (signals go there)."""

    def __init__(self, stop: threading.Event) -> None:
        self.stop = stop
        self.previous: Any = None

    def __enter__(self) -> None:
        if threading.current_thread() is threading.main_thread():
            self.previous = signal.signal(signal.SIGINT, self._handle)

    def __exit__(self, *exc: object) -> None:
        if self.previous is not None:
            signal.signal(signal.SIGINT, self.previous)

    def _handle(self, signum: int, frame: object) -> None:
        if self.stop.is_set():
            raise KeyboardInterrupt
        self.stop.set()
        print("stopping: the results so far follow (Ctrl-C again to quit)", file=sys.stderr, flush=True)
