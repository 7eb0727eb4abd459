"""skelfast.ops.modalities (compiled C++/CUDA kernels) vs the eager reference (method.md §3.3)."""
import pytest
import torch
from torch.library import opcheck

import skelfast
from skelfast import MODALITIES6, ops, reference
from skelfast._extension import has_cpu_kernels
from skelfast.modality_spec import check_modalities_args
from skelfast.topology import COCO17, NTU25_CROSSCLR, NTU25_IKEM

from _common import DEVICES, ELEMENTWISE_TOL, make_frames, make_skeleton

pytestmark = pytest.mark.skipif(not has_cpu_kernels(), reason="skelfast._C not built")

TOPOLOGIES = [NTU25_IKEM, NTU25_CROSSCLR, COCO17]
SUBSETS = [MODALITIES6, ("joint", "motion", "bone"), ("omega",), ("acceleration", "rotation_axis"), ("bone", "joint")]


def op_args(x, frames, names=MODALITIES6, topo=NTU25_IKEM):
    ids, topo, scale = check_modalities_args(x, frames, names, topo, 50.0)
    return (x, scale, list(ids), list(topo.bone_parent), list(topo.axis_partner), topo.normal_list)


def reference_lowp(x, frames, names, topo):
    """The reference on the same rounded input, computed in fp32/fp64 and cast to x.dtype."""
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    return reference.modalities(x.to(acc), frames, names, topo).to(x.dtype)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("names", SUBSETS, ids=lambda n: "+".join(n))
def test_forward_matches_reference(device, dtype, names):
    x = make_skeleton(N=3, T=9, dtype=dtype, device=device)
    frames = make_frames(3, device)
    got = ops.modalities(x, frames, names)
    want = reference_lowp(x, frames, names, NTU25_IKEM)
    atol, rtol = ELEMENTWISE_TOL[dtype]
    assert got.dtype == dtype and got.shape == (3, len(names), 3, 9, 25, 2)
    torch.testing.assert_close(got, want, atol=atol, rtol=rtol)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("topo", TOPOLOGIES, ids=lambda t: t.name)
@pytest.mark.parametrize("shape", [(1, 1, 1), (2, 2, 1), (3, 5, 2), (5, 13, 3)], ids=lambda s: "N%dT%dM%d" % s)
def test_topologies_and_odd_shapes(device, topo, shape):
    N, T, M = shape
    x = make_skeleton(N=N, T=T, V=topo.num_joints, M=M, device=device)
    frames = make_frames(N, device)
    torch.testing.assert_close(ops.modalities(x, frames, topology=topo), reference.modalities(x, frames, topology=topo))


@pytest.mark.parametrize("device", DEVICES)
def test_empty_batch(device):
    x = make_skeleton(N=0, device=device)
    y = ops.modalities(x, torch.zeros(0, dtype=torch.long, device=device))
    assert y.shape == (0, 6, 3, 7, 25, 2)
    x.requires_grad_(True)
    ops.modalities(x).sum().backward()
    assert x.grad.shape == x.shape


@pytest.mark.parametrize("device", DEVICES)
def test_non_contiguous_input(device):
    base = make_skeleton(N=4, T=6, device=device).permute(0, 1, 2, 4, 3).contiguous()  # (N,3,T,M,V)
    x = base.permute(0, 1, 2, 4, 3)  # (N,3,T,V,M) view, not contiguous
    assert not x.is_contiguous()
    torch.testing.assert_close(ops.modalities(x), reference.modalities(x))


