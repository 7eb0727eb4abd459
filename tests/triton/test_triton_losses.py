"""Triton kernels of skelfast::contrastive_lse (skelfast/triton/losses.py) vs the C++ op and the
materialised composite, under TRITON_INTERPRET=1 on CPU when no GPU is visible (engineering.md §4).
Tiny shapes (A=2, N=3, K=20, chunks of 8 columns: a few dozen programs per launch)."""
import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before skelfast.triton is imported
triton = pytest.importorskip("triton")

from test_losses_op import CONFIGS, TOL, op_args  # noqa: E402

from skelfast._extension import has_cpu_kernels  # noqa: E402
from skelfast.ops import losses as L  # noqa: E402

pytestmark = pytest.mark.skipif(not (has_cpu_kernels() and hasattr(torch.ops.skelfast, "contrastive_lse")),
                                reason="skelfast._C not built")

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def _tl():
    if not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("triton was imported before TRITON_INTERPRET=1 could be set")
    from skelfast.triton import losses as TL
    return TL


def _to(args, dtype=None, device=DEVICE):
    out = []
    for a in args:
        if isinstance(a, torch.Tensor):
            a = a.to(device)
            if dtype is not None and a.is_floating_point():
                a = a.to(dtype)
        out.append(a)
    return out


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()) or "default")
def test_forward_backward_match_cpp(cfg, dtype):
    TL = _tl()
    args = _to(op_args(**cfg), dtype)
    tol = TOL[dtype]
    got = TL.contrastive_lse_forward(*args, chunk=8)
    want = torch.ops.skelfast.contrastive_lse(*_to(args, device="cpu"))
    for g, w in zip(got, want):
        if w.dtype == torch.long:
            assert torch.equal(g.cpu(), w)
        else:
            torch.testing.assert_close(g.cpu(), w, **tol)
    lse1, lse2 = want[0], want[1]
    gen = torch.Generator().manual_seed(3)
    g1 = torch.randn(lse1.shape, generator=gen, dtype=torch.float64).to(dtype)
    g2 = torch.randn(lse2.shape, generator=gen, dtype=torch.float64).to(dtype)
    bwd_args = _to([g1, g2] + list(args[:9]) + [lse1, lse2])
    got_b = TL.contrastive_lse_backward(*bwd_args, chunk=8)
    want_b = torch.ops.skelfast.contrastive_lse_backward(*_to(bwd_args, device="cpu"))
    for g, w in zip(got_b, want_b):
        torch.testing.assert_close(g.cpu(), w, **tol)


def test_topk_wider_than_chunk():
    """topk=5 mined over chunks of 2 columns: the running top-k has fewer than topk candidates
    until the third chunk, and the merge must keep them all."""
    TL = _tl()
    args = _to(op_args(topk=5))
    got = TL.contrastive_lse_forward(*args, chunk=2)
    want = torch.ops.skelfast.contrastive_lse(*_to(args, device="cpu"))
    assert want[2].shape[-1] == 5
    assert torch.equal(got[2].cpu(), want[2])
    torch.testing.assert_close(got[0].cpu(), want[0], **TOL[torch.float64])
    torch.testing.assert_close(got[1].cpu(), want[1], **TOL[torch.float64])


@pytest.mark.filterwarnings("ignore:overflow encountered in exp")  # the first, static-shift pass; then re-run
def test_low_precision_queue_and_fallback():
    TL = _tl()
    args = list(op_args(topk=3))
    args[2] = args[2].to(torch.bfloat16)  # queue_a
    args[5] = args[5].to(torch.bfloat16)  # queue_b
    args = _to(args, None)
    args[0], args[1] = args[0].float(), args[1].float()
    args[3], args[4] = args[3].float(), args[4].float()
    got = TL.contrastive_lse_forward(*args, chunk=8)
    want = L.contrastive_lse_composite(*_to(args, device="cpu"))
    torch.testing.assert_close(got[0].cpu(), want[0], **TOL[torch.float32])
    torch.testing.assert_close(got[1].cpu(), want[1], **TOL[torch.float32])
    # Non-unit queries: the static shift leaves the window and the exact re-run kicks in.
    big = list(op_args())
    big[0] = big[0] * 40.0
    big[1] = big[1] * 40.0
    big = _to(big)
    got = TL.contrastive_lse_forward(*big, chunk=8)
    want = L.contrastive_lse_composite(*_to(big, device="cpu"))
    assert torch.isfinite(got[0]).all() and torch.isfinite(got[1]).all()
    torch.testing.assert_close(got[0].cpu(), want[0], **TOL[torch.float64])
    torch.testing.assert_close(got[1].cpu(), want[1], **TOL[torch.float64])


