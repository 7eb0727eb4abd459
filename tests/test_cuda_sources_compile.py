"""Every CUDA source compiles with `nvcc -c` on a machine with only CPU torch (engineering.md §3).

csrc/kernels/*.cu are torch-free; csrc/cuda/*.cu are stable-ABI bindings that only need torch's
headers. Skipped where nvcc is absent.
"""
import glob
import os
import shutil
import subprocess

import pytest
from torch.utils.cpp_extension import include_paths

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NVCC = shutil.which("nvcc") or (os.path.join(os.environ["CUDA_HOME"], "bin", "nvcc") if os.environ.get("CUDA_HOME") else None)
KERNELS = sorted(glob.glob(os.path.join(ROOT, "csrc", "kernels", "*.cu")))
BINDINGS = sorted(glob.glob(os.path.join(ROOT, "csrc", "cuda", "*.cu")))
BASE = ["-std=c++20", "-arch=sm_80", "-c", f"-I{os.path.join(ROOT, 'csrc', 'include')}"]

pytestmark = pytest.mark.skipif(NVCC is None or not os.path.exists(NVCC), reason="nvcc not found")


def _compile(src, extra, tmp_path):
    out = tmp_path / (os.path.basename(src) + ".o")
    proc = subprocess.run([NVCC, *BASE, *extra, src, "-o", str(out)], capture_output=True, text=True)
    assert proc.returncode == 0, f"nvcc failed on {src}:\n{proc.stderr[-4000:]}"
    assert out.stat().st_size > 0


def test_sources_exist():
    assert KERNELS and BINDINGS


@pytest.mark.parametrize("src", KERNELS, ids=os.path.basename)
def test_kernel_compiles_without_torch(src, tmp_path):
    with open(src) as fh:
        text = fh.read()
    assert "#include <torch" not in text and "#include <ATen" not in text and "#include <c10" not in text
    _compile(src, [], tmp_path)


@pytest.mark.parametrize("src", BINDINGS, ids=os.path.basename)
def test_binding_compiles_against_cpu_torch_headers(src, tmp_path):
    extra = [f"-I{p}" for p in include_paths()] + ["-DUSE_CUDA", "-DTORCH_STABLE_ONLY",
                                                   "-DTORCH_TARGET_VERSION=0x020a000000000000"]
    _compile(src, extra, tmp_path)
