"""The float32 row kernels of the CPU loss op are built once per x86 ISA (AVX-512, AVX2+FMA,
baseline; csrc/cpu/losses_rows_simd.h) and the widest the CPU runs is picked once per process, so
each build is checked here in its own process (SKELFAST_LOSS_ISA narrows the pick): every public
loss, values and query gradients, against the fp64 reference (method.md §5.3, §5.4, §6.1), at
queue lengths that leave a remainder for every lane count (K=67) and span several chunks
(K=8192+37); and a NaN in a queue gives a NaN loss wherever its column falls. The AVX-512 build
runs only on a CPU that has it.
"""
import json
import os
import subprocess
import sys

import pytest
import torch

from skelfast._extension import has_cpu_kernels

pytestmark = pytest.mark.skipif(not (has_cpu_kernels() and hasattr(torch.ops.skelfast, "contrastive_lse")),
                                reason="skelfast._C not built")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# fp32 op vs fp64 reference: relative L2 error of each loss vector and each gradient.
SCRIPT = r"""
import json, torch
from skelfast.ops import losses as L
from skelfast.reference import losses as R
from skelfast.reference.modalities import nrm

def unit(*shape, dim=-1, g=None):
    return nrm(torch.randn(*shape, dtype=torch.float64, generator=g), dim=dim)

def rel(a, b):
    return ((a.double() - b).norm() / b.norm().clamp_min(1e-30)).item()

errors = {}
for K in (67, 8192 + 37):
    g = torch.Generator().manual_seed(K)
    G, N, D, S = 3, 5, 16, 2
    q, k, u = unit(G, N, D, g=g), unit(G, N, D, g=g), unit(G, N, G * D, g=g)
    queues, s, QT = unit(G, D, K, dim=1, g=g), unit(S, N, G * D, g=g), unit(G * D, K, dim=0, g=g)
    cases = {
        "info_nce": (lambda m, q: m.info_nce(q, k, queues), q),
        "context_loss": (lambda m, q: m.context_loss(q, k, queues, topk=5), q),
        "ikem_loss": (lambda m, u: m.ikem_loss(u, k, queues), u),
        "relational_distill_loss": (lambda m, s: m.relational_distill_loss(q, s, queues, QT, topk=5), s),
    }
    for name, (fn, x) in cases.items():
        ours_in = x.float().requires_grad_(True)
        ref_in = x.clone().requires_grad_(True)
        got, want = fn(L, ours_in), fn(R, ref_in)
        w = torch.linspace(0.5, 1.5, got.numel(), dtype=torch.float64).reshape(got.shape)
        (dg,) = torch.autograd.grad((got * w.float()).sum(), ours_in)
        (dw,) = torch.autograd.grad((want * w).sum(), ref_in)
        errors[f"{name} K={K}"] = [rel(got, want.detach()), rel(dg, dw)]

# A NaN similarity makes the loss NaN, as in the reference, whether its column falls in the
# vector loop (column 3) or the scalar tail (column 66 of 67) of the row kernels.
nan_agrees = {}
for col in (3, 66):
    g = torch.Generator().manual_seed(col)
    q, k, u = unit(3, 4, 8, g=g), unit(3, 4, 8, g=g), unit(3, 4, 24, g=g)
    queues = unit(3, 8, 67, dim=1, g=g)
    queues[1, 2, col] = float("nan")
    for name, fn in {"info_nce": lambda m, q, k, u, Q: m.info_nce(q, k, Q),
                     "context_loss": lambda m, q, k, u, Q: m.context_loss(q, k, Q),
                     "ikem_loss": lambda m, q, k, u, Q: m.ikem_loss(u, k, Q)}.items():
        with torch.no_grad():   # float32 throughout: the op computes in fp64 if any input is fp64
            got, want = fn(L, q.float(), k.float(), u.float(), queues.float()), fn(R, q, k, u, queues)
        nan_agrees[f"{name} col={col}"] = bool(torch.isnan(want).any()) and torch.equal(torch.isnan(got), torch.isnan(want))
print(json.dumps({"errors": errors, "nan": nan_agrees}))
"""


def _supported_isas():
    cap = torch.backends.cpu.get_cpu_capability()
    if cap.startswith("AVX512"):
        return ["avx512", "avx2", "baseline"]
    if cap == "AVX2":
        return ["avx2", "baseline"]
    return ["baseline"]


def _run(isa, code):
    env = dict(os.environ, SKELFAST_LOSS_ISA=isa, SKELFAST_QUIET_IMPORT="1")
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("isa", _supported_isas())
def test_every_isa_build_matches_the_fp64_reference(isa):
    proc = _run(isa, SCRIPT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    errors = result["errors"]
    assert result["nan"] and all(result["nan"].values()), f"{isa}: NaN not propagated like the reference: {result['nan']}"
    assert len(errors) == 8
    for case, (value_err, grad_err) in errors.items():
        assert value_err < 2e-6, f"{isa} {case}: loss relative error {value_err:.3g}"
        assert grad_err < 2e-5, f"{isa} {case}: gradient relative error {grad_err:.3g}"


CALL = ("import torch; from skelfast.ops import losses as L; "
        "L.info_nce(torch.nn.functional.normalize(torch.randn(1, 4, 8), dim=-1), "
        "torch.nn.functional.normalize(torch.randn(1, 4, 8), dim=-1), "
        "torch.nn.functional.normalize(torch.randn(1, 8, 32), dim=1))")


def test_unknown_isa_name_is_a_clear_error():
    proc = _run("sse9", CALL)
    assert proc.returncode != 0
    assert "SKELFAST_LOSS_ISA must be avx512, avx2 or baseline, got 'sse9'" in proc.stderr


@pytest.mark.skipif(torch.backends.cpu.get_cpu_capability().startswith("AVX512"), reason="this CPU has AVX-512")
def test_isa_the_cpu_lacks_is_a_clear_error():
    proc = _run("avx512", CALL)
    assert proc.returncode != 0
    assert "SKELFAST_LOSS_ISA=avx512, but this CPU has no AVX-512" in proc.stderr
