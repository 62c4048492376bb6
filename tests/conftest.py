"""Shared test fixtures: private folders for the app's files, and what the CPU can do."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest

from compress_core.ort.cpu import cpu_features


@pytest.fixture
def cpu_has_vnni() -> bool:
    """Whether the CPU has AVX-512 VNNI or AVX-VNNI: ORT's U8S8 int8 kernels then do not saturate."""
    return cpu_features().vnni


@pytest.fixture
def private_dirs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The app's working files and the sensitivity cache under this test's own ``tmp_path``.

    The app keeps uploads and exports in a private folder made under the temp folder of the moment
    (``explorer_ui.sources.private_dir``), and the sensitivity cache under ``$XDG_CACHE_HOME``: tests
    running side by side (or a user's earlier run) would otherwise share them.
    """
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    return tmp_path