@pytest.mark.parametrize("device", DEVICES)
def test_absent_person_exact_zero_no_nan(device):
    """An all-zero person gives exact zeros and a finite gradient. Omega contributes nothing to
    that gradient (theta is constant 0 there), where autograd through the reference gives NaN."""
    x = make_skeleton(N=2, T=6, device=device, dtype=torch.float64).requires_grad_(True)
    frames = make_frames(2, device)
    y = ops.modalities(x, frames)
    assert torch.all(y[0, ..., 1] == 0)
    grad_out = torch.randn_like(y)
    (g,) = torch.autograd.grad(y, x, grad_out)
    assert torch.isfinite(g).all()
    (g5,) = torch.autograd.grad(reference.modalities(x, frames, MODALITIES6[:5]), x, grad_out[:, :5])
    torch.testing.assert_close(g[0, ..., 1], g5[0, ..., 1])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_zero_bone_against_all_negative_partner_has_angle_zero(device, dtype):
    """method.md §3.3: theta = 0 when a bone is zero. A zero bone normalises to +0s; its dot with
    a partner of all-negative components is -0, and atan2(+0, -0) = pi: omega was off by pi*f*nrm(R)
    (fp64 forward, every backward) until the dot got a +0."""
    x = make_skeleton(N=1, T=3, M=1, device=device, dtype=torch.float64)
    x[:, :, :, 20] = 0.0
    x[:, :, :, 2] = torch.tensor([-1.0, -2.0, -0.5], dtype=torch.float64, device=device).view(1, 3, 1)
    x[:, :, 1:, 3] = x[:, :, 1:, 2]          # bone 3 (parent 2, axis partner 2) is zero from t=1 on
    frames = torch.tensor([50], device=device)
    xa, xb = x.to(dtype).requires_grad_(True), x.clone().requires_grad_(True)
    got = ops.modalities(xa, frames, ("omega",))
    want = reference.modalities(xb, frames, ("omega",))
    tol = dict(atol=1e-10, rtol=1e-10) if dtype == torch.float64 else dict(atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(got.double(), want, **tol)
    g = torch.randn(got.shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64).to(device)
    (ga,) = torch.autograd.grad(got, xa, g.to(dtype))
    (gb,) = torch.autograd.grad(want, xb, g)
    torch.testing.assert_close(ga.double(), gb, **tol)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("names", SUBSETS, ids=lambda n: "+".join(n))
@pytest.mark.parametrize("topo", [NTU25_IKEM, NTU25_CROSSCLR], ids=lambda t: t.name)
def test_backward_matches_reference(device, dtype, names, topo):
    # no absent person: autograd through the reference gives atan2'(0, 0) = NaN there
    x = make_skeleton(N=3, T=6, dtype=dtype, device=device, absent=False)
    frames = make_frames(3, device)
    xa = x.clone().requires_grad_(True)
    xb = x.clone().double().requires_grad_(True)  # the oracle's gradient in fp64
    y = ops.modalities(xa, frames, names, topo)
    grad_out = torch.randn_like(y)
    (got,) = torch.autograd.grad(y, xa, grad_out)
    (want,) = torch.autograd.grad(reference.modalities(xb, frames, names, topo), xb, grad_out.double())
    want = want.to(dtype)
    tol = dict(atol=1e-9, rtol=1e-9) if dtype == torch.float64 else dict(atol=2e-4, rtol=1e-4)
    if topo is NTU25_CROSSCLR and "omega" in names:
        # B[20] = x[20] - x[20] is identically 0: autograd through the reference's nrm(0) adds and
        # subtracts g/1e-12 at joint 20 (cancellation noise ~1e-4); the kernel's exact 0 there is right.
        torch.testing.assert_close(got[:, :, :, 20], want[:, :, :, 20], atol=1e-3, rtol=0)
        got, want = got[:, :, :, :20], want[:, :, :, :20]
    torch.testing.assert_close(got, want, **tol)


@pytest.mark.parametrize("names", [MODALITIES6, ("omega",), ("bone", "rotation_axis")], ids=lambda n: "+".join(n))
@pytest.mark.parametrize("topo", [NTU25_IKEM, NTU25_CROSSCLR, COCO17], ids=lambda t: t.name)
def test_gradcheck_fp64(names, topo):
    x = make_skeleton(N=2, T=4, V=topo.num_joints, M=2, dtype=torch.float64, absent=False).requires_grad_(True)
    frames = torch.tensor([37, 120])
    assert torch.autograd.gradcheck(lambda x: ops.modalities(x, frames, names, topo), (x,), atol=1e-7)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("with_scale", [True, False])
def test_opcheck(device, with_scale):
    x = make_skeleton(N=3, T=5, dtype=torch.float64, device=device).requires_grad_(True)
    args = op_args(x, make_frames(3, device) if with_scale else None)
    opcheck(torch.ops.skelfast.modalities.default, args)
    grad_out = torch.randn(3, 6, 3, 5, 25, 2, dtype=torch.float64, device=device)
    opcheck(torch.ops.skelfast.modalities_backward.default, (grad_out, x.detach()) + args[1:])


def test_torch_compile_fullgraph_cpu():
    x = make_skeleton(N=3, T=8)
    frames = make_frames(3)

    def step(x, frames):
        return ops.modalities(x, frames).square().mean(dim=(2, 3, 4, 5))

    compiled = torch.compile(step, fullgraph=True)
    torch.testing.assert_close(compiled(x, frames), step(x, frames))
    # the frames check cannot read values while tracing: it is an assertion in the graph
    bad = frames.clone()
    bad[1] = 0
    with pytest.raises(RuntimeError, match="frames must be finite and > 0"):
        compiled(x, bad)


def test_names_may_be_any_iterable_on_every_backend():
    """A generator of names (consumed once) works on the compiled and the torch backend alike."""
    x, frames = make_skeleton(N=2, T=4), make_frames(2)
    want = reference.modalities(x, frames, ("motion", "bone"))
    previous = ops.get_backend()
    try:
        for backend, runs in (("auto", "compiled" if has_cpu_kernels() else "torch"), ("torch", "torch")):
            ops.set_backend(backend)
            assert ops._backend.resolve(x.device) == runs
            got = ops.modalities(x, frames, (n for n in ("motion", "bone")))
            torch.testing.assert_close(got, want, msg=lambda m: f"{backend}: {m}")
    finally:
        ops.set_backend(previous)


def test_deterministic_bitwise_cpu():
    x = make_skeleton(N=4, T=10)
    frames = make_frames(4)
    assert torch.equal(ops.modalities(x, frames), ops.modalities(x, frames))
    xg = x.clone().requires_grad_(True)
    g1 = torch.autograd.grad(ops.modalities(xg, frames).sum(), xg)[0]
    g2 = torch.autograd.grad(ops.modalities(xg, frames).sum(), xg)[0]
    assert torch.equal(g1, g2)


@pytest.mark.cuda
def test_cuda_matches_cpu_kernel():
    x = make_skeleton(N=16, T=50)
    frames = make_frames(16)
    torch.testing.assert_close(ops.modalities(x.cuda(), frames.cuda()).cpu(), ops.modalities(x, frames),
                               atol=1e-5, rtol=1e-5)
