"""User regular expressions (recipe ``re:`` entries, the Tune page's bulk edit), matched in linear time.

Patterns are compiled with RE2 (``google-re2``), whose matching time is linear in the name's length
whatever the pattern: Python's backtracking ``re`` needs minutes for ``(a+)+$`` against thirty
``a`` and a ``!``, holding the GIL the whole time. The ``re2`` module never falls back to ``re``:
syntax RE2 lacks (backreferences, lookarounds, possessive quantifiers, ``\\Z``) is an error, which
this module turns into a ``CompressError`` naming the pattern.
"""

from __future__ import annotations

from typing import Protocol

import re2

from compress_core.errors import CompressError

RE2_SYNTAX = "RE2 syntax is required: no backreferences (\\1), lookarounds ((?=, (?!, (?<=) or possessive quantifiers"


def _options() -> re2.Options:
    options = re2.Options()
    options.log_errors = False  # the error reaches the user as a CompressError, not on stderr
    return options


OPTIONS = _options()


class Pattern(Protocol):
    """What the project uses of a compiled RE2 pattern (the binding's ``re2._Regexp``, which it
    exports under no public name and without type hints)."""

    @property
    def pattern(self) -> str: ...

    def fullmatch(self, text: str) -> object | None: ...

    def search(self, text: str) -> object | None: ...


def compile_pattern(pattern: str, what: str) -> Pattern:
    """``pattern`` compiled by RE2; ``what`` names it in errors.

    Raises ``CompressError`` for a pattern that is not a string or that RE2 cannot compile.
    """
    if not isinstance(pattern, str):
        raise CompressError(f"{what}: a regular expression must be text, got {type(pattern).__name__}")
    try:
        return re2.compile(pattern, OPTIONS)
    except re2.error as exc:
        raise CompressError(f"{what}: not a valid regular expression ({_reason(exc)}); {RE2_SYNTAX}") from exc


def _reason(exc: re2.error) -> str:
    """RE2's message (which the binding passes as bytes) on one line: it quotes the pattern's text."""
    reason = exc.args[0] if exc.args else ""
    text = reason.decode("utf-8", "replace") if isinstance(reason, bytes) else str(reason)
    return text.replace("\r", "\\r").replace("\n", "\\n")
