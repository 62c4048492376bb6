"""A long engine call run in a background thread, so the page stays live and can offer a Stop button."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from compress_core import CompressError

Report = Callable[[float, str], None]


class BackgroundJob:
    """Runs ``work(report, cancel)`` in a daemon thread.

    ``work`` calls ``report(fraction, text)`` as it goes and checks the ``cancel`` event; the page
    reads ``fraction``/``text`` to draw a progress bar and sets ``cancel`` from a Stop button.
    ``result`` is what ``work`` returned; ``error`` the message of a ``CompressError`` it raised.
    """

    def __init__(self, work: Callable[[Report, threading.Event], Any]) -> None:
        self.cancel = threading.Event()
        self.fraction = 0.0
        self.text = "starting"
        self.result: Any = None
        self.error: str | None = None
        self._thread = threading.Thread(target=self._run, args=(work,), name="explorer-job", daemon=True)
        self._thread.start()

    def _run(self, work: Callable[[Report, threading.Event], Any]) -> None:
        try:
            self.result = work(self._report, self.cancel)
        except CompressError as exc:
            self.error = str(exc)

    def _report(self, fraction: float, text: str) -> None:
        self.fraction, self.text = min(max(fraction, 0.0), 1.0), text

    @property
    def done(self) -> bool:
        """Whether the work has finished (returned, raised, or stopped after a cancel)."""
        return not self._thread.is_alive()

    def wait(self, timeout: float | None = None) -> None:
        """Block until the work finishes (for tests and benchmarks)."""
        self._thread.join(timeout)
