"""Shared test fixtures: private folders for the app's files, and what the CPU can do."""

from __future__ import annotations

import functools
import importlib
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
    """Uploads, exports and the sensitivity cache of the app under this test's own ``tmp_path``.

    The app writes uploads and export folders under fixed folders and the sensitivity cache under
    ``$XDG_CACHE_HOME``: tests running side by side (or a user's earlier run) would share them.
    """
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))  # for folders derived from gettempdir() at call time
    targets = {
        "explorer_ui.sources": {"UPLOAD_DIR": tmp_path / "uploads"},
        "explorer_ui.exporting": {"EXPORT_DIR": tmp_path / "exports"},
    }
    for module_name, attributes in targets.items():
        module = importlib.import_module(module_name)
        for name, folder in attributes.items():
            if hasattr(module, name):  # the app may compute these folders differently one day
                monkeypatch.setattr(module, name, folder)
    return tmp_path
