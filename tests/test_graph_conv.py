"""skelfast.ops.graph_conv (grouped ST-GCN spatial unit) vs the reference unit (method.md §4.1-§4.2)."""
import os
import subprocess
import sys

import pytest
import torch

if not torch.cuda.is_available() and "triton" not in sys.modules:
    # The Triton tests below run under the interpreter on CPU; the variable must be set before the
    # first `import triton` in the session (torch.compile's Inductor imports it too).
    os.environ.setdefault("TRITON_INTERPRET", "1")
import torch.nn.functional as F
from torch.library import opcheck

from skelfast import ops
from skelfast._extension import has_cpu_kernels
from skelfast.ops.graph_conv import graph_conv_composite
from skelfast.reference.graph import spatial_adjacency
from skelfast.reference.stgcn import STGCNBlock, graph_conv_reference

from _common import DEVICES, kernel_errors_kill_process

pytestmark = pytest.mark.skipif(not (has_cpu_kernels() and hasattr(torch.ops.skelfast, "graph_conv")),
                                reason="skelfast._C not built")


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny tensors: intra-op threads only add barrier spinning on a shared 2-core box."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def make_args(B=2, G=1, Cin=5, Cout=7, T=6, topology="ntu25", dtype=torch.float64, device="cpu", seed=0,
              shared_importance=False):
    """Random inputs; E is perturbed from 1 so that its gradient and the per-group masks matter."""
    g = torch.Generator().manual_seed(seed)
    A = spatial_adjacency(topology).to(dtype)
    K, V = A.shape[0], A.shape[1]
    x = torch.randn(B, G * Cin, T, V, generator=g, dtype=torch.float64)
    w = 0.3 * torch.randn(G * K * Cout, Cin, 1, 1, generator=g, dtype=torch.float64)
    b = torch.randn(G * K * Cout, generator=g, dtype=torch.float64)
    shape = (K, V, V) if shared_importance else (G, K, V, V)
    E = 1 + 0.3 * torch.randn(*shape, generator=g, dtype=torch.float64)
    return [t.to(device=device, dtype=dtype) for t in (x, w, b)] + [A.to(device), E.to(device=device, dtype=dtype)]


def reference_grouped(x, w, b, A, E, G):
    """G independent reference units on channel slices (the oracle for the grouped op)."""
    xs, ws, bs = x.chunk(G, 1), w.chunk(G, 0), b.chunk(G, 0) if b is not None else [None] * G
    Es = [E] if E.dim() == 3 else list(E.unbind(0))
    return torch.cat([graph_conv_reference(xs[g], ws[g], bs[g], A, Es[g]) for g in range(G)], 1)


def grads(fn, tensors, grad_out):
    tensors = [t.detach().clone().requires_grad_(True) for t in tensors]
    out = fn(*tensors)
    return out, torch.autograd.grad(out, tensors, grad_out)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("G", [1, 3])
@pytest.mark.parametrize("dims", [(5, 7, 6), (3, 16, 1), (16, 16, 13), (4, 2, 5)], ids=lambda d: "Cin%dCout%dT%d" % d)
def test_forward_backward_matches_reference(device, dtype, G, dims):
    Cin, Cout, T = dims
    x, w, b, A, E = make_args(B=3, G=G, Cin=Cin, Cout=Cout, T=T, dtype=dtype, device=device)
    grad_out = torch.randn(3, G * Cout, T, 25, dtype=dtype, device=device)
    out, got = grads(lambda x, w, b, E: ops.graph_conv(x, w, b, A, E, G), [x, w, b, E], grad_out)
    want_out, want = grads(lambda x, w, b, E: reference_grouped(x, w, b, A, E, G), [x, w, b, E], grad_out)
    tol = dict(atol=1e-11, rtol=1e-11) if dtype == torch.float64 else dict(atol=3e-5, rtol=1e-5)
    torch.testing.assert_close(out, want_out, **tol)
    for name, g1, g2 in zip(("x", "weight", "bias", "importance"), got, want):
        assert g1.shape == g2.shape, name
        torch.testing.assert_close(g1, g2, **tol, msg=lambda m: f"grad {name}: {m}")


