"""Build of skelfast._C: one extension with the CPU kernels, plus CUDA kernels when possible.

CUDA decision (engineering.md §6): built when SKELFAST_NO_CUDA is unset, torch has CUDA, nvcc is
found, and a GPU is visible or SKELFAST_FORCE_CUDA / TORCH_CUDA_ARCH_LIST asks for it. A forced
CUDA build against CPU-only torch stops at once with a clear message.
"""
import glob
import json
import os
import re
import subprocess
import sys

from setuptools import setup

import torch
from torch.utils import cpp_extension

ROOT = os.path.dirname(os.path.abspath(__file__))
os.chdir(ROOT)   # the source globs below are relative (setuptools wants relative source paths)
# The one place the version is written is skelfast/__init__.py (read as text: importing skelfast
# here would import the extension this script is about to build).
with open(os.path.join("skelfast", "__init__.py"), encoding="utf-8") as _fh:
    VERSION = re.search(r'^__version__ = "([^"]+)"$', _fh.read(), re.M).group(1)
# Stable ABI: the binary only uses the torch C shim, so it keeps working with newer torch releases.
TORCH_TARGET = "0x020a000000000000"  # 2.10
STABLE_FLAGS = ["-DTORCH_STABLE_ONLY", f"-DTORCH_TARGET_VERSION={TORCH_TARGET}", "-DPy_LIMITED_API=0x030A0000"]


def env_flag(*names):
    return any(os.environ.get(n, "").strip().lower() in ("1", "true", "yes", "on") for n in names)


def nvcc_version():
    if cpp_extension.CUDA_HOME is None:
        return None
    nvcc = os.path.join(cpp_extension.CUDA_HOME, "bin", "nvcc")
    try:
        out = subprocess.check_output([nvcc, "--version"], text=True)
    except (OSError, subprocess.CalledProcessError):
        return None
    for token in out.replace(",", " ").split():
        if token.startswith("V") and token[1:2].isdigit():
            return token[1:]
    return None


def decide_cuda():
    forced = env_flag("SKELFAST_FORCE_CUDA", "FORCE_CUDA")
    for name in ("SKELFAST_NO_CUDA", "FORCE_ONLY_CPU"):
        if env_flag(name):
            return False, f"{name}={os.environ[name]}"
    if forced and torch.version.cuda is None:
        sys.exit("skelfast: SKELFAST_FORCE_CUDA=1 but the installed torch " + torch.__version__ +
                 " is a CPU-only build; CPU-only torch cannot link CUDA extensions. Install a CUDA build of torch "
                 "or unset SKELFAST_FORCE_CUDA.")
    if torch.version.cuda is None:
        return False, "torch has no CUDA"
    if nvcc_version() is None:
        if forced:
            sys.exit("skelfast: SKELFAST_FORCE_CUDA=1 but nvcc was not found (set CUDA_HOME)")
        return False, "nvcc not found"
    if torch.cuda.is_available() or forced or os.environ.get("TORCH_CUDA_ARCH_LIST"):
        return True, "enabled"
    return False, "no GPU visible (set SKELFAST_FORCE_CUDA=1 or TORCH_CUDA_ARCH_LIST to cross-compile)"


def default_arch_list(nvcc_ver):
    major = int(nvcc_ver.split(".")[0]) if nvcc_ver else 12
    return "7.5;8.0;8.6;8.9;9.0;10.0;12.0+PTX" if major >= 13 else "7.5;8.0;8.6;8.9;9.0+PTX"


