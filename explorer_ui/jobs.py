"""A long engine call run in a background thread, so the page stays live and can offer a Stop button."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from compress_core.errors import CompressError, first_line

Report = Callable[[float, str], None]
LOG = logging.getLogger(__name__)


def describe(exc: Exception) -> str:
    """One line for the user, never empty: a ``CompressError``'s message, else the type and first line
    of any other exception (a bug or a library's failure, which the user must see rather than nothing)."""
    if isinstance(exc, CompressError):
        return str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {first_line(exc)}"


class BackgroundJob:
    """Runs ``work(report, cancel)`` in a daemon thread.

    ``work`` calls ``report(fraction, text)`` as it goes and checks the ``cancel`` event; the page
    reads ``fraction``/``text`` to draw a progress bar and sets ``cancel`` from a Stop button.
    When ``work`` returns, ``result`` is what it returned. When it raises any ``Exception``,
    ``exception`` is that exception, ``error`` its one-line description (``describe``) and
    ``result`` stays None: a page checks ``error`` first and never uses the result of a failed job.
    """

    def __init__(self, work: Callable[[Report, threading.Event], Any]) -> None:
        self.cancel = threading.Event()
        self.fraction = 0.0
        self.text = "starting"
        self.result: Any = None
        self.error: str | None = None
        self.exception: Exception | None = None
        self._thread = threading.Thread(target=self._run, args=(work,), name="explorer-job", daemon=True)
        self._thread.start()

    def _run(self, work: Callable[[Report, threading.Event], Any]) -> None:
        try:
            self.result = work(self._report, self.cancel)
        except Exception as exc:  # noqa: BLE001 - every failure is reported on the page
            if not isinstance(exc, CompressError):
                LOG.error("background job failed", exc_info=exc)
            self.exception, self.error = exc, describe(exc)

    def _report(self, fraction: float, text: str) -> None:
        self.fraction, self.text = min(max(fraction, 0.0), 1.0), text

    @property
    def done(self) -> bool:
        """Whether the work has finished (returned, raised, or stopped after a cancel)."""
        return not self._thread.is_alive()

    def wait(self, timeout: float | None = None) -> None:
        """Block until the work finishes (for tests and benchmarks)."""
        self._thread.join(timeout)