@pytest.mark.parametrize("topology", ["coco17", "ntu25"])
@pytest.mark.parametrize("shape", [(1, 1), (2, 7), (3, 11)], ids=lambda s: "B%dT%d" % s)
def test_odd_shapes_topologies_2d_weight_no_bias(topology, shape):
    B, T = shape
    x, w, b, A, E = make_args(B=B, G=2, Cin=3, Cout=5, T=T, topology=topology)
    w2 = w.flatten(1)  # (G*K*Cout, Cin)
    torch.testing.assert_close(ops.graph_conv(x, w2, None, A, E, 2), reference_grouped(x, w, None, A, E, 2))
    # importance None means all-ones
    ones = torch.ones_like(E)
    torch.testing.assert_close(ops.graph_conv(x, w, b, A, None, 2), reference_grouped(x, w, b, A, ones, 2))


def test_shared_importance_g1_and_dense_adjacency():
    x, w, b, A, E = make_args(G=1, shared_importance=True)
    torch.testing.assert_close(ops.graph_conv(x, w, b, A, E), graph_conv_reference(x, w, b, A, E))
    # a dense random adjacency exercises the general (non-sparse) path of the edge list
    Ad = torch.rand_like(A)
    torch.testing.assert_close(ops.graph_conv(x, w, b, Ad, E), graph_conv_reference(x, w, b, Ad, E))


def test_non_contiguous_input_and_zero_batch():
    x, w, b, A, E = make_args(B=2, G=2, T=5)
    xt = x.transpose(2, 3).contiguous().transpose(2, 3)
    assert not xt.is_contiguous()
    torch.testing.assert_close(ops.graph_conv(xt, w, b, A, E, 2), reference_grouped(x, w, b, A, E, 2))
    x0 = x[:0].clone().requires_grad_(True)
    y = ops.graph_conv(x0, w, b, A, E, 2)
    assert y.shape == (0, 14, 5, 25)
    y.sum().backward()
    assert x0.grad.shape == x0.shape


def test_importance_grad_zero_where_adjacency_zero():
    x, w, b, A, E = make_args(G=2)
    E.requires_grad_(True)
    ops.graph_conv(x, w, b, A, E, 2).square().sum().backward()
    assert torch.all(E.grad[:, A == 0] == 0)
    assert torch.count_nonzero(E.grad[:, A != 0]) == 2 * int((A != 0).sum())


@pytest.mark.parametrize("G", [1, 2])
def test_gradcheck_fp64(G):
    # a 6-joint chain keeps the number of gradcheck perturbations (E has G*K*V*V entries) small
    from skelfast.topology import Topology
    topo = Topology(name="chain6", num_joints=6, bone_parent=(0, 0, 1, 2, 3, 4), axis_partner=(1, 2, 3, 4, 5, 4),
                    edges=tuple((i, i + 1) for i in range(5)), center=2)
    x, w, b, A, E = make_args(B=2, G=G, Cin=2, Cout=3, T=3, topology=topo)
    inputs = [t.requires_grad_(True) for t in (x, w, b, E)]
    assert torch.autograd.gradcheck(lambda x, w, b, E: ops.graph_conv(x, w, b, A, E, G), inputs)


@pytest.mark.parametrize("with_bias", [True, False])
@pytest.mark.parametrize("with_importance", [True, False])
def test_opcheck(with_bias, with_importance):
    x, w, b, A, E = make_args(B=2, G=2, Cin=3, Cout=4, T=3)
    x.requires_grad_(True)
    w.requires_grad_(True)
    args = (x, w, b.requires_grad_(True) if with_bias else None, A,
            E.requires_grad_(True) if with_importance else None, 2)
    opcheck(torch.ops.skelfast.graph_conv.default, args)
    grad_out = torch.randn(2, 8, 3, 25, dtype=torch.float64)
    opcheck(torch.ops.skelfast.graph_conv_backward.default, (grad_out,) + tuple(
        a.detach() if isinstance(a, torch.Tensor) else a for a in args))


