"""Run-time backend selection: SKELFAST_BACKEND=auto|cuda|triton|torch (engineering.md §6).

- auto:   compiled kernels where built (C++ on CPU, CUDA on GPU), else Triton on GPU, else the
          eager reference, quietly.
- cuda:   the compiled C++/CUDA kernels; raises if the extension was not built (with CUDA, for GPU
          tensors).
- triton: Triton kernels for GPU tensors (CPU tensors still use the compiled CPU kernel); raises if
          triton cannot be imported or no GPU is visible.
- torch:  the eager reference everywhere (for comparisons).
An explicit choice that cannot be met raises at `set_backend` and at the first op call.
"""
from __future__ import annotations

import functools
import importlib.util
import os
import threading
import warnings
from typing import Callable, Dict, List, Optional

import torch

from .. import _extension

BACKENDS = ("auto", "cuda", "triton", "torch")
_selected: Optional[str] = None


def _triton_importable() -> bool:
    try:
        import triton  # noqa: F401
    except Exception:
        return False
    return True


def _triton_usable() -> bool:
    """Triton runs on GPUs, or on CPU tensors under TRITON_INTERPRET=1 (tests only)."""
    return _triton_importable() and (torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1")


def available_backends() -> List[str]:
    """Kernel sets that can run on this machine right now: 'torch' (the eager reference), 'cpu'
    (the compiled C++ kernels, which 'auto' uses for CPU tensors; not a SKELFAST_BACKEND value),
    'cuda' and 'triton' (each also a SKELFAST_BACKEND value, listed where set_backend accepts it)."""
    out = ["torch"]
    if _extension.has_cpu_kernels():
        out.append("cpu")
    if _extension.has_cuda_kernels() and torch.cuda.is_available():
        out.append("cuda")
    if _triton_usable() and _extension.has_cpu_kernels():   # the op schemas come from skelfast._C
        out.append("triton")
    return out


# op name -> (Triton forward, {backward op name: composite fallback}); filled by skelfast/ops/*.py.
_TRITON_KERNELS: Dict[str, tuple] = {}
_triton_lib: Optional[torch.library.Library] = None
_triton_lib_lock = threading.Lock()   # two threads attaching at once would leave one Library undetachable


def register_triton_kernel(op: str, fn: Callable, fallbacks: Optional[Dict[str, Callable]] = None) -> None:
    """Declare the Triton implementation of skelfast::<op> (and composite fallbacks for ops that
    have no Triton kernel, used only where no compiled kernel exists for the device)."""
    _TRITON_KERNELS[op] = (fn, dict(fallbacks or {}))


def _first_cuda_device(args) -> Optional[torch.device]:
    for a in args:
        if isinstance(a, torch.Tensor):
            if a.is_cuda:
                return a.device
        elif isinstance(a, (list, tuple)):
            dev = _first_cuda_device(a)
            if dev is not None:
                return dev
    return None


def on_input_device(fn: Callable) -> Callable:
    """Run a Triton launcher on its inputs' GPU. Triton launches on the *current* CUDA device and
    the dispatcher does not switch devices for custom ops, so a tensor on cuda:1 with cuda:0
    current would run on the wrong GPU (the compiled CUDA bindings open a DeviceGuard for the same
    reason). The device is the first CUDA tensor argument's, as the bindings take x's."""

    @functools.wraps(fn)
    def guarded(*args, **kwargs):
        dev = _first_cuda_device(args)
        if dev is None:
            return fn(*args, **kwargs)
        with torch.cuda.device(dev):
            return fn(*args, **kwargs)

    return guarded


_triton_cuda_libs: List[torch.library.Library] = []


def register_triton_for_cuda(impls: Dict[str, Callable]) -> bool:
    """Make Triton launchers the CUDA kernels of ops that have no compiled CUDA kernel (skelfast::<op>
    -> fn). Returns False, registering nothing, where triton is not installed. Uses find_spec,
    not import: importing triton here would fix its TRITON_INTERPRET mode too early."""
    if importlib.util.find_spec("triton") is None:
        return False
    lib = torch.library.Library("skelfast", "IMPL")
    for op, fn in impls.items():
        lib.impl(op, on_input_device(fn), "CUDA")
    _triton_cuda_libs.append(lib)
    return True


def attach_triton(dispatch_key: str = "CUDA") -> None:
    """Route skelfast::<op> on `dispatch_key` to the Triton kernels (overriding the compiled CUDA
    kernels if any). Undone by detach_triton(); the dispatcher then restores the C++ kernels.
    Tests use dispatch_key='CPU' under TRITON_INTERPRET=1."""
    global _triton_lib
    with _triton_lib_lock:
        if _triton_lib is not None:
            return
        lib = torch.library.Library("skelfast", "IMPL")
        compiled = _extension.has_cuda_kernels() if dispatch_key == "CUDA" else _extension.has_cpu_kernels()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "overriding a previously registered kernel" is the point here
            for op, (fn, fallbacks) in _TRITON_KERNELS.items():
                lib.impl(op, on_input_device(fn), dispatch_key)
                if not compiled:
                    for fallback_op, fallback_fn in fallbacks.items():
                        lib.impl(fallback_op, fallback_fn, dispatch_key)
        _triton_lib = lib


def detach_triton() -> None:
    """Remove the Triton registrations made by attach_triton()."""
    global _triton_lib
    with _triton_lib_lock:
        if _triton_lib is not None:
            _triton_lib._destroy()
            _triton_lib = None


def _check(name: str) -> None:
    if name not in BACKENDS:
        raise ValueError(f"SKELFAST_BACKEND must be one of {BACKENDS}, got {name!r}")
    if name == "cuda" and not _extension.has_cuda_kernels():
        why = _extension.LOAD_ERROR or "the extension was built without CUDA (see python -m skelfast.info)"
        raise RuntimeError(f"backend 'cuda' requested but compiled CUDA kernels are unavailable: {why}")
    if name == "triton" and not (_triton_usable() and _extension.has_cpu_kernels()):
        raise RuntimeError("backend 'triton' requested but triton is not importable, no CUDA device is visible, "
                           "or skelfast._C is not built (pip install 'skelfast[triton]' on a GPU machine)")


def set_backend(name: str) -> None:
    """Select the backend for all skelfast ops (overrides SKELFAST_BACKEND); any case, as the variable."""
    name = name.strip().lower() if isinstance(name, str) else name
    _check(name)
    global _selected
    _selected = name
    if name != "triton" and _extension.has_cuda_kernels():
        detach_triton()  # back to the compiled CUDA kernels


def get_backend() -> str:
    """The selected backend name; validates an explicit SKELFAST_BACKEND on first use."""
    global _selected
    if _selected is None:
        name = os.environ.get("SKELFAST_BACKEND", "auto").strip().lower() or "auto"
        _check(name)
        _selected = name
    return _selected


def resolve(device: torch.device) -> str:
    """The implementation that runs for a tensor on `device`: 'compiled', 'triton' or 'torch'."""
    name = get_backend()
    if name == "torch":
        return "torch"
    if device.type == "cpu":
        return "compiled" if _extension.has_cpu_kernels() else "torch"
    if device.type == "cuda":
        if name == "triton":
            return "triton"
        if _extension.has_cuda_kernels():
            return "compiled"
        if name == "auto" and _triton_usable() and _extension.has_cpu_kernels():
            return "triton"
        return "torch"
    return "torch"
