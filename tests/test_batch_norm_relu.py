"""skelfast.ops.batch_norm_relu: ReLU(dropout(BatchNorm(x)) + residual) of an ST-GCN block
(method.md §4.2) vs F.batch_norm followed by the epilogue with the kernel's own dropout mask:
outputs, all gradients, running statistics, layouts, numerics, errors and fallbacks."""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from skelfast import _extension
from skelfast.nn.batched_stgcn import _batch_norm_relu
from skelfast.ops import batch_norm_relu, dropout_add_relu

from _common import raises_kernel_error

pytestmark = pytest.mark.skipif(not (_extension.has_cpu_kernels() and hasattr(torch.ops.skelfast, "batch_norm_relu")),
                                reason="needs the compiled extension")
op = torch.ops.skelfast.batch_norm_relu


def make(shape, dtype=torch.float64, memory_format=torch.contiguous_format, seed=0, mean=2.0, std=3.0):
    g = torch.Generator().manual_seed(seed)
    C = shape[1]
    x = (torch.randn(shape, generator=g, dtype=dtype) * std + mean).contiguous(memory_format=memory_format)
    r = torch.randn(shape, generator=g, dtype=dtype).contiguous(memory_format=memory_format)
    w, b = torch.randn(C, generator=g, dtype=dtype), torch.randn(C, generator=g, dtype=dtype)
    rm, rv = torch.randn(C, generator=g, dtype=dtype), torch.rand(C, generator=g, dtype=dtype) + 0.5
    return x, r, w, b, rm, rv


def run_both(x, r, w, b, rm, rv, training, p, with_residual, seed=7):
    """(fused out, grads, running stats), (PyTorch out, grads, running stats) for one upstream grad."""
    results = []
    for fused in (True, False):
        xs, ws, bs = (t.clone().requires_grad_() for t in (x, w, b))
        rs = r.clone().requires_grad_() if with_residual else None
        rm1, rv1 = rm.clone(), rv.clone()
        gen = torch.Generator().manual_seed(seed)
        if fused:
            out = batch_norm_relu(xs, rm1, rv1, ws, bs, training, 0.1, 1e-5, rs, p, generator=gen)
        else:   # same seed and layout: dropout_add_relu draws the same counter-based mask
            y = F.batch_norm(xs, rm1, rv1, ws, bs, training, 0.1, 1e-5)
            out = dropout_add_relu(y, rs, p, training, generator=gen)
        leaves = [t for t in (xs, ws, bs, rs) if t is not None]
        go = torch.randn(out.shape, generator=torch.Generator().manual_seed(3), dtype=out.dtype)
        results.append((out, torch.autograd.grad(out, leaves, go), (rm1, rv1)))
    return results


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last])
@pytest.mark.parametrize("with_residual", [True, False])
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("p", [0.0, 0.5])
def test_matches_batch_norm_then_epilogue(dtype, memory_format, with_residual, training, p):
    x, r, w, b, rm, rv = make((4, 6, 5, 3), dtype, memory_format)
    (out, grads, stats), (want, want_grads, want_stats) = run_both(x, r, w, b, rm, rv, training, p, with_residual)
    assert out.stride() == want.stride() == x.stride()
    tol = dict(rtol=1e-12, atol=1e-12) if dtype == torch.float64 else dict(rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out, want, **tol)
    for got, ref in zip(grads + stats, want_grads + want_stats):
        torch.testing.assert_close(got, ref, **tol)
    if training and p > 0:   # the mask is really applied: about a fraction p of the outputs it decides are dropped
        y = F.batch_norm(x, None, None, w, b, True, 0.1, 1e-5)
        res = r if with_residual else torch.zeros_like(r)
        kept, dropped = torch.relu(y / (1 - p) + res), torch.relu(res)
        decisive = ~torch.isclose(kept, dropped, **tol)
        is_dropped, is_kept = torch.isclose(out, dropped, **tol)[decisive], torch.isclose(out, kept, **tol)[decisive]
        assert (is_dropped ^ is_kept).all()
        assert decisive.sum() > 100 and abs(is_dropped.double().mean().item() - p) < 0.15


@pytest.mark.parametrize("shape", [(5, 3), (4, 3, 7), (3, 4, 2, 5, 2), (2, 5, 1, 1), (1, 3, 1, 7)])
def test_other_ranks_and_degenerate_shapes(shape):
    x, r, w, b, rm, rv = make(shape)
    (out, grads, stats), (want, want_grads, want_stats) = run_both(x, r, w, b, rm, rv, True, 0.3, True)
    torch.testing.assert_close(out, want, rtol=1e-12, atol=1e-12)
    for got, ref in zip(grads + stats, want_grads + want_stats):
        torch.testing.assert_close(got, ref, rtol=1e-12, atol=1e-12)