def test_bf16_within_tolerance():
    """bf16 inputs, fp32 accumulation. Rule (engineering.md §7): the error vs the fp64 oracle is at
    most 2x that of the reference computed in bf16, plus a small epsilon."""
    x, w, b, A, E = make_args(B=2, G=2, Cin=16, Cout=16, T=8)
    want = reference_grouped(x, w, b, A, E, 2)
    xb, wb, bb = x.bfloat16(), w.bfloat16(), b.bfloat16()
    got = ops.graph_conv(xb, wb, bb, A.float(), E.float(), 2)
    assert got.dtype == torch.bfloat16
    lowp = reference_grouped(xb, wb, bb, A.bfloat16(), E.bfloat16(), 2)
    err = (got.double() - want).abs().max()
    err_lowp = (lowp.double() - want).abs().max()
    assert err <= 2 * err_lowp + 1e-2, (err, err_lowp)
    # gradients in bf16 are finite and close in relative terms (stated tolerance 3e-2 relative)
    xg = xb.clone().requires_grad_(True)
    ops.graph_conv(xg, wb, bb, A.float(), E.float(), 2).float().square().sum().backward()
    x64 = x.clone().requires_grad_(True)
    reference_grouped(x64, w, b, A, E, 2).square().sum().backward()
    rel = (xg.grad.double() - x64.grad).norm() / x64.grad.norm()
    assert rel < 3e-2, rel


def test_autocast_leaves_float64_alone():
    """As autocast does for PyTorch's own ops: fp64 inputs are not cast to the autocast dtype."""
    x, w, b, A, E = make_args(B=2, G=2, Cin=3, Cout=4, T=4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = ops.graph_conv(x, w, b, A, E, 2)
    assert y.dtype == torch.float64
    torch.testing.assert_close(y, reference_grouped(x, w, b, A, E, 2), atol=1e-12, rtol=1e-12)


def test_autocast_cpu_bf16():
    x, w, b, A, E = [t.float() for t in make_args(B=2, G=2, Cin=8, Cout=8, T=4)]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = ops.graph_conv(x, w, b, A, E, 2)
        lowp = reference_grouped(x, w, b, A, E, 2)   # the reference under the same autocast
    assert y.dtype == torch.bfloat16
    # the bf16 rule of test_bf16_within_tolerance, against the fp64 oracle
    want = reference_grouped(*(t.double() for t in (x, w, b, A, E)), 2)
    err, err_lowp = (y.double() - want).abs().max(), (lowp.double() - want).abs().max()
    assert err <= 2 * err_lowp + 1e-3, (err, err_lowp)


@pytest.mark.parametrize("stride", [1, 2])
def test_inside_reference_blocks(stride):
    """The op in place of the spatial unit of an ST-GCN block (stride-free and strided temporal
    conv around it): block outputs and all parameter gradients match the reference block."""
    torch.manual_seed(0)
    A = spatial_adjacency().double()
    blk = STGCNBlock(4, 8, stride=stride, residual="auto").double()
    E = torch.nn.Parameter(1 + 0.2 * torch.randn(3, 25, 25, dtype=torch.float64))
    x = torch.randn(2, 4, 9, 25, dtype=torch.float64)

    def run(use_op):
        blk.zero_grad()
        E.grad = None
        if use_op:
            g = ops.graph_conv(x, blk.gcn.conv.weight, blk.gcn.conv.bias, A, E)
            out = F.relu(blk.tcn(g) + blk.residual(x))
        else:
            out = blk(x, A, E)
        out.square().sum().backward()
        return out.detach(), [p.grad.clone() for p in blk.parameters()] + [E.grad.clone()]

    o1, g1 = run(True)
    o2, g2 = run(False)
    torch.testing.assert_close(o1, o2, atol=1e-10, rtol=1e-10)
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b, atol=1e-9, rtol=1e-9)


def test_torch_compile_fullgraph_cpu():
    x, w, b, A, E = [t.float() for t in make_args(B=2, G=2, Cin=3, Cout=4, T=5)]

    def f(x, w, b, E):
        return ops.graph_conv(x, w, b, A, E, 2).relu()

    compiled = torch.compile(f, fullgraph=True)
    outs, grads = [], []
    for fn in (compiled, f):
        leaves = [t.clone().requires_grad_() for t in (x, w, b, E)]
        out = fn(*leaves)
        outs.append(out)
        grads.append(torch.autograd.grad(out.square().sum(), leaves))
    torch.testing.assert_close(outs[0], outs[1])
    for got, want in zip(*grads):
        torch.testing.assert_close(got, want)


