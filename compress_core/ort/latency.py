"""Latency of ONNX files in ONNX Runtime, measured side by side.

Candidates run interleaved (A B C A B C ...) after a warm-up, so that a slow drift of the machine
(frequency, other processes) touches all of them alike; each reports median, p10 and p90 in ms and
throughput, and its speed-up over a baseline (the first candidate unless named).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from compress_core.errors import CompressError
from compress_core.models.inputs import Inputs, batch_of
from compress_core.models.sessions import make_session

Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class LatencyResult:
    """One candidate's timings over ``runs`` runs of one ``batch``-sized input on ``threads`` threads."""

    name: str
    path: str
    median_ms: float
    p10_ms: float
    p90_ms: float
    throughput: float  # samples per second at the median
    speedup: float  # baseline median / this median
    batch: int
    threads: int
    runs: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def timing_feed(inputs: Inputs, batch: int) -> dict[str, np.ndarray]:
    """One batch for timing runs, by input name: the first ``batch`` samples, repeated when there are fewer."""
    if batch < 1:
        raise CompressError(f"batch {batch} is not allowed; use an integer >= 1")
    return batch_of(inputs, batch).feed()


def measure_latency(
    candidates: Mapping[str, str | Path],
    inputs: Inputs,
    threads: int = 2,
    batch: int = 32,
    warmup: int = 5,
    runs: int = 50,
    baseline: str | None = None,
    progress: Progress | None = None,
) -> list[LatencyResult]:
    """Time each ONNX file of ``candidates`` (name -> path) on one batch of ``inputs``, interleaved.

    ``progress(done, total)`` is called after every timed or warm-up run. ``speedup`` is relative
    to ``baseline`` (a candidate name; the first candidate by default).
    """
    if not candidates:
        raise CompressError("no ONNX file to measure")
    if threads < 1 or runs < 1 or warmup < 0:
        raise CompressError(
            f"threads {threads}, runs {runs}, warm-up {warmup}: need threads >= 1, runs >= 1, warm-up >= 0"
        )
    baseline = baseline if baseline is not None else next(iter(candidates))
    if baseline not in candidates:
        raise CompressError(f"baseline '{baseline}' is not a candidate; candidates: {', '.join(candidates)}")
    feed = timing_feed(inputs, batch)
    sessions = {name: make_session(path, threads) for name, path in candidates.items()}
    times: dict[str, list[float]] = {name: [] for name in candidates}
    total = (warmup + runs) * len(sessions)
    done = 0
    for round_index in range(warmup + runs):
        for name, session in sessions.items():
            start = time.perf_counter()
            session.run(None, feed)
            elapsed = (time.perf_counter() - start) * 1000
            if round_index >= warmup:
                times[name].append(elapsed)
            done += 1
            if progress is not None:
                progress(done, total)
    medians = {name: float(np.median(values)) for name, values in times.items()}
    return [
        LatencyResult(
            name=name,
            path=str(candidates[name]),
            median_ms=medians[name],
            p10_ms=float(np.percentile(values, 10)),
            p90_ms=float(np.percentile(values, 90)),
            throughput=batch * 1000 / medians[name],
            speedup=medians[baseline] / medians[name],
            batch=batch,
            threads=threads,
            runs=runs,
        )
        for name, values in times.items()
    ]
