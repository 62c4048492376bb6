"""Time budgets for the long steps: the latency benchmark's plan, the export's estimate, and progress
with time left and a stop for both.

The latency benchmark (``ort.bench.bench_folder``) first opens each candidate and times one run at a
small batch (the probe). ``plan_bench`` then picks the batch and the number of runs so that the whole
benchmark fits ``budget_s`` (``DEFAULT_BUDGET_S``): opening the sessions, ONNX Runtime's default
quantization, the warm-up and timed runs, each candidate's run on the evaluation data (its quality),
the op census and the profiler. The cost of a run grows linearly with the batch from the probe, which
overestimates larger batches (they cost less per sample); the warm-up at the chosen batch measures
the real cost, and ``runs_that_fit`` sets the number of timed runs from it. The plan aims at
``PLAN_SHARE`` of the budget, for what it does not model. A static batch always wins; a batch or a
number of runs the caller gives is kept, and the plan then only estimates.

``export_steps`` estimates an export's steps from one timed forward pass of the model.

``Tracker`` follows a job made of estimated steps: the fraction done and the time left (the steps
to come scaled by how fast the finished ones went) for a progress bar, and the stop: ``begin`` and
``check`` raise ``Stopped`` once ``cancel()`` is true.
"""

from __future__ import annotations

import contextlib
import math
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from compress_core.errors import CompressError

DEFAULT_BUDGET_S = 45.0  # the latency benchmark's default budget, in seconds
PLAN_SHARE = 0.9  # the plan fills this share of the budget: the rest is headroom
DEFAULT_BATCH = 32  # the batch the benchmark prefers, when it fits
DEFAULT_RUNS = 50  # timed runs without a budget
DEFAULT_WARMUP = 5
MIN_RUNS = 5  # fewer timed runs than this give no p10 / p90 worth showing
GOOD_RUNS = 20  # a batch is chosen only if this many timed runs fit with it
MAX_RUNS = 100  # a budget is a limit, not a target: a fast model stops here
PROFILE_RUNS = 10  # the profiler's runs per candidate, at most
SESSION_FACTOR = 1.5  # opening a session that saves ORT's optimized graph (census, profiler) vs. a timed one
PROFILE_FACTOR = 1.5  # a profiled run against a timed one (the profiler's own work)
ANALYSIS_MARGIN = 1.3  # the analysis after the timing cannot be cut short: it is planned this much longer
ORT_DEFAULT_FACTOR = 2.0  # ORT's default int8 against the original fp32, before it is measured (S8S8 can be slower)
CALIBRATION_FACTOR = 2.5  # one calibration sample of ORT's quantizer, in forward passes of the model
QUANTIZE_BYTES_PER_S = 20e6  # ORT's quantizer, per byte of the fp32 model, besides calibration
WRITE_BYTES_PER_S = 25e6  # writing an export's files (the evaluation data zipped)
ZIP_BYTES_PER_S = 10e6  # zipping an ONNX export to measure its zipped size
LOAD_BYTES_PER_S = 100e6  # opening an ONNX Runtime session, per byte of the model


class Stopped(CompressError):
    """A long step ended early because its ``cancel`` callback said so."""


