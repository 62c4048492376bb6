"""Strict JSON for metrics: non-finite floats (an identical model's SQNR is infinite) become null."""

from __future__ import annotations

import json
import math
from typing import Any


def finite(payload: Any) -> Any:
    """A copy of ``payload`` with every NaN or infinite float replaced by None."""
    if isinstance(payload, float):
        return payload if math.isfinite(payload) else None
    if isinstance(payload, dict):
        return {key: finite(value) for key, value in payload.items()}
    if isinstance(payload, (list, tuple)):
        return [finite(value) for value in payload]
    return payload


def dumps(payload: Any) -> str:
    """Indented, strict JSON (``allow_nan=False``) of ``payload`` after ``finite``."""
    return json.dumps(finite(payload), indent=2, allow_nan=False)
