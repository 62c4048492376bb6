"""Argument checks shared by the tensor primitives: each returns the checked value or raises
``ValueError`` naming the value and what is allowed."""

from __future__ import annotations

import numbers
from typing import TypeGuard

import torch


def is_int(value: object) -> TypeGuard[numbers.Integral]:
    """An integer that is not a bool."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def is_real(value: object) -> TypeGuard[numbers.Real]:
    """A real number that is not a bool."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def check_tensor(name: str, value: object, *, min_dim: int = 0) -> torch.Tensor:
    """Return ``value`` if it is a finite, non-empty floating tensor with ``>= min_dim`` dims."""
    if not isinstance(value, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    if not value.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got dtype {value.dtype}")
    if value.dim() < min_dim:
        raise ValueError(f"{name} must have at least {min_dim} dimension(s), got shape {tuple(value.shape)}")
    if value.numel() == 0:
        raise ValueError(f"{name} must not be empty, got shape {tuple(value.shape)}")
    if not bool(torch.isfinite(value).all()):
        raise ValueError(f"{name} contains NaN or infinite values; only finite values are allowed")
    return value


def check_axis(axis: object, ndim: int, name: str = "axis") -> int:
    """``axis`` as an index in ``0..ndim-1`` (negative axes count from the end)."""
    if not is_int(axis):
        raise ValueError(f"{name} must be an int, got {axis!r}")
    index = int(axis)
    if not -ndim <= index < ndim:
        raise ValueError(f"{name}={index} is out of range for a {ndim}-D tensor (allowed {-ndim}..{ndim - 1})")
    return index % ndim


def check_ratio(ratio: object) -> float:
    """``ratio`` as a float in [0, 1)."""
    if not is_real(ratio) or not 0.0 <= float(ratio) < 1.0:
        raise ValueError(f"ratio={ratio!r} is not allowed; ratio must be a number in [0, 1)")
    return float(ratio)
