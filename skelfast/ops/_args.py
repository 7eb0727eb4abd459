"""Checks of the public ops' scalar arguments, so that a wrong type or value is named before any
kernel runs (a str p used to fail on a comparison that named no argument)."""
from __future__ import annotations

import math

from .._scalars import is_real


def check_real(op: str, name: str, value, low: float = -math.inf, high: float = math.inf) -> None:
    """Raise naming `name` unless value is a real number (not a bool) in [low, high]; NaN fails."""
    if not is_real(value):
        raise TypeError(f"{op}: {name} must be a real number, got {type(value).__name__} {value!r}")
    if not low <= value <= high:
        raise ValueError(f"{op}: {name} must be in [{low}, {high}], got {value}")
