"""Compile every Triton kernel skelfast launches for a GPU, on a machine without one.

The interpreter (TRITON_INTERPRET=1) runs the kernels' Python on CPU tensors: it checks the
arithmetic but never the GPU compiler, which rejects things the interpreter accepts (types,
layouts, unsupported ops). Triton ships LLVM and ptxas, so a kernel compiles to PTX and a cubin for
an explicit target without a driver. Two steps, two processes (TRITON_INTERPRET is read when
@triton.jit decorates, so one process cannot hold both kinds of kernel):

1. record: under the interpreter, `install_recorder(path)` (tests/triton/conftest.py, when
   SKELFAST_RECORD_TRITON_LAUNCHES names a file) notes each distinct launch of a skelfast kernel,
   its argument types as Triton types them (`mangle_type`) and its constexpr values, and writes
   them as JSON at exit;
2. compile: `python tests/triton/_launches.py RECORD.json [ARCH]` compiles each recorded launch
   with `triton.compile(ASTSource(...), target=GPUTarget("cuda", ARCH, 32))` and the recorded
   num_warps / num_stages, checks that its shared memory fits one H100 block, and prints a JSON
   summary {"compiled": n, "failures": [...]}.
"""
from __future__ import annotations

import atexit
import importlib
import inspect
import json
import sys


def _encode(value):
    import triton.language as tl
    if isinstance(value, tl.dtype):
        return {"tl.dtype": str(value)}
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"cannot record constexpr value {value!r}")


def _decode(value):
    import triton.language as tl
    if isinstance(value, dict) and "tl.dtype" in value:
        return tl.dtype(value["tl.dtype"])
    return value


def install_recorder(path: str) -> None:
    """Record the launches of skelfast's Triton kernels in this (interpreter) process into `path`."""
    from triton.runtime.interpreter import InterpretedFunction
    from triton.runtime.jit import mangle_type

    seen = {}
    original = InterpretedFunction.run

    def run(self, *args, grid, warmup, **kwargs):
        fn = self.fn
        if fn.__module__.startswith("skelfast."):
            bound = dict(zip(self.arg_names, args), **kwargs)
            signature, constexprs = {}, {}
            for p in inspect.signature(fn).parameters.values():
                value = bound.get(p.name, p.default)
                if "constexpr" in str(p.annotation) or value is None:
                    signature[p.name] = "constexpr"
                    constexprs[p.name] = _encode(value)
                else:
                    signature[p.name] = mangle_type(value)
            # launch options the kernel is compiled with (shared memory grows with the warps' pipeline)
            options = {k: kwargs[k] for k in ("num_warps", "num_stages") if k in kwargs}
            record = [fn.__module__, fn.__name__, signature, constexprs, options]
            seen[json.dumps(record, sort_keys=True)] = record
        return original(self, *args, grid=grid, warmup=warmup, **kwargs)

    InterpretedFunction.run = run

    def dump():
        with open(path, "w") as fh:
            json.dump(sorted(seen.values(), key=json.dumps), fh)

    atexit.register(dump)


MAX_SHARED_BYTES = 232448   # opt-in shared memory per block on H100 / H200 (227 KiB)


def compile_all(path: str, arch: int = 90) -> dict:
    """Compile every recorded launch for cuda sm_<arch>; {"compiled": n, "kernels": [...], "failures": [...]}."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    with open(path) as fh:
        records = json.load(fh)
    target = GPUTarget("cuda", arch, 32)
    compiled, kernels, failures = 0, set(), []
    for module, name, signature, constexprs, options in records:
        fn = getattr(importlib.import_module(module), name)
        try:
            kernel = triton.compile(ASTSource(fn=fn, signature=signature,
                                              constexprs={k: _decode(v) for k, v in constexprs.items()}),
                                    target=target, options=options)
            if not kernel.asm.get("cubin"):
                raise RuntimeError("no cubin produced")
            if kernel.metadata.shared > MAX_SHARED_BYTES:   # the launch would fail with OutOfResources
                raise RuntimeError(f"needs {kernel.metadata.shared} bytes of shared memory per block, the GPU "
                                   f"allows {MAX_SHARED_BYTES}")
            compiled += 1
            kernels.add(f"{module}.{name}")
        except Exception as exc:   # report every failure, not just the first
            failures.append({"kernel": f"{module}.{name}", "signature": signature, "constexprs": constexprs,
                             "error": f"{type(exc).__name__}: {str(exc)[-1500:]}"})
    return {"compiled": compiled, "kernels": sorted(kernels), "failures": failures}


if __name__ == "__main__":
    print(json.dumps(compile_all(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 90)))
