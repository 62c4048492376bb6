"""Atomic file writes: a temporary name in the same folder, then a rename; nothing partial is left.

The temporary file is made by ``tempfile.mkstemp``: a fresh name created exclusively (``O_EXCL``)
with mode 0600, so nothing can be planted under it and no one else can read it while it is being
written. Just before the rename it gets the mode a file created by ``open()`` would have,
``0o666 & ~umask``. The umask is read from ``/proc/self/status`` (``Umask:``), never by setting it
with ``os.umask``, which would change it for every thread of the process for a moment; where that
line is missing, ``DEFAULT_UMASK`` is assumed.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Callable
from pathlib import Path

SAFE_NAME = re.compile(r"[^A-Za-z0-9._-]+")
PROC_STATUS = Path("/proc/self/status")
DEFAULT_UMASK = 0o022
UMASK_LINE = re.compile(r"^Umask:\s*([0-7]{1,4})\s*$", re.MULTILINE)


def sanitize_filename(name: str) -> str:
    """A file name made only of letters, digits, ``.``, ``_`` and ``-`` (never empty, never hidden)."""
    cleaned = SAFE_NAME.sub("_", name).strip("._") or "model"
    return cleaned[:120]


def current_umask() -> int:
    """The process's umask, read without changing it; ``DEFAULT_UMASK`` where the system does not say."""
    try:
        status = PROC_STATUS.read_text(encoding="ascii", errors="replace")
    except OSError:
        return DEFAULT_UMASK
    found = UMASK_LINE.search(status)
    return int(found.group(1), 8) if found else DEFAULT_UMASK


def atomic_write(path: str | Path, write: Callable[[Path], object]) -> Path:
    """Call ``write(temporary_path)`` (its return value is ignored) then rename the result to ``path``; on failure remove it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
    os.close(handle)
    temporary_path = Path(temporary)
    try:
        write(temporary_path)
        os.chmod(temporary_path, 0o666 & ~current_umask())
        os.replace(temporary_path, path)
    except BaseException:
        temporary_path.unlink(missing_ok=True)
        raise
    return path


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically."""
    return atomic_write(path, lambda temporary: temporary.write_bytes(data))


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    return atomic_write_bytes(path, text.encode("utf-8"))
