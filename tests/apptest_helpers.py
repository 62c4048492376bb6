"""Shared by the AppTest files: the app's path, its first run, and finding a button by label."""

from __future__ import annotations

from pathlib import Path

from streamlit.testing.v1 import AppTest

APP = str(Path(__file__).resolve().parent.parent / "app.py")


def first_run() -> AppTest:
    """The app after its first run (on digits_cnn), checked to have raised nothing."""
    at = AppTest.from_file(APP, default_timeout=60)
    at.run()
    assert not at.exception
    return at


def button(at: AppTest, label: str):
    """The button with this label on the current page."""
    return next(item for item in at.button if item.label == label)