def default_max_jobs():
    try:
        ram_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError):
        ram_gb = 8
    return max(1, min(os.cpu_count() or 1, int(ram_gb // 4)))


def make_extension():
    with_cuda, reason = decide_cuda()
    debug = env_flag("SKELFAST_DEBUG")
    opt = ["-O0", "-g"] if debug else ["-O3"]
    include_dirs = [os.path.join(ROOT, "csrc", "include")]
    # Without ninja, setuptools rebuilds only when a source or one of `depends` is newer than the
    # library (with ninja, torch forces every build and ninja tracks headers and flags itself)
    headers = sorted(glob.glob(os.path.join("csrc", "**", "*.h"), recursive=True)
                     + glob.glob(os.path.join("csrc", "**", "*.cuh"), recursive=True))
    sources = sorted(glob.glob(os.path.join("csrc", "*.cpp")) + glob.glob(os.path.join("csrc", "cpu", "*.cpp")))
    # No errno from sqrt and no FP traps: lets gcc vectorise the CPU kernels' time loops.
    cxx = opt + STABLE_FLAGS + ["-fvisibility=hidden", "-fno-math-errno", "-fno-trapping-math",
                                 "-fopenmp-simd"]  # `#pragma omp simd` only: no OpenMP runtime
    if not os.environ.get("MAX_JOBS"):
        os.environ["MAX_JOBS"] = str(default_max_jobs())
    print(f"skelfast: CUDA kernels {'ON' if with_cuda else 'OFF'} ({reason}); MAX_JOBS={os.environ['MAX_JOBS']}")
    info = {"version": VERSION, "torch_version": torch.__version__, "with_cuda": with_cuda, "cuda_reason": reason,
            "torch_cuda": torch.version.cuda, "debug": debug,
            "env": {k: os.environ.get(k) for k in ("SKELFAST_FORCE_CUDA", "SKELFAST_NO_CUDA", "TORCH_CUDA_ARCH_LIST",
                                                   "MAX_JOBS", "NVCC_THREADS", "SKELFAST_DEBUG")}}
    if with_cuda:
        nv = nvcc_version()
        if not os.environ.get("TORCH_CUDA_ARCH_LIST") and not torch.cuda.is_available():
            os.environ["TORCH_CUDA_ARCH_LIST"] = default_arch_list(nv)
        info.update(nvcc_version=nv, arch_list=os.environ.get("TORCH_CUDA_ARCH_LIST", "detected"))
        sources += sorted(glob.glob(os.path.join("csrc", "kernels", "*.cu")) + glob.glob(os.path.join("csrc", "cuda", "*.cu")))
        nvcc = opt + STABLE_FLAGS + ["-DUSE_CUDA", "-std=c++20", "--expt-relaxed-constexpr",
                                     f"--threads={os.environ.get('NVCC_THREADS', '2')}"]
        if debug:
            nvcc.append("-lineinfo")
        ext = cpp_extension.CUDAExtension("skelfast._C", sources, include_dirs=include_dirs, py_limited_api=True,
                                          depends=headers, extra_compile_args={"cxx": cxx + ["-DUSE_CUDA"], "nvcc": nvcc})
    else:
        ext = cpp_extension.CppExtension("skelfast._C", sources, include_dirs=include_dirs, py_limited_api=True,
                                         depends=headers, extra_compile_args={"cxx": cxx})
    return ext, info


EXTENSION, BUILD_INFO = make_extension()


# What the binary depends on besides its sources: a change of any of these rebuilds it.
BINARY_KEYS = ("torch_version", "with_cuda", "torch_cuda", "debug", "nvcc_version", "arch_list")


class BuildExt(cpp_extension.BuildExtension.with_options(no_python_abi_suffix=True)):
    """Writes skelfast/_build_info.json next to the built library (read by `python -m skelfast.info`),
    and rebuilds when the build settings changed since the library there was built: without ninja,
    setuptools compares only file times, so a CPU build followed by SKELFAST_FORCE_CUDA=1 would keep
    the CPU library (with ninja, torch forces every build and ninja compares the commands)."""

    def _target(self):
        in_tree = self.inplace or getattr(self, "editable_mode", False)
        return os.path.join(ROOT, "skelfast") if in_tree else os.path.join(self.build_lib, "skelfast")

    def run(self):
        path = os.path.join(self._target(), "_build_info.json")
        try:
            with open(path) as fh:
                old = json.load(fh)
        except (OSError, ValueError):
            old = None
        if old is not None and any(old.get(k) != BUILD_INFO.get(k) for k in BINARY_KEYS):
            print("skelfast: build settings changed since the last build; rebuilding _C")
            self.force = True
        super().run()
        os.makedirs(self._target(), exist_ok=True)
        tmp = path + ".tmp"
        with open(tmp, "w") as fh:   # then renamed: an importing process never reads half a file
            json.dump(BUILD_INFO, fh, indent=1)
        os.replace(tmp, path)


setup(
    version=VERSION,   # packages, package data and metadata: pyproject.toml
    ext_modules=[EXTENSION],
    cmdclass={"build_ext": BuildExt},
    options={"bdist_wheel": {"py_limited_api": "cp310"}},
    include_package_data=True,
)