def test_test_scoped_custom_op_opcheck():
    """The Triton launcher wrapped in a test-only custom op: opcheck runs under the interpreter."""
    TL = _tl()
    lib_ns = "skelfast_test_losses"

    @torch.library.custom_op(f"{lib_ns}::lse", mutates_args=())
    def lse(qa: torch.Tensor, lpos: torch.Tensor, queue_a: torch.Tensor, tau: float) -> torch.Tensor:
        return TL.contrastive_lse_forward(qa, lpos, queue_a, None, None, None, [], [], tau, 0, chunk=8)[0]

    @lse.register_fake
    def _(qa, lpos, queue_a, tau):
        return qa.new_empty(qa.shape[:2])

    a = _to(op_args(with_b=False, scale=False, topk=0))
    torch.library.opcheck(lse, (a[0], a[1], a[2], 0.3), test_utils=("test_schema", "test_faketensor"))
    torch.testing.assert_close(lse(a[0], a[1], a[2], 0.3).cpu(), L.contrastive_lse_composite(
        *_to(a, device="cpu"))[0], **TOL[torch.float64])


@pytest.mark.filterwarnings("ignore:overflow encountered in exp")  # first, discarded static-shift pass
@pytest.mark.filterwarnings("ignore:invalid value encountered in matmul")
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("shared,scale,jacobian", [(False, False, True), (True, True, True), (False, True, False)])
def test_fused_infonce_kernel_matches_cpp(dtype, shared, scale, jacobian):
    """The fully fused tl.dot kernel (phase-1 path): split-K partials, Jacobian in the forward."""
    TL = _tl()
    a = list(op_args(with_b=False, scale=scale, topk=0, jacobian=True, shared=shared))
    a[10] = jacobian
    args = _to(a, dtype)
    if dtype == torch.float64 and DEVICE == "cuda":   # fp64 takes the semi-fused path there
        with pytest.raises(ValueError, match="on CUDA, float32"):
            TL.contrastive_lse_forward(*args, fused=True)
        TL.contrastive_lse_forward(*_to(a, torch.float32), fused=True)   # the same problem in fp32 is accepted
        return
    got = TL.contrastive_lse_forward(*args, fused=True, block_k=16, splits=2)
    want = torch.ops.skelfast.contrastive_lse(*_to(args, device="cpu"))
    torch.testing.assert_close(got[0].cpu(), want[0], **TOL[dtype])
    assert got[1].shape == want[1].shape == (0, 3)
    torch.testing.assert_close(got[3].cpu(), want[3], **TOL[dtype])
    # Fallback: non-unit queries leave the static-shift window; the exact re-run must agree.
    big = list(args)
    big[0], big[1] = big[0] * 40.0, big[1] * 40.0
    got = TL.contrastive_lse_forward(*big, fused=True, block_k=16, splits=2)
    want = L.contrastive_lse_composite(*_to(big, device="cpu"))
    torch.testing.assert_close(got[0].cpu(), want[0], **TOL[dtype])
    torch.testing.assert_close(got[3].cpu(), want[3], **TOL[dtype])


@pytest.mark.parametrize("shared", [False, True])
def test_no_gradient_sources_match_cpp(shared):
    """A = 0: only constant sources (pairs and mining among them), as in a distillation with no student."""
    TL = _tl()
    qa, lpos, queue_a, col_scale, qb, queue_b, *_ = op_args(shared=shared)
    qa, lpos = qa[:0], lpos[:0]
    if not shared:
        queue_a = queue_a[:0]
    args = (qa, lpos, queue_a, col_scale, qb, queue_b, [0, 1], [1, 0], 0.3, 2, False)
    got = TL.contrastive_lse_forward(*_to(args), chunk=8)
    want = torch.ops.skelfast.contrastive_lse(*args)
    assert got[1].shape == (2, 3)
    torch.testing.assert_close(got[1].cpu(), want[1], **TOL[torch.float64])
    assert torch.equal(got[2].cpu(), want[2])
    dq, dl = TL.contrastive_lse_backward(*_to([torch.ones(0, 3, dtype=qa.dtype), torch.ones_like(want[1])]
                                             + list(args[:9]) + [want[0], want[1]]), chunk=8)
    assert dq.shape == (0, 3, 6) and dl.shape == (0, 3)
