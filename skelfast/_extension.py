"""Loads the compiled extension skelfast._C (op registrations only; no Python module API).

If the library is missing or fails to load, skelfast still imports: a warning says why and the
ops fall back to the eager reference (see skelfast.ops._backend).
"""
from __future__ import annotations

import glob
import json
import os
import warnings
from typing import Optional

import torch

_HERE = os.path.dirname(os.path.abspath(__file__))

LOAD_ERROR: Optional[str] = None
LIBRARY_PATH: Optional[str] = None


def _load() -> None:
    global LOAD_ERROR, LIBRARY_PATH
    candidates = sorted(glob.glob(os.path.join(_HERE, "_C*.so")) + glob.glob(os.path.join(_HERE, "_C*.pyd")))
    if not candidates:
        LOAD_ERROR = "skelfast/_C*.so not found (the extension was not built; run `pip install .`)"
    else:
        try:
            torch.ops.load_library(candidates[0])
            LIBRARY_PATH = candidates[0]
        except (OSError, RuntimeError) as exc:  # wrong torch ABI, missing CUDA libs, ...
            LOAD_ERROR = f"failed to load {candidates[0]}: {exc}"
    if LOAD_ERROR is not None and os.environ.get("SKELFAST_QUIET_IMPORT", "0") != "1":
        warnings.warn(f"skelfast: compiled ops unavailable, using the eager reference path. {LOAD_ERROR}",
                      RuntimeWarning, stacklevel=3)


def build_info() -> dict:
    """Contents of skelfast/_build_info.json written by setup.py ({} if absent)."""
    path = os.path.join(_HERE, "_build_info.json")
    try:
        with open(path) as fh:
            return json.load(fh)
    except (OSError, ValueError):
        return {}


def has_cpu_kernels() -> bool:
    return LIBRARY_PATH is not None and hasattr(torch.ops.skelfast, "modalities")


def has_cuda_kernels() -> bool:
    return has_cpu_kernels() and bool(build_info().get("with_cuda", False))


_load()