def format_seconds(seconds: float) -> str:
    """``< 1 s``, ``12 s``, ``3 min 05 s``, ``1 h 05 min``: one way to write a duration everywhere."""
    if seconds < 1:
        return "< 1 s"
    if seconds < 60:
        return f"{seconds:.0f} s"
    minutes, rest = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {rest:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


# The latency benchmark ----------------------------------------------------------------------------


@dataclass(frozen=True)
class BenchCosts:
    """What a benchmark plan is made from, in seconds: per candidate, one run at ``probe_batch``
    (``run_s``) and opening its timed session (``session_s``); the number of evaluation samples
    each candidate runs for its quality; the model's static batch (None when free); and
    ``pending_s``, the work still to do before the timing (ORT's default quantization)."""

    run_s: Mapping[str, float]
    session_s: Mapping[str, float]
    samples: int
    probe_batch: int = 1
    fixed_batch: int | None = None
    pending_s: float = 0.0

    def round_s(self, batch: int) -> float:
        """One interleaved round (one run of every candidate) at ``batch``: linear from the probe."""
        return sum(self.run_s.values()) * batch / self.probe_batch

    def quality_s(self) -> float:
        """Every candidate on the evaluation data (padded to whole static batches)."""
        samples = self.samples
        if self.fixed_batch:
            samples = math.ceil(samples / self.fixed_batch) * self.fixed_batch
        return sum(self.run_s.values()) * samples / self.probe_batch

    def sessions_s(self) -> float:
        """The census's and the profiler's sessions (the timed ones are open already or in ``pending_s``)."""
        return 2 * SESSION_FACTOR * sum(self.session_s.values())

    def analysis_s(self, profile_runs: int, round_s: float) -> float:
        """What follows the timing, with ``ANALYSIS_MARGIN``: quality, census, and the profiler's
        warm-up and runs (``round_s``: one round at the timing's batch)."""
        return ANALYSIS_MARGIN * (self.quality_s() + self.sessions_s() + PROFILE_FACTOR * (1 + profile_runs) * round_s)


@dataclass(frozen=True)
class BenchPlan:
    """How the benchmark runs: ``batch``, timed ``runs`` per candidate after ``warmup`` runs, the
    profiler's ``profile_runs``, and the estimated seconds of the whole benchmark against
    ``budget_s`` (None: no budget). ``auto_runs``: the runs are the budget's to set (after the
    warm-up measured the chosen batch). ``batch_note`` says why this batch."""

    batch: int
    runs: int
    warmup: int
    profile_runs: int
    estimated_s: float
    budget_s: float | None
    batch_note: str
    auto_runs: bool
    over_note: str = ""

    @property
    def fits(self) -> bool:
        return self.budget_s is None or self.estimated_s <= self.budget_s

    def summary(self) -> str:
        """One line: ``batch 1 (the model's static batch), 30 timed runs after 3 warm-up runs,
        profiler 4 runs: about 41 s (budget 45 s)``."""
        text = (
            f"batch {self.batch} ({self.batch_note}), {self.runs} timed run{'s' if self.runs != 1 else ''} "
            f"after {self.warmup} warm-up, profiler {self.profile_runs} run{'s' if self.profile_runs != 1 else ''}: "
            f"about {format_seconds(self.estimated_s)}"
        )
        if self.budget_s is None:
            return text + " (no budget)"
        if self.fits:
            return text + f" (budget {format_seconds(self.budget_s)})"
        return (
            text + f", over the {format_seconds(self.budget_s)} budget{': ' + self.over_note if self.over_note else ''}"
        )

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "fits": self.fits, "summary": self.summary()}


