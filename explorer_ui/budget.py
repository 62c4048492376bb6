"""Time budgets for long steps: an estimate before a step starts, the time left while it runs, and a
deadline that stops it (the step keeps what it finished)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from compress_core.ort.budget import format_seconds


def time_left(fraction: float, elapsed: float) -> float | None:
    """The seconds still to go when ``fraction`` of the work took ``elapsed`` seconds (None before any progress)."""
    if fraction <= 0:
        return None
    return elapsed * (1 - fraction) / fraction


class Deadline:
    """A budget that starts now: ``stop()`` is True once ``seconds`` have passed or ``cancel`` is set."""

    def __init__(self, seconds: float | None, cancel: threading.Event, clock: Callable[[], float] = time.monotonic):
        self.seconds, self.cancel, self.clock = seconds, cancel, clock
        self.started = clock()

    @property
    def elapsed(self) -> float:
        return self.clock() - self.started

    @property
    def expired(self) -> bool:
        return self.seconds is not None and self.elapsed >= self.seconds

    def stop(self) -> bool:
        """Whether the step should stop now: the user pressed Stop, or the budget is spent."""
        return self.cancel.is_set() or self.expired

    def progress_text(self, fraction: float, text: str) -> str:
        """``text`` with the time spent, the estimated time left and the budget."""
        left = time_left(fraction, self.elapsed)
        parts = [text, f"{format_seconds(self.elapsed)} spent"]
        if left is not None:
            parts.append(f"about {format_seconds(left)} left")
        if self.seconds is not None:
            parts.append(f"budget {format_seconds(self.seconds)}")
        return "; ".join(parts)
