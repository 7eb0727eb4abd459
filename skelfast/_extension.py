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
# What the loaded library registered, read once at load (below): the ops' backend choice consults
# these on every call, so they must be cheap and traceable by torch.compile (no file reads).
HAS_CPU_KERNELS = False
HAS_CUDA_KERNELS = False


def _library_candidates(folder: str = _HERE) -> list:
    """setup.py builds skelfast/_C.so (no ABI suffix); an older build may have left _C.<tag>.so."""
    exact = os.path.join(folder, "_C.so")
    others = sorted(p for p in glob.glob(os.path.join(folder, "_C*.so")) if p != exact)
    return ([exact] if os.path.exists(exact) else []) + others


def _load() -> None:
    global LOAD_ERROR, LIBRARY_PATH, HAS_CPU_KERNELS, HAS_CUDA_KERNELS
    candidates = _library_candidates()
    if not candidates:
        LOAD_ERROR = ("skelfast/_C.so not found (the extension was not built: `pip install .`, `pip install -e .` "
                      "for a source tree you edit, or `python setup.py build_ext --inplace` there)")
    else:
        if len(candidates) > 1:
            names = [os.path.basename(c) for c in candidates]
            warnings.warn(f"skelfast: several extension libraries in {_HERE} ({names}); loading {names[0]}, "
                          "delete the stale ones", RuntimeWarning, stacklevel=3)
        try:
            torch.ops.load_library(candidates[0])
            LIBRARY_PATH = candidates[0]
        except (OSError, RuntimeError) as exc:  # wrong torch ABI, missing CUDA libs, ...
            LOAD_ERROR = f"failed to load {candidates[0]}: {exc}"
    if LIBRARY_PATH is not None:
        HAS_CPU_KERNELS = hasattr(torch.ops.skelfast, "modalities")
        # Asked before skelfast.ops adds its Python registrations (Triton and composite CUDA kernels
        # of some ops): only the library's own C++ CUDA kernels count. modalities has no Python one.
        HAS_CUDA_KERNELS = HAS_CPU_KERNELS and torch._C._dispatch_has_kernel_for_dispatch_key(
            "skelfast::modalities", "CUDA")
    quiet = os.environ.get("SKELFAST_QUIET_IMPORT", "").strip().lower() in ("1", "true", "yes", "on")
    if LOAD_ERROR is not None and not quiet:
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
    return HAS_CPU_KERNELS


def has_cuda_kernels() -> bool:
    """Whether the loaded library holds the C++ CUDA kernels (what was built, not what the build
    info file says: a rebuild can leave that file and the library out of step)."""
    return HAS_CUDA_KERNELS


_load()