def plan_bench(
    costs: BenchCosts,
    budget_s: float | None = DEFAULT_BUDGET_S,
    *,
    spent_s: float = 0.0,
    batch: int | None = None,
    runs: int | None = None,
    warmup: int | None = None,
    preferred_batch: int = DEFAULT_BATCH,
) -> BenchPlan:
    """The batch, runs, warm-up and profiler runs that fit ``budget_s`` (``spent_s`` already gone).

    The model's static batch wins over ``batch``; a given ``batch``, ``runs`` or ``warmup`` is kept.
    Otherwise the batch is the largest power of two up to ``preferred_batch`` with which
    ``GOOD_RUNS`` timed runs fit (1 when none does), and the runs fill the budget up to ``MAX_RUNS``
    (at least ``MIN_RUNS``). Without a budget: ``preferred_batch``, ``DEFAULT_RUNS``.
    """
    if budget_s is not None and budget_s <= 0:
        raise CompressError(f"budget {budget_s} s is not allowed; give a number of seconds > 0")
    for what, value in (("batch", batch), ("runs", runs)):
        if value is not None and value < 1:
            raise CompressError(f"{what} {value} is not allowed; use an integer >= 1")
    if warmup is not None and warmup < 0:
        raise CompressError(f"warm-up {warmup} is not allowed; use an integer >= 0")
    target = None if budget_s is None else budget_s * PLAN_SHARE
    fixed = spent_s + costs.pending_s

    def total(size: int, warm: int, profile: int, timed: int) -> float:
        round_s = costs.round_s(size)
        return fixed + (warm + timed) * round_s + costs.analysis_s(profile, round_s)

    def shares(size: int) -> tuple[int, int, int]:
        """Warm-up, profiler runs and timed runs at ``size`` within the budget."""
        if target is None:
            return (
                (DEFAULT_WARMUP if warmup is None else warmup),
                PROFILE_RUNS,
                (DEFAULT_RUNS if runs is None else runs),
            )
        round_s = max(costs.round_s(size), 1e-9)
        rounds = max(
            0.0, (target - fixed - costs.analysis_s(0, 0.0)) / round_s
        )  # in rounds, the analysis's fixed part out
        warm = min(DEFAULT_WARMUP, max(1, int(rounds // 10))) if warmup is None else warmup
        profile = min(PROFILE_RUNS, max(1, int(rounds // 12)))
        profiled = ANALYSIS_MARGIN * PROFILE_FACTOR * (1 + profile)  # the profiler's runs, in rounds
        timed = min(MAX_RUNS, max(MIN_RUNS, int(rounds - profiled) - warm)) if runs is None else runs
        return warm, profile, timed

    if costs.fixed_batch:
        chosen, note = costs.fixed_batch, "the model's static batch"
    elif batch is not None:
        chosen, note = batch, "as asked"
    elif target is None:
        chosen, note = preferred_batch, "the default"
    else:
        chosen, note = 1, f"the smallest; fewer than {GOOD_RUNS} runs fit the budget even so"
        need = GOOD_RUNS if runs is None else runs
        size = preferred_batch
        while size >= 1:
            warm, profile, _ = shares(size)
            if total(size, warm, profile, need) <= target:
                chosen = size
                note = "the preferred batch" if size == preferred_batch else f"the largest that fits {GOOD_RUNS} runs"
                break
            size //= 2
    warm, profile, timed = shares(chosen)
    estimated = total(chosen, warm, profile, timed)
    over = ""
    if budget_s is not None and estimated > budget_s:
        heavy = max(
            (
                (costs.quality_s(), f"running {len(costs.run_s)} files on {costs.samples} samples for their quality"),
                (costs.pending_s, "ONNX Runtime's default quantization"),
                (costs.round_s(chosen) * (warm + timed), f"{warm + timed} runs of each file at batch {chosen}"),
            ),
            key=lambda item: item[0],
        )
        over = f"{heavy[1]} takes about {format_seconds(heavy[0])} alone"
    return BenchPlan(
        chosen, timed, warm, profile, estimated, budget_s, note, runs is None and budget_s is not None, over
    )


def costs_before_quantization(
    run_s: Mapping[str, float],
    session_s: Mapping[str, float],
    samples: int,
    model_bytes: int,
    *,
    probe_batch: int = 1,
    fixed_batch: int | None = None,
    calibration_samples: int = 64,
    reference: str = "original_fp32",
    quantized: str = "ort_default_int8",
) -> BenchCosts:
    """``BenchCosts`` before ONNX Runtime's default quantization of ``reference`` (``model_bytes``
    of fp32) has made ``quantized``: its cost (the quantizer's pass over the model, calibration on
    ``calibration_samples``, opening the result twice) is pending, and ``quantized`` is taken to run
    ``ORT_DEFAULT_FACTOR`` times as long as ``reference``."""
    forward_s = run_s[reference] / probe_batch
    pending = (
        0.5
        + model_bytes / QUANTIZE_BYTES_PER_S
        + min(calibration_samples, samples) * forward_s * CALIBRATION_FACTOR
        + 2 * session_s[reference]
    )
    return BenchCosts(
        {**run_s, quantized: run_s[reference] * ORT_DEFAULT_FACTOR},
        {**session_s, quantized: session_s[reference]},
        samples,
        probe_batch,
        fixed_batch,
        pending,
    )


def runs_that_fit(plan: BenchPlan, costs: BenchCosts, measured: Mapping[str, float], spent_s: float) -> int:
    """The timed runs once the warm-up has measured each candidate at the plan's batch (``measured``:
    seconds of one run), ``spent_s`` after the start: what is left of the budget after the
    analysis, in rounds, within ``MIN_RUNS`` and ``MAX_RUNS``. The plan's runs when they were given."""
    if not plan.auto_runs or plan.budget_s is None:
        return plan.runs
    round_s = max(sum(measured.values()), 1e-9)
    left = plan.budget_s * PLAN_SHARE - spent_s - costs.analysis_s(plan.profile_runs, round_s)
    return min(MAX_RUNS, max(MIN_RUNS, int(left / round_s)))


# The export ---------------------------------------------------------------------------------------

EXPORT_PREPARE = "prepare"
EXPORT_WRITE = "write"
EXPORT_INT8 = "int8"
EXPORT_RUN = "run"
EXPORT_CENSUS = "census"


@dataclass(frozen=True)
class Step:
    """One step of a long job: a key, what a progress line calls it, and its estimated seconds."""

    key: str
    text: str
    seconds: float


def export_steps(
    forward_s: float,
    samples: int,
    *,
    onnx_bytes: int,
    data_bytes: int,
    int8: str | None,
    calibration_samples: int = 64,
    prepared: bool = True,
    census: bool = False,
) -> list[Step]:
    """The steps of an export and their estimated seconds, from ``forward_s`` (one sample through the
    model in ONNX Runtime), the evaluation ``samples``, the fp32 model's and the data's bytes, and
    ``int8`` (``static``, ``dynamic`` or None). ``prepared``: the compressed model is measured and
    exported already (Apply did it); ``census``: the caller counts the int8 file's kernels after."""
    load = onnx_bytes / LOAD_BYTES_PER_S
    steps = [
        Step(
            EXPORT_PREPARE,
            "measuring the compressed model",
            0.0 if prepared else 2 * samples * forward_s + 2 * onnx_bytes / ZIP_BYTES_PER_S,
        ),
        Step(
            EXPORT_WRITE,
            "writing the ONNX files and the evaluation data",
            0.2 + (2 * onnx_bytes + data_bytes) / WRITE_BYTES_PER_S,
        ),
    ]
    if int8 is not None:
        calibration = 0.0 if int8 == "dynamic" else min(calibration_samples, samples) * forward_s * CALIBRATION_FACTOR
        steps.append(
            Step(EXPORT_INT8, f"quantizing to int8 ({int8})", 0.5 + onnx_bytes / QUANTIZE_BYTES_PER_S + calibration)
        )
    files = 3 if int8 is not None else 2
    steps.append(Step(EXPORT_RUN, "running every ONNX file in ONNX Runtime", files * (load + samples * forward_s)))
    if census and int8 is not None:
        steps.append(Step(EXPORT_CENSUS, "counting the int8 file's integer kernels", 0.2 + SESSION_FACTOR * load))
    return steps


# Progress -----------------------------------------------------------------------------------------


@dataclass
class Tracker:
    """Progress of a job made of estimated ``steps``: ``report(fraction, text)`` with the time left,
    and the stop: ``begin`` and ``check`` raise ``Stopped`` once ``cancel()`` is true.

    The time left is the current step's rest (from its share done when ``tick`` tells it, else its
    estimate) plus the estimates of the steps to come, scaled by how fast the finished ones went.
    """

    steps: Sequence[Step] = ()
    report: Callable[[float, str], None] | None = None
    cancel: Callable[[], bool] | None = None
    clock: Callable[[], float] = time.monotonic
    estimates: dict[str, float] = field(init=False)
    texts: dict[str, str] = field(init=False)
    actual: dict[str, float] = field(init=False, default_factory=dict)
    current: str | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        self.estimates = {step.key: step.seconds for step in self.steps}
        self.texts = {step.key: step.text for step in self.steps}
        self.started = self.step_started = self.clock()
        self.share = 0.0
        self.text = ""
        self.shown = 0.0  # the fraction reported last: a progress bar never moves back

    @property
    def elapsed_s(self) -> float:
        return self.clock() - self.started

    @property
    def estimated_s(self) -> float:
        """The job's estimated total: the estimates, as first given or later set."""
        return sum(self.estimates.values())

    def estimate(self, key: str, seconds: float, text: str | None = None) -> None:
        """Set (or add) a step's estimate, e.g. once a plan is known."""
        self.estimates[key] = max(0.0, seconds)
        if text is not None or key not in self.texts:
            self.texts[key] = text or key

    def stopped(self) -> bool:
        return self.cancel is not None and bool(self.cancel())

    def check(self) -> None:
        """Raise ``Stopped`` when the job is to stop."""
        if self.stopped():
            raise Stopped(f"stopped after {format_seconds(self.elapsed_s)}")

    def begin(self, key: str, text: str | None = None, check: bool = True) -> None:
        """End the current step, stop here if asked (``Stopped``; not with ``check=False``), and
        start ``key``."""
        self._close()
        if check:
            self.check()
        self.current, self.step_started, self.share = key, self.clock(), 0.0
        self.estimates.setdefault(key, 0.0)
        self.text = text or self.texts.get(key, key)
        self._report()

    def tick(self, done: float, total: float, text: str | None = None) -> None:
        """The current step is ``done`` of ``total`` through (never stops the job)."""
        self.share = min(max(done / total, 0.0), 1.0) if total > 0 else 0.0
        if text is not None:
            self.text = text
        self._report()

    def refresh(self) -> None:
        """Report again: the time left moves on while a step runs without ticks."""
        if self.current is not None:
            self._report()

    @contextlib.contextmanager
    def ticking(self, every_s: float = 1.0) -> Iterator[Tracker]:
        """While open, ``refresh`` every ``every_s`` seconds from a daemon thread."""
        done = threading.Event()

        def tick() -> None:
            while not done.wait(every_s):
                self.refresh()

        thread = threading.Thread(target=tick, name="tracker-refresh", daemon=True)
        thread.start()
        try:
            yield self
        finally:
            done.set()
            thread.join()

    def finish(self, text: str = "done") -> None:
        self._close()
        self.current = None
        if self.report is not None:
            self.report(1.0, f"{text} in {format_seconds(self.elapsed_s)}")

    def left_s(self) -> float:
        """Seconds left, by the estimates corrected by the pace of the finished steps."""
        estimated_done = sum(self.estimates.get(key, 0.0) for key in self.actual)
        actual_done = sum(self.actual.values())
        pace = min(max(actual_done / estimated_done, 0.5), 3.0) if estimated_done > 0.5 and actual_done > 0.5 else 1.0
        left = 0.0
        if self.current is not None:
            spent = self.clock() - self.step_started
            if self.share >= 0.1:
                left = spent * (1 - self.share) / self.share
            else:
                left = max(self.estimates.get(self.current, 0.0) * pace - spent, 0.0)
        upcoming = [key for key in self.estimates if key not in self.actual and key != self.current]
        return left + pace * sum(self.estimates[key] for key in upcoming)

    def _close(self) -> None:
        if self.current is not None:
            self.actual[self.current] = self.clock() - self.step_started

    def _report(self) -> None:
        if self.report is None:
            return
        if self.estimated_s == 0:
            self.report(0.0, f"{self.text}; estimating the time it takes")
            return
        left, elapsed = self.left_s(), self.elapsed_s
        self.shown = max(self.shown, elapsed / (elapsed + left) if elapsed + left > 0 else 0.0)
        self.report(self.shown, f"{self.text}; about {format_seconds(left)} left")
