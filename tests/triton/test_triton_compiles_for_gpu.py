"""Every Triton kernel that the test suite launches compiles for an H100 (cuda sm_90), checked on
a machine without a GPU: the interpreter runs the kernels' arithmetic in the other tests, but only
the GPU compiler sees what it cannot lower (tests/triton/_launches.py: the launches of the Triton
tests are recorded under the interpreter in one process and compiled to cubins in another)."""
import glob
import importlib.util
import json
import os
import re
import subprocess
import sys

import pytest
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))


def kernels_in_source():
    """skelfast.triton.<module>.<name> of every @triton.jit function named *_kernel (launched from
    the host; the other jit functions are device helpers that compile inside them)."""
    found = set()
    for path in glob.glob(os.path.join(ROOT, "skelfast", "triton", "*.py")):
        module = "skelfast.triton." + os.path.splitext(os.path.basename(path))[0]
        with open(path) as fh:
            found |= {f"{module}.{name}" for name in re.findall(r"@triton\.jit(?:\([^)]*\))?\s*\ndef (\w+_kernel)\(", fh.read())}
    return found


@pytest.mark.skipif(torch.cuda.is_available(), reason="with a GPU the other tests compile and run the kernels")
@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="needs triton")
def test_every_launched_kernel_compiles_for_sm90(tmp_path):
    if importlib.util.find_spec("triton.backends.nvidia") is None:
        pytest.skip("this triton has no NVIDIA backend")
    record = tmp_path / "launches.json"
    env = {**os.environ, "TRITON_INTERPRET": "1", "SKELFAST_RECORD_TRITON_LAUNCHES": str(record),
           "SKELFAST_QUIET_IMPORT": "1"}
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/triton",
                          "tests/test_graph_conv.py", "-k", "not compiles_for_sm90"],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=1200)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    records = json.loads(record.read_text())
    launched = {f"{r[0]}.{r[1]}" for r in records}
    assert launched == kernels_in_source(), f"kernels the tests never launch: {kernels_in_source() - launched}"

    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.update(PYTHONPATH=ROOT + os.pathsep + env.get("PYTHONPATH", ""), SKELFAST_QUIET_IMPORT="1",
               TRITON_DEFAULT_FP_FUSION="1")
    out = subprocess.run([sys.executable, os.path.join(HERE, "_launches.py"), str(record), "90"],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    summary = json.loads(out.stdout.strip().splitlines()[-1])
    assert not summary["failures"], json.dumps(summary["failures"], indent=1)[:6000]
    assert summary["compiled"] == len(records) > 0