def test_deterministic_bitwise_cpu():
    x, w, b, A, E = [t.float() for t in make_args(B=4, G=2, Cin=8, Cout=8, T=12)]
    E.requires_grad_(True)
    g1 = torch.autograd.grad(ops.graph_conv(x, w, b, A, E, 2).sum(), E)[0]
    g2 = torch.autograd.grad(ops.graph_conv(x, w, b, A, E, 2).sum(), E)[0]
    assert torch.equal(g1, g2)


def test_learnable_adjacency_gets_its_gradient():
    """The kernels hold A constant; an A that requires grad (an adaptive graph) runs the composite,
    so it gets the reference's gradient instead of silently none."""
    x, w, b, A, E = make_args(G=2)
    A1, A2 = A.clone().requires_grad_(True), A.clone().requires_grad_(True)
    gen = torch.Generator().manual_seed(3)
    gy = torch.randn(x.shape[0], 14, x.shape[2], x.shape[3], generator=gen, dtype=torch.float64)
    (ops.graph_conv(x, w, b, A1, E, 2) * gy).sum().backward()
    (reference_grouped(x, w, b, A2, E, 2) * gy).sum().backward()
    assert A1.grad is not None and A1.grad.abs().sum() > 0
    torch.testing.assert_close(A1.grad, A2.grad, atol=1e-10, rtol=1e-10)


def test_torch_backend_composite_matches():
    x, w, b, A, E = make_args(G=3)
    torch.testing.assert_close(graph_conv_composite(x, w, b, A, E, 3), reference_grouped(x, w, b, A, E, 3))


@pytest.mark.cuda
def test_cuda_matches_cpu():
    x, w, b, A, E = [t.float() for t in make_args(B=4, G=3, Cin=16, Cout=32, T=13)]
    got = ops.graph_conv(*(t.cuda() for t in (x, w, b, A, E)), 3).cpu()
    torch.testing.assert_close(got, ops.graph_conv(x, w, b, A, E, 3), atol=1e-4, rtol=1e-4)


@pytest.mark.cuda
def test_cuda_opcheck_channels_last_input():
    """The CUDA kernel returns contiguous outputs for a channels-last x; the fake kernel must say so
    (it promises channels-last only on CPU, where the C++ kernel keeps the layout)."""
    x, w, b, A, E = (t.cuda() for t in make_args(B=2, G=2, Cin=3, Cout=4, T=3))
    x = x.contiguous(memory_format=torch.channels_last).requires_grad_(True)
    args = (x, w.requires_grad_(True), b.requires_grad_(True), A, E.requires_grad_(True), 2)
    opcheck(torch.ops.skelfast.graph_conv.default, args)
    grad_out = torch.randn(2, 8, 3, 25, dtype=torch.float64, device="cuda")
    opcheck(torch.ops.skelfast.graph_conv_backward.default, (grad_out,) + tuple(
        a.detach() if isinstance(a, torch.Tensor) else a for a in args))


def test_arguments_on_another_device_are_refused():
    """Checked in Python: the kernels' own device check would end the process on torch 2.11."""
    x, w, b, A, E = make_args(B=2, G=2, Cin=3, Cout=4, T=3)
    for i, name in enumerate(("weight", "bias", "A", "importance")):
        args = [w, b, A, E]
        args[i] = args[i].to("meta")
        with pytest.raises(ValueError, match=f"graph_conv: {name} is on meta, x on cpu"):
            ops.graph_conv(x, *args, 2)