def test_large_mean_statistics_stay_accurate_in_float32():
    # one-pass variance with a per-channel shift: no cancellation when |mean| >> std
    x, r, w, b, rm, rv = make((8, 4, 25, 25), torch.float32, torch.channels_last, mean=1e4, std=1.0)
    _, mean, invstd, var = op(x, w, b, None, None, None, 1e-5, 0.0, 0)
    xd = x.double()
    torch.testing.assert_close(mean.double(), xd.mean((0, 2, 3)), rtol=1e-7, atol=0)
    torch.testing.assert_close(var.double(), xd.var((0, 2, 3), unbiased=False), rtol=1e-5, atol=0)
    torch.testing.assert_close(invstd.double(), (xd.var((0, 2, 3), unbiased=False) + 1e-5).rsqrt(), rtol=1e-5, atol=0)


def test_result_does_not_depend_on_thread_count():
    x, r, w, b, rm, rv = make((16, 8, 13, 25), torch.float32, torch.channels_last)
    outs = []
    threads = torch.get_num_threads()
    try:
        for n in (1, max(2, threads)):
            torch.set_num_threads(n)
            xs = x.clone().requires_grad_()
            out, mean, _, var = op(xs, w, b, None, None, r, 1e-5, 0.5, 11)
            (gx,) = torch.autograd.grad(out, xs, torch.ones_like(out))
            outs.append((out, mean, var, gx))
    finally:
        torch.set_num_threads(threads)
    for a, c in zip(*outs):
        assert torch.equal(a, c)


