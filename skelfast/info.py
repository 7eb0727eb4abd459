"""`python -m skelfast.info`: versions, backends built, devices seen."""
from __future__ import annotations

import json
import platform
import sys


def collect() -> dict:
    import torch

    import skelfast
    from skelfast import _extension
    from skelfast.ops import _backend

    try:
        import triton

        triton_version = triton.__version__
    except Exception as exc:  # not installed, or broken install
        triton_version = f"unavailable ({type(exc).__name__})"
    devices = ["cpu"] + [f"cuda:{i} {torch.cuda.get_device_name(i)}" for i in range(torch.cuda.device_count())]
    try:
        selected = _backend.get_backend()
    except (RuntimeError, ValueError) as exc:
        selected = f"invalid: {exc}"
    return {
        "skelfast": skelfast.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "triton": triton_version,
        "extension": _extension.LIBRARY_PATH or f"not loaded: {_extension.LOAD_ERROR}",
        "cpu_kernels": _extension.has_cpu_kernels(),
        "cuda_kernels": _extension.has_cuda_kernels(),
        "build": _extension.build_info(),
        "backend_selected": selected,
        # kernel sets that can run here ('cpu' = the compiled C++ kernels that 'auto' runs on CPU),
        # and the SKELFAST_BACKEND / set_backend values, which are not the same vocabulary
        "kernels_available": _backend.available_backends(),
        "backend_choices": list(_backend.BACKENDS),
        "devices": devices,
    }


def main() -> int:
    info = collect()
    if "--json" in sys.argv[1:]:
        print(json.dumps(info, indent=1))
        return 0
    for key, value in info.items():
        if key == "build":
            value = ", ".join(f"{k}={v}" for k, v in value.items() if k != "env") or "no _build_info.json"
        print(f"{key:>18}: {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
