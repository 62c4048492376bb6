"""Shared by the AppTest files: the app's path, its first run, and finding a button by label."""

from __future__ import annotations

from pathlib import Path

from streamlit.testing.v1 import AppTest

APP = str(Path(__file__).resolve().parent.parent / "app.py")
# Seconds one script run (or a background job) may take: generous, for a busy 2-core machine. The
# tests wait on state (a run ending, a job's thread ending), so a fast machine does not wait this long.
RUN_TIMEOUT = 600


def first_run() -> AppTest:
    """The app after its first run (on digits_cnn), checked to have raised nothing."""
    at = AppTest.from_file(APP, default_timeout=RUN_TIMEOUT)
    at.run()
    assert not at.exception
    return at


def button(at: AppTest, label: str):
    """The button with this label on the current page."""
    return next(item for item in at.button if item.label == label)


def finish_job(job) -> None:
    """Wait for a page's ``BackgroundJob`` to end, and fail clearly if it has not."""
    job.wait(RUN_TIMEOUT)
    assert job.done, f"the background job did not end within {RUN_TIMEOUT} s"