def test_broadcast_pooled_gradient_is_read_in_place():
    # the last block's output feeds a global mean: its gradient is a stride-0 broadcast
    x, r, w, b, rm, rv = make((3, 4, 5, 6), torch.float64, torch.channels_last)
    xs, xw = x.clone().requires_grad_(), x.clone().requires_grad_()
    out = batch_norm_relu(xs, None, None, w, b, True, 0.1, 1e-5, r, 0.0)
    want = torch.relu(F.batch_norm(xw, None, None, w, b, True, 0.1, 1e-5) + r)
    (g1,) = torch.autograd.grad(out.mean((2, 3)).sum(), xs)
    (g2,) = torch.autograd.grad(want.mean((2, 3)).sum(), xw)
    torch.testing.assert_close(g1, g2, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("batch_stats", [True, False])
def test_gradcheck(batch_stats):
    x, r, w, b, rm, rv = make((3, 4, 3, 2), torch.float64, torch.channels_last)
    x = x + 0.05 * torch.sign(x)   # keep values off ReLU's kink for finite differences
    stats = (None, None) if batch_stats else (rm, rv)

    def f(x, w, b, r):
        return op(x, w, b, *stats, r, 1e-5, 0.4, 5)[0]

    inputs = tuple(t.clone().requires_grad_() for t in (x, w, b, r))
    assert torch.autograd.gradcheck(f, inputs, eps=1e-6, atol=1e-5)


def test_opcheck():
    x, r, w, b, rm, rv = make((3, 4, 3, 2), torch.float32, torch.channels_last)
    for args in ((x, w, b, None, None, r, 1e-5, 0.5, 3), (x, w, b, rm, rv, None, 1e-3, 0.0, 0)):
        args = tuple(a.clone().requires_grad_() if isinstance(a, torch.Tensor) and a.dim() == 4 else a for a in args)
        torch.library.opcheck(op, args)


def test_module_bookkeeping_matches_batchnorm2d():
    # _batch_norm_relu drives a module the way nn.BatchNorm2d.forward does
    for momentum in (0.1, None):
        torch.manual_seed(0)
        bn_a, bn_b = nn.BatchNorm2d(6, momentum=momentum).double(), nn.BatchNorm2d(6, momentum=momentum).double()
        for step in range(3):
            x = torch.randn(4, 6, 5, 3, dtype=torch.float64) * (step + 1)
            out = _batch_norm_relu(bn_a, x)
            torch.testing.assert_close(out, torch.relu(bn_b(x)), rtol=1e-12, atol=1e-12)
        assert int(bn_a.num_batches_tracked) == int(bn_b.num_batches_tracked) == 3
        torch.testing.assert_close(bn_a.running_var, bn_b.running_var, rtol=1e-12, atol=1e-12)
        bn_a.eval()
        bn_b.eval()
        x = torch.randn(4, 6, 5, 3, dtype=torch.float64)
        torch.testing.assert_close(_batch_norm_relu(bn_a, x), torch.relu(bn_b(x)), rtol=1e-12, atol=1e-12)
        assert int(bn_a.num_batches_tracked) == 3


def test_falls_back_to_pytorch_ops():
    x, r, w, b, rm, rv = make((4, 3, 5, 2), torch.float64)
    # no affine parameters, bf16, and compile tracing all run F.batch_norm (+ the epilogue)
    out = batch_norm_relu(x, rm.clone(), rv.clone(), None, None, False, 0.1, 1e-5)
    torch.testing.assert_close(out, torch.relu(F.batch_norm(x, rm, rv, None, None, False, 0.1, 1e-5)))
    xb = x.to(torch.bfloat16)
    wb, bb = w.to(torch.bfloat16), b.to(torch.bfloat16)
    outb = batch_norm_relu(xb, None, None, wb, bb, True, 0.1, 1e-5)
    assert outb.dtype == torch.bfloat16
    want_b = torch.relu(F.batch_norm(xb.double(), None, None, wb.double(), bb.double(), True, 0.1, 1e-5))
    torch.testing.assert_close(outb.double(), want_b, rtol=1.6e-2, atol=1e-2)   # bf16 output rounding
    compiled = torch.compile(lambda t: batch_norm_relu(t, None, None, w, b, True, 0.1, 1e-5, None, 0.0),
                             backend="eager", fullgraph=True)
    torch.testing.assert_close(compiled(x), torch.relu(F.batch_norm(x, None, None, w, b, True, 0.1, 1e-5)))
    empty = torch.zeros(0, 3, 5, 2, dtype=torch.float64)
    assert batch_norm_relu(empty, rm, rv, w, b, False).shape == empty.shape


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_batch_gives_non_finite_statistics_as_pytorch(bad):
    """A NaN or inf in a channel's batch: its running variance becomes NaN, as with F.batch_norm
    (the kernel's clamp of rounding below zero turned NaN into 0, a finite running variance)."""
    x, _, w, b, rm, rv = make((4, 3, 5, 2), torch.float32)
    x[0, 1, 2, 0] = bad
    rm_ref, rv_ref = rm.clone(), rv.clone()
    out = batch_norm_relu(x, rm, rv, w, b, True)
    want = F.relu(F.batch_norm(x, rm_ref, rv_ref, w, b, True))
    assert torch.isnan(rv[1]) and torch.isnan(rv_ref[1])
    assert not torch.isfinite(rm[1]) and not torch.isfinite(rm_ref[1])   # inf there, NaN here for an inf
    torch.testing.assert_close(rv[[0, 2]], rv_ref[[0, 2]])
    torch.testing.assert_close(out[:, [0, 2]], want[:, [0, 2]])
    assert torch.equal(torch.isnan(out[:, 1]), torch.isnan(want[:, 1]))


def test_errors():
    x, r, w, b, rm, rv = make((4, 3, 5, 2), torch.float64)
    with pytest.raises(ValueError, match="p must be in"):
        batch_norm_relu(x, rm, rv, w, b, True, p=1.5)
    for name, bad in (("p", "0.5"), ("momentum", "0.1"), ("eps", None)):
        with pytest.raises(TypeError, match=f"{name} must be a real number"):
            batch_norm_relu(x, rm, rv, w, b, True, **{name: bad})
    with pytest.raises(ValueError, match="eps must be in"):
        batch_norm_relu(x, rm, rv, w, b, True, eps=-1e-5)
    with pytest.raises(ValueError, match="residual shape"):
        batch_norm_relu(x, rm, rv, w, b, True, residual=r[:2])
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        batch_norm_relu(x[:1, :, :1, :1], None, None, w, b, True)
    with pytest.raises(ValueError, match=r"\(B, C, \.\.\.\)"):
        batch_norm_relu(x.flatten(), None, None, w, b, True)
    # a (C,) vector of another size is refused before the running statistics are touched (the
    # update used to run its first half, then fail)
    for i, name in enumerate(("running_mean", "running_var", "weight", "bias")):
        args = [rm.clone(), rv.clone(), w, b]
        args[i] = torch.ones(2, dtype=x.dtype)
        kept = [a.clone() for a in args[:2]]
        with pytest.raises(ValueError, match=f"{name} must have shape"):
            batch_norm_relu(x, *args, True)
        assert torch.equal(args[0], kept[0]) and torch.equal(args[1], kept[1])
    with raises_kernel_error("weight must be a contiguous"):
        op(x, w[:2], b, None, None, None, 1e-5, 0.0, 0)
    with raises_kernel_error("mean and var must be given together"):
        op(x, w, b, rm, None, None, 1e-5, 0.0, 0)
    with raises_kernel_error("eps must be"):
        op(x, w, b, None, None, None, -1.0, 0.0, 0)
    with raises_kernel_error("residual must have x's shape and strides"):
        op(x, w, b, None, None, r.contiguous(memory_format=torch.channels_last), 1e-5, 0.0, 0)
