"""Values and names quoted in one-line messages: short, printable, never split by a newline.

Recipe values can be huge (or YAML alias bombs) and names can hold any character, so messages quote
them through ``shown`` and ``quoted``.
"""

from __future__ import annotations

import reprlib
from typing import Any

SHOWN_CHARS = 80
_SHOWN = reprlib.Repr()
_SHOWN.maxlevel, _SHOWN.maxlist, _SHOWN.maxdict, _SHOWN.maxstring, _SHOWN.maxother, _SHOWN.maxlong = 2, 4, 4, 60, 60, 40


def shown(value: Any) -> str:
    """``repr(value)`` cut to ``SHOWN_CHARS``: recipe values can be huge (or YAML alias bombs) and
    messages are one line."""
    text = _SHOWN.repr(value)
    return text if len(text) <= SHOWN_CHARS else text[: SHOWN_CHARS - 3] + "..."


def quoted(name: str) -> str:
    """A name in single quotes as written, or its shortened ``repr`` when it is long or not printable
    (a newline in a name must not split a one-line message)."""
    return f"'{name}'" if _plain(name) else shown(name)


def written(value: Any) -> str:
    """A name as written (no quotes) when it is short printable text, else its shortened ``repr``."""
    return value if _plain(value) else shown(value)


def _plain(value: Any) -> bool:
    """Short printable text, fit to be quoted in a message as it is."""
    return isinstance(value, str) and value.isprintable() and len(value) <= _SHOWN.maxstring
