"""Scalar type tests shared by the argument checks of every layer (ops, reference, nn, data):
bools are ints to Python, but True is no size, count or probability."""
from __future__ import annotations

import numbers


def is_int(v) -> bool:
    """An integer (Python or NumPy), not a bool."""
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def is_real(v) -> bool:
    """A real number (Python or NumPy), not a bool."""
    return isinstance(v, numbers.Real) and not isinstance(v, bool)
