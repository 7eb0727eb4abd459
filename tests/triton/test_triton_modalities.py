"""The Triton modalities kernel vs the reference, and its attachment to the op's dispatch key."""
import os

import pytest
import torch
from torch.library import opcheck

pytest.importorskip("triton")

from skelfast import MODALITIES6, ops, reference  # noqa: E402
from skelfast._extension import has_cpu_kernels  # noqa: E402
from skelfast.modality_spec import check_modalities_args  # noqa: E402
from skelfast.ops import _backend  # noqa: E402
from skelfast.topology import COCO17, NTU25_CROSSCLR, NTU25_IKEM  # noqa: E402

from _common import ELEMENTWISE_TOL, make_frames, make_skeleton  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
if DEVICE == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip("no GPU and TRITON_INTERPRET is not set", allow_module_level=True)

from skelfast.triton.modalities import modalities_forward  # noqa: E402


def run(x, frames, names=MODALITIES6, topo=NTU25_IKEM):
    ids, topo, scale = check_modalities_args(x, frames, names, topo, 50.0)
    return modalities_forward(x, scale, ids, topo.bone_parent, topo.axis_partner, topo.normal_list)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("names", [MODALITIES6, ("omega", "bone"), ("acceleration",)], ids="+".join)
def test_matches_reference(dtype, names):
    x = make_skeleton(N=2, T=5, dtype=dtype, device=DEVICE)
    frames = make_frames(2, DEVICE)
    want = reference.modalities(x.float(), frames, names).to(dtype)
    atol, rtol = ELEMENTWISE_TOL[dtype]
    torch.testing.assert_close(run(x, frames, names), want, atol=atol, rtol=rtol)


def test_float64_uses_fp32_accurate_atan():
    """fp64 inputs are computed in fp64, but atan2 is a float32-accurate polynomial (the interpreter
    has no libdevice): omega agrees to ~1e-7, every other modality tightly."""
    x = make_skeleton(N=2, T=5, dtype=torch.float64, device=DEVICE)
    frames = make_frames(2, DEVICE)
    got, want = run(x, frames), reference.modalities(x, frames)
    torch.testing.assert_close(got[:, :5], want[:, :5], atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(got[:, 5], want[:, 5], atol=2e-6, rtol=1e-6)


@pytest.mark.parametrize("topo", [NTU25_CROSSCLR, COCO17], ids=lambda t: t.name)
@pytest.mark.parametrize("shape", [(1, 1, 1), (3, 2, 2), (0, 4, 2)], ids=lambda s: "N%dT%dM%d" % s)
def test_topologies_and_edge_shapes(topo, shape):
    N, T, M = shape
    x = make_skeleton(N=N, T=T, V=topo.num_joints, M=M, device=DEVICE)
    frames = make_frames(N, DEVICE)
    torch.testing.assert_close(run(x, frames, topo=topo), reference.modalities(x, frames, topology=topo))


@pytest.mark.skipif(DEVICE != "cpu" or not has_cpu_kernels(), reason="dispatch test uses the CPU key under the interpreter")
def test_attach_to_dispatch_key_and_detach(monkeypatch):
    """attach_triton() routes torch.ops.skelfast.modalities to Triton (here on the CPU key, as on
    CUDA in production); opcheck passes on the routed op; detach_triton() restores the C++ kernel."""
    calls = []
    fn, fallbacks = _backend._TRITON_KERNELS["modalities"]

    def counting(*args):
        calls.append(1)
        return fn(*args)

    monkeypatch.setitem(_backend._TRITON_KERNELS, "modalities", (counting, fallbacks))
    x = make_skeleton(N=2, T=4, dtype=torch.float64)
    frames = make_frames(2)
    ids, topo, scale = check_modalities_args(x, frames, MODALITIES6, "ntu25", 50.0)
    args = (x, scale, list(ids), list(topo.bone_parent), list(topo.axis_partner), topo.normal_list)
    try:
        _backend.attach_triton("CPU")
        y = torch.ops.skelfast.modalities(*args)
        assert calls, "the Triton kernel was not called"
        torch.testing.assert_close(y, reference.modalities(x, frames), atol=2e-6, rtol=1e-6)
        opcheck(torch.ops.skelfast.modalities.default, (x.clone().requires_grad_(True),) + args[1:],
                test_utils=("test_schema", "test_autograd_registration", "test_faketensor"))
    finally:
        _backend.detach_triton()
    n = len(calls)
    torch.testing.assert_close(torch.ops.skelfast.modalities(*args), reference.modalities(x, frames))
    assert len(calls) == n, "the C++ kernel was not restored"
