"""Latency of ONNX files in ONNX Runtime, measured side by side.

Candidates run interleaved (A B C A B C ...) after a warm-up, so that a slow drift of the machine
(frequency, other processes) touches all of them alike; each reports median, p10 and p90 in ms and
throughput, and its speed-up over a baseline (the first candidate unless named).

A budgeted caller (``ort.bench``) opens the sessions itself and times one run of each first
(``open_and_probe``), lets the warm-up decide the number of timed runs (``choose_runs``), and may
stop the timing: when its time is up, or when ``cancel()`` is true, the rounds timed so far are the
result.
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


def open_and_probe(model: Any, inputs: Inputs, batch: int, threads: int | None = 2) -> tuple[Any, float, float]:
    """A timed session on ``model`` (a path or a ``ModelProto``) and what it cost: seconds to open it,
    and of one run on one ``batch`` of ``inputs`` (the second: a first run also allocates)."""
    feed = timing_feed(inputs, batch)
    start = time.perf_counter()
    session = make_session(model, threads)
    opened = time.perf_counter()
    session.run(None, feed)
    second = time.perf_counter()
    session.run(None, feed)
    return session, opened - start, time.perf_counter() - second


def measure_latency(
    candidates: Mapping[str, str | Path],
    inputs: Inputs,
    threads: int = 2,
    batch: int = 32,
    warmup: int = 5,
    runs: int = 50,
    baseline: str | None = None,
    progress: Progress | None = None,
    *,
    sessions: Mapping[str, Any] | None = None,
    cancel: Callable[[], bool] | None = None,
    choose_runs: Callable[[dict[str, float]], int] | None = None,
    time_up: Callable[[], bool] | None = None,
) -> list[LatencyResult]:
    """Time each ONNX file of ``candidates`` (name -> path) on one batch of ``inputs``, interleaved.

    ``progress(done, total)`` is called after every timed or warm-up run. ``speedup`` is relative
    to ``baseline`` (a candidate name; the first candidate by default). ``sessions`` (name ->
    session on ``threads`` threads) are used instead of opening new ones. After the warm-up,
    ``choose_runs`` (given each candidate's seconds per run at ``batch``) sets the number of timed
    runs. No timed round starts once ``time_up()`` is true (after the first); when
    ``cancel()`` turns true, the run under way ends the timing. Either way each result holds the
    complete rounds so far (``runs`` says how many); none when no round was complete.
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
    if sessions is None:
        sessions = {name: make_session(path, threads) for name, path in candidates.items()}
    else:
        sessions = {name: sessions[name] for name in candidates}
    warm: dict[str, list[float]] = {name: [] for name in candidates}
    times: dict[str, list[float]] = {name: [] for name in candidates}
    total = (warmup + runs) * len(sessions)
    done = 0
    round_index = 0
    while round_index < warmup + runs:
        if round_index == warmup and choose_runs is not None and warmup > 0:
            runs = max(
                1, choose_runs({name: float(np.median(values[1:] or values)) / 1000 for name, values in warm.items()})
            )
            total = (warmup + runs) * len(sessions)
        if round_index > warmup and time_up is not None and time_up():
            break
        for name, session in sessions.items():
            if cancel is not None and cancel():
                complete = min(len(values) for values in times.values())
                times = {key: values[:complete] for key, values in times.items()}
                return _results(candidates, times, baseline, batch, threads)
            start = time.perf_counter()
            session.run(None, feed)
            elapsed = (time.perf_counter() - start) * 1000
            (times if round_index >= warmup else warm)[name].append(elapsed)
            done += 1
            if progress is not None:
                progress(done, total)
        round_index += 1
    return _results(candidates, times, baseline, batch, threads)


def _results(
    candidates: Mapping[str, str | Path], times: dict[str, list[float]], baseline: str, batch: int, threads: int
) -> list[LatencyResult]:
    """One ``LatencyResult`` per candidate from its timed runs (ms); none without a timed round."""
    if not all(times.values()):
        return []
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
            runs=len(values),
        )
        for name, values in times.items()
    ]
