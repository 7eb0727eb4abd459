"""Shared pytest setup: seeds, device list, markers (engineering.md §7)."""
import os
import sys

import pytest

TESTS = os.path.dirname(os.path.abspath(__file__))
# tests/ for the shared helpers (_common.py); the repository root for `benchmarks`, which is not
# installed with the package (whatever way pytest is started: python -m pytest, pytest, a subfolder)
sys.path[:0] = [TESTS, os.path.dirname(TESTS)]

import torch  # noqa: E402

from skelfast import _extension  # noqa: E402
from skelfast.precision import pin_ieee_fp32  # noqa: E402

# fp32 oracles compare fp32 arithmetic: cuDNN convolutions (the reference's nn.Conv2d) default to
# TF32 on GPUs (skelfast/precision.py).
pin_ieee_fp32()

if os.environ.get("SKELFAST_RECORD_TRITON_LAUNCHES"):   # the recording run of test_triton_compiles_for_gpu.py
    sys.path.insert(0, os.path.join(TESTS, "triton"))
    from _launches import install_recorder  # noqa: E402
    install_recorder(os.environ["SKELFAST_RECORD_TRITON_LAUNCHES"])


def pytest_sessionstart(session):
    """Without the compiled extension every kernel test skips and the ops fall back to the
    reference, so a broken build (or the in-tree package shadowing a non-editable install) would
    pass as a green run of skips: stop instead, unless the fallback alone is what is tested."""
    if _extension.LIBRARY_PATH is None and os.environ.get("SKELFAST_ALLOW_NO_EXTENSION") != "1":
        pytest.exit(f"skelfast's compiled extension did not load: {_extension.LOAD_ERROR}. Build it in this "
                    f"tree (`pip install -e .` or `python setup.py build_ext --inplace` in "
                    f"{os.path.dirname(TESTS)}), or set SKELFAST_ALLOW_NO_EXTENSION=1 to test the reference "
                    "fallback alone.", returncode=3)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip_cuda = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip_cuda)