def test_adjacency_without_subsets_is_refused():
    """K = 0 subsets: the C++ binding divided by zero (SIGFPE ended the process). Found by review."""
    x, w = torch.randn(2, 4, 3, 5), torch.randn(6, 4)
    A0 = torch.zeros(0, 5, 5)
    with pytest.raises(ValueError, match=r"A must be \(K, V, V\) with K >= 1 subsets, got \(0, 5, 5\)"):
        ops.graph_conv(x, w, None, A0, None, 1)
    if not has_cpu_kernels() or kernel_errors_kill_process():
        return   # the public check above is the whole contract where any kernel error ends the process
    # the raw op, in a child process: a regression would end the test process with SIGFPE
    code = ("import torch, skelfast.ops\n"
            "try:\n"
            "    torch.ops.skelfast.graph_conv(torch.randn(2, 4, 3, 5), torch.randn(6, 4), None, "
            "torch.zeros(0, 5, 5), None, 1)\n"
            "except RuntimeError as e:\n"
            "    print('raised:', e)\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                       env=dict(os.environ, SKELFAST_QUIET_IMPORT="1"))
    assert r.returncode == 0, (r.returncode, r.stderr[-2000:])
    assert "A must have K >= 1 subsets" in r.stdout, r.stdout + r.stderr[-2000:]


def _import_triton_graph_conv():
    if not torch.cuda.is_available() and "triton" in sys.modules and os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("triton was imported before TRITON_INTERPRET=1 was set; run the triton tests on their own")
    if not torch.cuda.is_available():
        # must precede the first `import triton` (triton.language's own @jit helpers) and the
        # decoration of skelfast's kernels
        os.environ.setdefault("TRITON_INTERPRET", "1")
    pytest.importorskip("triton")
    import skelfast.triton.graph_conv as tgc
    return tgc


@pytest.mark.triton
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("G", [1, 2])
def test_triton_forward_backward_matches_reference(dtype, G):
    tgc = _import_triton_graph_conv()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    x, w, b, A, E = make_args(B=2, G=G, Cin=3, Cout=4, T=3, topology="coco17", dtype=dtype, device=device)
    grad_out = torch.randn(2, G * 4, 3, 17, dtype=dtype, device=device)
    want_out, want = grads(lambda x, w, b, E: reference_grouped(x, w, b, A, E, G), [x, w, b, E], grad_out)
    tol = dict(atol=1e-11, rtol=1e-11) if dtype == torch.float64 else dict(atol=2e-5, rtol=1e-5)
    torch.testing.assert_close(tgc.graph_conv_forward(x, w, b, A, E, G), want_out, **tol)
    got = tgc.graph_conv_backward(grad_out, x, w, b, A, E, G)
    for name, g1, g2 in zip(("x", "weight", "bias", "importance"), got, want):
        torch.testing.assert_close(g1, g2, **tol, msg=lambda m: f"grad {name}: {m}")


@pytest.mark.triton
def test_triton_attached_to_op_autograd():
    """The Triton kernels behind torch.ops.skelfast.graph_conv (attached to the CPU key under the
    interpreter, as the CUDA key on GPUs): autograd through the op matches the reference."""
    _import_triton_graph_conv()
    from skelfast.ops import _backend
    if torch.cuda.is_available():
        pytest.skip("covered by the CUDA-key attachment on GPU machines")
    x, w, b, A, E = make_args(B=1, G=2, Cin=2, Cout=3, T=2, topology="coco17", dtype=torch.float32)
    grad_out = torch.randn(1, 6, 2, 17)
    want_out, want = grads(lambda x, w, b, E: reference_grouped(x, w, b, A, E, 2), [x, w, b, E], grad_out)
    _backend.attach_triton("CPU")
    try:
        out, got = grads(lambda x, w, b, E: ops.graph_conv(x, w, b, A, E, 2), [x, w, b, E], grad_out)
    finally:
        _backend.detach_triton()
    torch.testing.assert_close(out, want_out, atol=2e-5, rtol=1e-5)
    for g1, g2 in zip(got, want):
        torch.testing.assert_close(g1, g2, atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("G", [1, 3])
def test_channels_last_layout(dtype, G):
    """Channels-last x takes the channels-last kernels: output and dx keep that layout and every
    result matches the reference."""
    x, w, b, A, E = make_args(B=3, G=G, Cin=5, Cout=6, T=4, dtype=dtype)
    xcl = x.contiguous(memory_format=torch.channels_last)
    grad_out = torch.randn(3, G * 6, 4, 25, dtype=dtype).contiguous(memory_format=torch.channels_last)
    out, got = grads(lambda x, w, b, E: ops.graph_conv(x, w, b, A, E, G), [xcl, w, b, E], grad_out)
    want_out, want = grads(lambda x, w, b, E: reference_grouped(x, w, b, A, E, G), [x, w, b, E], grad_out)
    assert out.is_contiguous(memory_format=torch.channels_last) and not out.is_contiguous()
    assert got[0].is_contiguous(memory_format=torch.channels_last)
    tol = dict(atol=1e-11, rtol=1e-11) if dtype == torch.float64 else dict(atol=3e-5, rtol=1e-5)
    torch.testing.assert_close(out, want_out, **tol)
    for g1, g2 in zip(got, want):
        torch.testing.assert_close(g1, g2, **tol)
    # a contiguous grad_out for a channels-last x is converted, not misread
    out2, got2 = grads(lambda x, w, b, E: ops.graph_conv(x, w, b, A, E, G), [xcl, w, b, E], grad_out.contiguous())
    torch.testing.assert_close(got2[0], want[0], **tol)


@pytest.mark.parametrize("with_bias", [True, False])
@pytest.mark.parametrize("dims", [(17, 9, 5), (1, 4, 1), (64, 3, 2), (5, 33, 3)], ids=lambda d: "Cin%dCout%dT%d" % d)
def test_channels_last_shapes_and_no_bias(with_bias, dims):
    """The channels-last kernels (one grouped oneDNN 1x1 conv, SIMD reductions over Cin; a per-group
    backward from Cout = 32 on) at channel counts that are not a multiple of the vector width,
    Cin = 1, T = 1, and without a bias (whose gradient terms are then skipped): fp64 results and
    every gradient equal the reference."""
    Cin, Cout, T = dims
    x, w, b, A, E = make_args(B=3, G=3, Cin=Cin, Cout=Cout, T=T)
    b = b if with_bias else None
    xcl = x.contiguous(memory_format=torch.channels_last)
    grad_out = torch.randn(3, 3 * Cout, T, 25, dtype=torch.float64).contiguous(memory_format=torch.channels_last)
    ins = [xcl, w, E] + ([b] if with_bias else [])
    fn = lambda x, w, E, *b: ops.graph_conv(x, w, b[0] if b else None, A, E, 3)  # noqa: E731
    ref = lambda x, w, E, *b: reference_grouped(x, w, b[0] if b else None, A, E, 3)  # noqa: E731
    out, got = grads(fn, ins, grad_out)
    want_out, want = grads(ref, [x] + ins[1:], grad_out)
    torch.testing.assert_close(out, want_out, atol=1e-11, rtol=1e-11)
    for g1, g2 in zip(got, want):
        torch.testing.assert_close(g1, g2, atol=1e-11, rtol=1e-11)


def test_channels_last_zero_input_channels():
    """Cin = 0: no projection, the output is the aggregated bias alone (sum_k bias[g,k,c] *
    sum_v (A*E)[g,k,v,w]); gradients equal the contiguous path's (a different kernel)."""
    x, w, b, A, E = make_args(B=2, G=2, Cin=0, Cout=3, T=2)
    xcl = x.contiguous(memory_format=torch.channels_last)
    grad_out = torch.randn(2, 6, 2, 25, dtype=torch.float64)
    out, got = grads(lambda x, w, b, E: ops.graph_conv(x, w, b, A, E, 2), [xcl, w, b, E], grad_out)
    bias_term = torch.einsum("gkc,gkw->gcw", b.view(2, 3, 3), (A * E).sum(2))
    torch.testing.assert_close(out, bias_term.reshape(1, 6, 1, 25).expand(2, 6, 2, 25), atol=1e-12, rtol=1e-12)
    out2, want = grads(lambda x, w, b, E: ops.graph_conv(x, w, b, A, E, 2), [x.contiguous(), w, b, E], grad_out)
    torch.testing.assert_close(out, out2, atol=1e-12, rtol=1e-12)
    for g1, g2 in zip(got, want):
        torch.testing.assert_close(g1, g2, atol=1e-12, rtol=1e-12)


def test_channels_last_gradcheck_and_bf16():
    from skelfast.topology import Topology
    topo = Topology(name="chain6", num_joints=6, bone_parent=(0, 0, 1, 2, 3, 4), axis_partner=(1, 2, 3, 4, 5, 4),
                    edges=tuple((i, i + 1) for i in range(5)), center=2)
    x, w, b, A, E = make_args(B=2, G=2, Cin=3, Cout=2, T=3, topology=topo)
    x = x.contiguous(memory_format=torch.channels_last)
    inputs = [t.requires_grad_(True) for t in (x, w, b, E)]
    assert torch.autograd.gradcheck(lambda x, w, b, E: ops.graph_conv(x, w, b, A, E, 2), inputs)
    # bf16 through the channels-last path: the rule of test_bf16_within_tolerance
    x, w, b, A, E = make_args(B=2, G=2, Cin=16, Cout=16, T=8)
    want = reference_grouped(x, w, b, A, E, 2)
    xb = x.bfloat16().contiguous(memory_format=torch.channels_last)
    got = ops.graph_conv(xb, w.bfloat16(), b.bfloat16(), A.float(), E.float(), 2)
    assert got.dtype == torch.bfloat16 and got.is_contiguous(memory_format=torch.channels_last)
    lowp = reference_grouped(x.bfloat16(), w.bfloat16(), b.bfloat16(), A.bfloat16(), E.bfloat16(), 2)
    err, err_lowp = (got.double() - want).abs().max(), (lowp.double() - want).abs().max()
    assert err <= 2 * err_lowp + 1e-2, (err, err_lowp)


def test_channels_last_deterministic_with_threads():
    """Fixed chunking and fixed-order SIMD sums: with 2 intra-op threads (the parallel reductions
    actually split), repeated runs give bitwise equal outputs and gradients. (Results may differ
    between thread counts: oneDNN picks its blocking per thread count.)"""
    x, w, b, A, E = [t.float() for t in make_args(B=4, G=2, Cin=24, Cout=8, T=20)]
    x = x.contiguous(memory_format=torch.channels_last)
    runs = []
    torch.set_num_threads(2)
    try:
        for _ in range(2):
            xs, ws, Es = (t.clone().requires_grad_(True) for t in (x, w, E))
            out = ops.graph_conv(xs, ws, b, A, Es, 2)
            runs.append((out,) + torch.autograd.grad(out.square().sum(), (xs, ws, Es)))
    finally:
        torch.set_num_threads(1)
    assert all(torch.equal(a, c) for a, c in zip(*runs))


@pytest.mark.parametrize("view", ["channels_last", "size1_dims_odd_strides"])
def test_opcheck_channels_last(view):
    """Also a channels-last slice whose size-1 dims keep their parent's strides (torch calls it
    channels-last, the kernel's exact-stride test does not): the fake kernel must give the layout
    the kernel returns, or torch.compile's stride assertions fail."""
    x, w, b, A, E = make_args(B=2, G=2, Cin=3, Cout=4, T=3)
    x = x.contiguous(memory_format=torch.channels_last)
    if view == "size1_dims_odd_strides":
        x = x[:1, :, :1]
        assert x.is_contiguous(memory_format=torch.channels_last) and x.stride(0) != x[0].numel()
    x.requires_grad_(True)
    args = (x, w.requires_grad_(True), b.requires_grad_(True), A, E.requires_grad_(True), 2)
    opcheck(torch.ops.skelfast.graph_conv.default, args)
    grad_out = torch.randn(x.shape[0], 8, x.shape[2], 25, dtype=torch.float64).contiguous(
        memory_format=torch.channels_last)
    opcheck(torch.ops.skelfast.graph_conv_backward.default,
            (grad_out,) + tuple(a.detach() if isinstance(a, torch.Tensor) else a for a in args))


def _nvcc():
    import shutil
    from torch.utils.cpp_extension import CUDA_HOME
    if CUDA_HOME and os.path.exists(os.path.join(CUDA_HOME, "bin", "nvcc")):
        return os.path.join(CUDA_HOME, "bin", "nvcc")
    return shutil.which("nvcc")


@pytest.mark.parametrize("source", ["csrc/kernels/graph_conv.cu", "csrc/cuda/graph_conv_cuda.cu"])
def test_cuda_sources_compile(source, tmp_path):
    """The torch-free kernels and the stable-ABI binding compile with nvcc against the installed
    torch headers (engineering.md §3), so a CPU-only box catches CUDA build breaks."""
    import subprocess
    from torch.utils.cpp_extension import include_paths
    nvcc = _nvcc()
    if nvcc is None:
        pytest.skip("nvcc not found")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    cmd = [nvcc, "-std=c++20", "-arch=sm_80", "-c", "-I" + os.path.join(root, "csrc", "include"),
           os.path.join(root, source), "-o", str(tmp_path / "x.o")]
    if "/cuda/" in source:
        cmd += ["-I" + p for p in include_paths()] + ["-DUSE_CUDA", "-DTORCH_STABLE_ONLY",
                                                       "-DTORCH_TARGET_VERSION=0x020a000000000000",
                                                       "--expt-relaxed-constexpr"]
    res = subprocess.run(cmd, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-3000:]
