"""Shared test fixtures: private folders for the app's files, and what the CPU can do."""

from __future__ import annotations

import functools
import tempfile
from pathlib import Path

import pytest

VNNI_FLAGS = frozenset({"avx512_vnni", "avx_vnni", "avx512vnni", "avxvnni"})  # /proc/cpuinfo and py-cpuinfo spellings


@functools.cache
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags: ``/proc/cpuinfo`` where it exists, else py-cpuinfo's; empty when neither tells."""
    flags: set[str] = set()
    try:
        for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
            if line.startswith(("flags", "Features")) and ":" in line:
                flags.update(line.split(":", 1)[1].split())
    except OSError:
        pass
    if not flags:
        try:
            import cpuinfo

            flags.update(cpuinfo.get_cpu_info().get("flags", []))
        except Exception:  # noqa: BLE001 - no flags is an answer too
            pass
    return frozenset(flag.lower() for flag in flags)


def has_vnni() -> bool:
    """Whether the CPU has AVX-512 VNNI or AVX-VNNI: ORT's U8S8 int8 kernels then do not saturate."""
    return bool(cpu_flags() & VNNI_FLAGS)


@pytest.fixture
def cpu_has_vnni() -> bool:
    return has_vnni()


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
