"""skelfast.ops contrastive losses (streaming op skelfast::contrastive_lse) vs the eager reference
skelfast.reference.losses (method.md §5.3, §5.4, §6.1, §6.2).

Shapes are tiny (N=8, K=64..96) so the file runs in well under a minute on two CPU cores.
Tolerances: fp64 tight (1e-10); fp32 compared with the fp64 reference at 2e-5 (fp32 GEMM rounding
plus the ~2-ulp vectorised exp); bf16 queues compared with the fp32 reference on the same rounded
queue at fp32 tolerance, and with the fp64 reference on the unrounded queue at 3e-2 (bf16 rounding
of the queue, about 4e-3 relative per similarity, amplified by 1/tau).
"""
import pytest
import torch
from torch.library import opcheck

from skelfast import ops
from skelfast._extension import has_cpu_kernels
from skelfast.ops import losses as L
from skelfast.reference import losses as R
from skelfast.reference.modalities import nrm

from _common import raises_kernel_error

pytestmark = pytest.mark.skipif(not (has_cpu_kernels() and hasattr(torch.ops.skelfast, "contrastive_lse")),
                                reason="skelfast._C not built")

TOL = {torch.float64: dict(atol=1e-10, rtol=1e-10), torch.float32: dict(atol=2e-5, rtol=2e-5)}


def unit(*shape, dim=-1, dtype=torch.float64, g=None):
    return nrm(torch.randn(*shape, dtype=torch.float64, generator=g), dim=dim).to(dtype)


def make(G=3, N=8, D=16, K=64, dtype=torch.float64, seed=0, S=None):
    g = torch.Generator().manual_seed(seed)
    q = unit(G, N, D, dtype=dtype, g=g)
    k = unit(G, N, D, dtype=dtype, g=g)
    queues = unit(G, D, K, dim=1, dtype=dtype, g=g)
    u = unit(G, N, G * D, dtype=dtype, g=g)
    out = dict(q=q, k=k, queues=queues, u=u)
    if S is not None:
        out["s"] = unit(S, N, G * D, dtype=dtype, g=g)
        out["QT"] = unit(G * D, K, dim=0, dtype=dtype, g=g)
    return out


def grads(loss, inputs):
    return torch.autograd.grad(loss, inputs, allow_unused=True)


def check(ours_fn, ref_fn, inputs, dtype, weight_seed=1, ref_inputs=None, tol=None):
    """Values and gradients (w.r.t. `inputs`) of ours vs the reference (fp64 reference for fp32)."""
    tol = tol or TOL[dtype]
    ours_in = [t.detach().clone().requires_grad_(True) for t in inputs]
    ref_in = [t.detach().clone().to(torch.float64).requires_grad_(True) for t in (ref_inputs or inputs)]
    got = ours_fn(*ours_in)
    want = ref_fn(*ref_in)
    assert got.shape == want.shape
    torch.testing.assert_close(got.double(), want, **tol)
    w = torch.randn(got.shape, generator=torch.Generator().manual_seed(weight_seed), dtype=torch.float64)
    g_got = grads((got * w.to(got.dtype)).sum(), ours_in)
    g_want = grads((want * w).sum(), ref_in)
    for a, b in zip(g_got, g_want):
        assert a is not None
        torch.testing.assert_close(a.double(), b, **tol)
    return got


# ------------------------------------------------------------------------------------------------
# Values and gradients vs the reference
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("G", [1, 2, 6])
def test_info_nce(dtype, G):
    x = make(G=G, dtype=dtype, K=80)
    check(lambda q, k: ops.info_nce(q, k, x["queues"]), lambda q, k: R.info_nce(q, k, x["queues"].double()),
          [x["q"], x["k"]], dtype)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("G", [2, 3, 6])
@pytest.mark.parametrize("topk", [1, 5])
@pytest.mark.parametrize("context", [True, False])
def test_context_pair_losses(dtype, G, topk, context):
    x = make(G=G, dtype=dtype, K=72, seed=G + topk)
    P = check(lambda q, k: ops.context_pair_losses(q, k, x["queues"], topk=topk, context=context),
              lambda q, k: R.context_pair_losses(q, k, x["queues"].double(), topk=topk, context=context),
              [x["q"], x["k"]], dtype)
    assert torch.all(P.diagonal() == 0)


@pytest.mark.parametrize("G", [2, 6])
def test_context_loss_pair_weight(G):
    x = make(G=G)
    w = torch.rand(G, G, dtype=torch.float64)
    check(lambda q: ops.context_loss(q, x["k"], x["queues"], pair_weight=w),
          lambda q: R.context_loss(q, x["k"], x["queues"], pair_weight=w), [x["q"]], torch.float64)
    check(lambda q: ops.context_loss(q, x["k"], x["queues"], tau=0.2, topk=3),
          lambda q: R.context_loss(q, x["k"], x["queues"], tau=0.2, topk=3), [x["q"]], torch.float64)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("G", [2, 3, 6])
def test_ikem_loss(dtype, G):
    x = make(G=G, dtype=dtype, K=64, seed=10 + G)
    check(lambda u, k: ops.ikem_loss(u, k, x["queues"]), lambda u, k: R.ikem_loss(u, k, x["queues"].double()),
          [x["u"], x["k"]], dtype)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("topk", [1, 5])
def test_phase2_loss(dtype, topk):
    x = make(G=6, dtype=dtype, K=96, seed=3)
    check(lambda q, u: ops.phase2_loss(q, u, x["k"], x["queues"], topk=topk),
          lambda q, u: R.phase2_loss(q, u, x["k"].double(), x["queues"].double(), topk=topk), [x["q"], x["u"]], dtype)
    check(lambda q: ops.phase2_loss(q, None, x["k"], x["queues"], topk=topk),
          lambda q: R.phase2_loss(q, None, x["k"].double(), x["queues"].double(), topk=topk), [x["q"]], dtype)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("G,S", [(6, 3), (3, 1), (2, 2)])
@pytest.mark.parametrize("topk", [1, 5])
def test_relational_distill_loss(dtype, G, S, topk):
    x = make(G=G, S=S, dtype=dtype, K=64, seed=20 + G + topk)
    tq = x["q"]
    check(lambda s: ops.relational_distill_loss(tq, s, x["queues"], x["QT"], topk=topk),
          lambda s: R.relational_distill_loss(tq.double(), s, x["queues"].double(), x["QT"].double(), topk=topk),
          [x["s"]], dtype)


def test_relational_teacher_is_constant():
    """The teacher is frozen: no gradient reaches teacher_q even if it requires grad."""
    x = make(G=3, S=2)
    tq = x["q"].clone().requires_grad_(True)
    s = x["s"].clone().requires_grad_(True)
    ops.relational_distill_loss(tq, s, x["queues"], x["QT"]).sum().backward()
    assert tq.grad is None and s.grad is not None and torch.isfinite(s.grad).all()


def test_queues_get_no_gradient_keys_get_exact_gradient():
    x = make(G=3)
    queues = x["queues"].clone().requires_grad_(True)
    k = x["k"].clone().requires_grad_(True)
    k_ref = x["k"].clone().requires_grad_(True)
    ops.context_loss(x["q"], k, queues).sum().backward()
    R.context_loss(x["q"], k_ref, x["queues"]).sum().backward()
    assert queues.grad is None
    torch.testing.assert_close(k.grad, k_ref.grad, **TOL[torch.float64])


# ------------------------------------------------------------------------------------------------
# Low-precision queues
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("qdtype", [torch.bfloat16, torch.float16])
def test_low_precision_queues(qdtype):
    x = make(G=6, K=96, dtype=torch.float32, seed=5)
    qlow = x["queues"].to(qdtype)
    rounded = qlow.double()  # the same rounded queue, exactly representable in fp64
    # Against the reference on the rounded queue: only fp32 accumulation error remains.
    check(lambda q, u: ops.phase2_loss(q, u, x["k"], qlow), lambda q, u: R.phase2_loss(q, u, x["k"].double(), rounded),
          [x["q"], x["u"]], torch.float32)
    check(lambda q, k: ops.info_nce(q, k, qlow), lambda q, k: R.info_nce(q, k, rounded), [x["q"], x["k"]],
          torch.float32)
    # Against the unrounded fp64 reference: the stated bf16 tolerance (loss ~ log K ~ 4.6).
    got = ops.phase2_loss(x["q"], x["u"], x["k"], qlow)
    want = R.phase2_loss(x["q"].double(), x["u"].double(), x["k"].double(), x["queues"].double())
    torch.testing.assert_close(got.double(), want, atol=3e-2, rtol=3e-3)


def test_low_precision_queries_are_upcast():
    x = make(G=3, dtype=torch.float32)
    qb = x["q"].to(torch.bfloat16).requires_grad_(True)
    got = ops.info_nce(qb, x["k"], x["queues"])
    want = R.info_nce(qb.double(), x["k"].double(), x["queues"].double())
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), want, atol=2e-5, rtol=2e-5)
    got.sum().backward()
    assert qb.grad.dtype == torch.bfloat16 and torch.isfinite(qb.grad.float()).all()


# ------------------------------------------------------------------------------------------------
# Ties, duplicates, non-unit inputs (static-max fallback), chunk boundaries
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("topk", [1, 5])
def test_duplicate_queue_entries_and_ties(topk):
    """Duplicate queue columns make exact ties in every similarity; whichever duplicate is mined,
    the loss and gradients equal the reference (the tied logits are identical)."""
    x = make(G=3, K=40, seed=7)
    queues = torch.cat([x["queues"], x["queues"][:, :, :24]], dim=2)  # columns 40..63 duplicate 0..23
    # Make the mined column a tie for row 0: q_y[0] is one of the duplicated columns.
    q = x["q"].clone()
    q[:, 0] = queues[:, :, 3]
    check(lambda q: ops.context_pair_losses(q, x["k"], queues, topk=topk),
          lambda q: R.context_pair_losses(q, x["k"], queues, topk=topk), [q], torch.float64)
    S = 2
    s = unit(S, 8, 3 * 16, g=torch.Generator().manual_seed(1))
    QT = torch.cat([nrm(queues.reshape(48, 64), dim=0)], dim=0)
    check(lambda s: ops.relational_distill_loss(q, s, queues, QT, topk=topk),
          lambda s: R.relational_distill_loss(q, s, queues, QT, topk=topk), [s], torch.float64)


def test_mined_indices_match_reference_topk():
    x = make(G=3, K=64, seed=11)
    qc = x["q"]
    lpos = (qc * x["k"]).sum(-1)
    _, _, idx, _ = L.contrastive_lse(qc, lpos, x["queues"], None, None, None, [], [], 0.07, 5)
    want = torch.bmm(qc, x["queues"]).topk(5, dim=-1).indices
    assert torch.equal(idx, want)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_non_unit_inputs_fall_back_exactly(dtype):
    """Inputs that break |logit| <= 1/tau (not normalised) or a tau so small that the row maxima sit
    far below 1/tau: the op detects the bad shift from the running maxima and recomputes with the
    exact maxima, so the loss is still right (the reference takes raw dot products)."""
    x = make(G=3, dtype=dtype, K=64, seed=4)
    big_q = x["q"] * 7.0
    small_queues = x["queues"] * 0.05
    check(lambda q, k: ops.info_nce(q, k, x["queues"]), lambda q, k: R.info_nce(q, k, x["queues"].double()),
          [big_q, x["k"]], dtype)
    check(lambda q: ops.context_pair_losses(q, x["k"], small_queues, topk=2),
          lambda q: R.context_pair_losses(q, x["k"].double(), small_queues.double(), topk=2), [big_q], dtype)
    check(lambda q: ops.context_pair_losses(q, x["k"], x["queues"], tau=0.004),
          lambda q: R.context_pair_losses(q, x["k"].double(), x["queues"].double(), tau=0.004), [x["q"]], dtype,
          tol=dict(atol=1e-3, rtol=2e-5) if dtype == torch.float32 else None)
    check(lambda u: ops.ikem_loss(u, x["k"], small_queues), lambda u: R.ikem_loss(u, x["k"].double(),
                                                                                 small_queues.double()),
          [x["u"] * 3], dtype)
    got = ops.info_nce(big_q * 20, x["k"], x["queues"])
    assert torch.isfinite(got).all()


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_chunk_boundaries(dtype):
    """K larger than one CPU chunk (8192) and not a multiple of it: the later chunks are strided
    views of the queue (copied for the float32 oneDNN GEMMs, read in place by float64 BLAS)."""
    x = make(G=2, N=4, D=8, K=8192 + 37, seed=9, dtype=dtype, S=2)
    r = {key: t.double() for key, t in x.items()}   # the fp64 reference's constants
    check(lambda q: ops.phase2_loss(q, None, x["k"], x["queues"], topk=3),
          lambda q: R.phase2_loss(q, None, r["k"], r["queues"], topk=3), [x["q"]], dtype)
    check(lambda q: ops.info_nce(q, x["k"], x["queues"]), lambda q: R.info_nce(q, r["k"], r["queues"]),
          [x["q"]], dtype)
    check(lambda s: ops.relational_distill_loss(x["q"], s, x["queues"], x["QT"]),
          lambda s: R.relational_distill_loss(r["q"], s, r["queues"], r["QT"]), [x["s"]], dtype)


# ------------------------------------------------------------------------------------------------
# Validation
# ------------------------------------------------------------------------------------------------
def test_argument_errors():
    x = make(G=3)
    q, k, Q, u = x["q"], x["k"], x["queues"], x["u"]
    for tau in (0.0, -0.1, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="tau"):
            ops.info_nce(q, k, Q, tau)
    with pytest.raises(ValueError, match="queues"):
        ops.info_nce(q, k, Q[:, :8])
    with pytest.raises(ValueError, match="k must"):
        ops.context_loss(q, k[:, :4], Q)
    with pytest.raises(ValueError, match="topk"):
        ops.context_loss(q, k, Q, topk=0)
    with pytest.raises(ValueError, match="topk"):
        ops.context_loss(q, k, Q, topk=65)
    with pytest.raises(ValueError, match="at least 2"):
        ops.context_loss(q[:1], k[:1], Q[:1])
    with pytest.raises(ValueError, match="u must"):
        ops.ikem_loss(u[..., :16], k, Q)
    with pytest.raises(ValueError, match="teacher_queue"):
        ops.relational_distill_loss(q, u[:1], Q, Q[0])
    with pytest.raises(ValueError, match=r"G >= 1"):      # was torch.stack's 'non-empty TensorList'
        ops.relational_distill_loss(q[:0], u[:1, :, :0], Q[:0], Q[0, :0])
    with pytest.raises(TypeError, match=r"pair_weight must be a \(3, 3\) tensor"):   # was an AttributeError
        ops.context_loss(q, k, Q, pair_weight=[[0.0] * 3] * 3)
    with pytest.raises(TypeError, match="float"):
        ops.info_nce(q, k, Q.to(torch.int32))
    lpos = (q * k).sum(-1)
    with pytest.raises(ValueError, match="jacobian"):
        L.contrastive_lse(q, lpos, Q, None, None, None, [0], [1], 0.1, 0, True)


def test_raw_schema_errors():
    """The registered op checks its arguments too (callers may bypass the Python wrapper)."""
    x = make(G=3)
    q, k, Q = x["q"], x["k"], x["queues"]
    lpos = (q * k).sum(-1)
    for args, match in [((Q, None, None, None, [], [], 0.0, 0), "tau"),
                        ((Q, None, None, None, [0], [0], 0.1, 0), "distinct"),
                        ((Q, None, None, None, [], [], 0.1, 65), "topk"),
                        ((Q, None, None, None, [0], [1], 0.1, 0, True), "jacobian"),
                        ((Q[:2], None, None, None, [], [], 0.1, 0), "queue_a")]:
        with raises_kernel_error(match):
            torch.ops.skelfast.contrastive_lse(q, lpos, *args)


def test_keyword_arguments_and_scalar_types():
    """The losses take keyword arguments, and tau / topk as NumPy scalars or one-element tensors
    (as read from a config or a checkpoint), like the reference; a float or bool topk is refused."""
    import numpy as np
    x = make(G=3, S=2)
    q, k, Q, u, s, QT = x["q"], x["k"], x["queues"], x["u"], x["s"], x["QT"]
    pairs = [
        (ops.info_nce(q=q, k=k, queue=Q, tau=np.float64(0.1)), R.info_nce(q, k, Q, 0.1)),
        (ops.context_loss(q=q, k=k, queues=Q, tau=torch.tensor(0.1, dtype=torch.float64), topk=np.int64(2)),
         R.context_loss(q, k, Q, 0.1, 2)),
        (ops.context_pair_losses(q, k, Q, topk=torch.tensor(3)), R.context_pair_losses(q, k, Q, topk=3)),
        (ops.ikem_loss(u=u, k=k, queues=Q), R.ikem_loss(u, k, Q)),
        (ops.phase2_loss(q=q, u=u, k=k, queues=Q, topk=np.int32(2)), R.phase2_loss(q, u, k, Q, topk=2)),
        (ops.relational_distill_loss(teacher_q=q, student_s=s, teacher_queues=Q, teacher_queue=QT, tau=np.float32(0.25)),
         R.relational_distill_loss(q, s, Q, QT, 0.25)),
    ]
    for got, want in pairs:
        torch.testing.assert_close(got, want, **TOL[torch.float64])
    for bad in (2.0, True, np.float64(2.0), "2"):
        with pytest.raises(ValueError, match="topk must be an integer"):
            ops.context_loss(q, k, Q, topk=bad)
    for bad in (True, "0.1", torch.tensor([0.1, 0.2]), np.float64(-0.1)):
        with pytest.raises(ValueError, match="tau must be a finite number"):
            ops.info_nce(q, k, Q, tau=bad)


# ------------------------------------------------------------------------------------------------
# The op itself: composite spec, gradcheck, opcheck, compile
# ------------------------------------------------------------------------------------------------
def op_args(seed=0, shared=False, with_b=True, scale=True, topk=2, jacobian=False):
    g = torch.Generator().manual_seed(seed)
    A, B, N, Da, Db, K = 2, 2, 3, 6, 4, 20
    qa = unit(A, N, Da, g=g)
    lpos = (qa * unit(A, N, Da, g=g)).sum(-1)
    queue_a = unit(1 if shared else A, Da, K, dim=1, g=g)
    col_scale = torch.rand(K, dtype=torch.float64, generator=g) + 0.5 if scale else None
    qb = unit(B, N, Db, g=g) if with_b else None
    queue_b = unit(B, Db, K, dim=1, g=g) if with_b else None
    M = A + (B if with_b else 0)
    pairs = [] if jacobian else [(0, 1)] + ([(0, 2), (3, 1), (2, 3)] if with_b else [])
    return (qa, lpos, queue_a, col_scale, qb, queue_b, [p[0] for p in pairs], [p[1] for p in pairs], 0.3, topk,
            jacobian)


CONFIGS = [dict(), dict(shared=True), dict(with_b=False, scale=False, topk=0), dict(shared=True, with_b=False),
           dict(jacobian=True), dict(shared=True, with_b=False, jacobian=True)]


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()) or "default")
def test_op_matches_composite_and_gradcheck(cfg):
    args = op_args(**cfg)
    got = torch.ops.skelfast.contrastive_lse(*args)
    want = L.contrastive_lse_composite(*args)
    for a, b in zip(got, want):
        if a.dtype == torch.long:
            assert torch.equal(a, b)
        else:
            torch.testing.assert_close(a, b, **TOL[torch.float64])
    qa = args[0].clone().requires_grad_(True)
    lpos = args[1].clone().requires_grad_(True)

    def f(qa, lpos):
        l1, l2, _, _ = torch.ops.skelfast.contrastive_lse(qa, lpos, *args[2:])
        return l1, l2

    assert torch.autograd.gradcheck(f, (qa, lpos), eps=1e-6, atol=1e-7)


@pytest.mark.parametrize("shared", [False, True])
def test_op_without_gradient_sources(shared):
    """A = 0 (only constant sources; a distillation with no student): the shared queue's oneDNN
    convolution with 0 outputs raised an unreadable dispatcher error. Found by review."""
    qa, lpos, queue_a, col_scale, qb, queue_b, *_ = op_args(shared=shared)
    qa, lpos = qa[:0], lpos[:0]
    if not shared:
        queue_a = queue_a[:0]
    args = (qa, lpos, queue_a, col_scale, qb, queue_b, [0, 1], [1, 0], 0.3, 2, False)
    got = torch.ops.skelfast.contrastive_lse(*args)
    want = L.contrastive_lse_composite(*args)
    assert got[0].shape == (0, 3) and got[1].shape == (2, 3) and got[2].shape == (2, 3, 2)
    torch.testing.assert_close(got[1], want[1], **TOL[torch.float64])
    assert torch.equal(got[2], want[2])
    dq, dl = torch.ops.skelfast.contrastive_lse_backward(torch.ones(0, 3, dtype=qa.dtype), torch.ones_like(got[1]),
                                                         *args[:9], got[0], got[1])
    assert dq.shape == (0, 3, 6) and dl.shape == (0, 3)
    x = make(G=6, S=1, dtype=torch.float32, K=64, seed=3)
    s0 = x["s"][:0].detach().requires_grad_(True)
    out = ops.relational_distill_loss(x["q"], s0, x["queues"], x["QT"])
    assert out.shape == (0,) and torch.equal(out, R.relational_distill_loss(x["q"], s0, x["queues"], x["QT"]))
    out.sum().backward()
    assert s0.grad.shape == s0.shape


@pytest.mark.parametrize("cfg", CONFIGS[:3] + CONFIGS[4:5], ids=["default", "shared", "plain", "jacobian"])
def test_opcheck(cfg):
    args = list(op_args(**cfg))
    args[0] = args[0].requires_grad_(True)
    args[1] = args[1].requires_grad_(True)
    opcheck(torch.ops.skelfast.contrastive_lse.default, tuple(args))
    a = op_args(**cfg)
    l1, l2, _, _ = torch.ops.skelfast.contrastive_lse(*a)
    opcheck(torch.ops.skelfast.contrastive_lse_backward.default,
            (torch.randn_like(l1), torch.randn_like(l2)) + tuple(a[:9]) + (l1, l2))
    if cfg.get("jacobian"):  # the registered backward op (recompute path) agrees with the forward Jacobian
        dq, _ = torch.ops.skelfast.contrastive_lse_backward(torch.ones_like(l1), torch.ones_like(l2), *a[:9], l1, l2)
        torch.testing.assert_close(dq, torch.ops.skelfast.contrastive_lse(*a)[3])


def test_gradcheck_public_losses():
    x = make(G=3, N=3, D=4, K=12, seed=2, S=2)
    q = x["q"].clone().requires_grad_(True)
    u = x["u"].clone().requires_grad_(True)
    s = x["s"].clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda q, u: ops.phase2_loss(q, u, x["k"], x["queues"], topk=2), (q, u))
    assert torch.autograd.gradcheck(lambda s: ops.relational_distill_loss(x["q"], s, x["queues"], x["QT"]), (s,))


def test_compile_fullgraph():
    x = make(G=3, dtype=torch.float32)
    f = torch.compile(lambda q, u: ops.phase2_loss(q, u, x["k"], x["queues"]), fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(f(x["q"], x["u"]), ops.phase2_loss(x["q"], x["u"], x["k"], x["queues"]))


def test_streaming_memory_is_o_n_chunk():
    """Peak memory of phase-2 forward+backward (harness profiler measure) is a small fraction of the
    materialising reference's, which builds dozens of N x K blocks."""
    from benchmarks._harness import peak_memory_mb

    G, N, D, K = 3, 16, 8, 16384
    x = make(G=G, N=N, D=D, K=K, dtype=torch.float32, seed=1)
    peaks = []
    for fn in (ops.phase2_loss, R.phase2_loss):
        q = x["q"].clone().requires_grad_(True)
        u = x["u"].clone().requires_grad_(True)
        peaks.append(peak_memory_mb(lambda: fn(q, u, x["k"], x["queues"]).backward(), torch.device("cpu")))
    assert peaks[0] < peaks[1] / 8, peaks


def test_deterministic_and_non_contiguous_inputs():
    """Bitwise-repeatable on CPU; permuted (non-contiguous) queries and queues give the same result."""
    x = make(G=3, K=64, dtype=torch.float32, seed=8)
    a = ops.phase2_loss(x["q"], x["u"], x["k"], x["queues"], topk=2)
    b = ops.phase2_loss(x["q"], x["u"], x["k"], x["queues"], topk=2)
    assert torch.equal(a, b)
    q_nc = x["q"].transpose(0, 1).contiguous().transpose(0, 1)          # (G, N, D) view of (N, G, D)
    Q_nc = x["queues"].transpose(1, 2).contiguous().transpose(1, 2)     # column-major queues
    assert not q_nc.is_contiguous() and not Q_nc.is_contiguous()
    c = ops.phase2_loss(q_nc, x["u"], x["k"], Q_nc, topk=2)
    torch.testing.assert_close(c, a)
    QT = nrm(torch.randn(3 * 16, 64), dim=0)
    s = nrm(torch.randn(2, 8, 48), dim=-1)
    torch.testing.assert_close(ops.relational_distill_loss(q_nc, s, Q_nc, QT.t().contiguous().t()),
                               ops.relational_distill_loss(x["q"], s, x["queues"], QT))


def test_torch_backend_falls_back_to_reference(monkeypatch):
    """SKELFAST_BACKEND=torch (or no compiled kernel): the public losses run the eager reference
    (spied: the kernel matches the reference to 1e-10 too, so equal values alone prove nothing)."""
    x = make(G=3, S=2)
    ran = []

    def spy(module, name):
        fn = getattr(module, name)
        monkeypatch.setattr(module, name, lambda *a, **k: ran.append(name) or fn(*a, **k))

    for name in ("info_nce", "context_pair_losses", "ikem_loss", "relational_distill_loss"):
        spy(L.ref, name)
    spy(L, "contrastive_lse_composite")
    previous = ops.get_backend()
    ops.set_backend("torch")
    try:
        got = [ops.phase2_loss(x["q"], x["u"], x["k"], x["queues"]), ops.info_nce(x["q"], x["k"], x["queues"]),
               ops.relational_distill_loss(x["q"], x["s"], x["queues"], x["QT"])]
        lse1, lse2, idx, _ = L.contrastive_lse(*op_args())
    finally:
        ops.set_backend(previous)
    assert set(ran) == {"info_nce", "context_pair_losses", "ikem_loss", "relational_distill_loss",
                        "contrastive_lse_composite"}
    want = [R.phase2_loss(x["q"], x["u"], x["k"], x["queues"]), R.info_nce(x["q"], x["k"], x["queues"]),
            R.relational_distill_loss(x["q"], x["s"], x["queues"], x["QT"])]
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, **TOL[torch.float64])
    ref = torch.ops.skelfast.contrastive_lse(*op_args())
    torch.testing.assert_close(lse1, ref[0], **TOL[torch.float64])
    torch.testing.assert_close(lse2, ref[1], **TOL[torch.float64])
    assert torch.equal(idx, ref[2])


def test_losses_under_cpu_bf16_autocast_accumulate_in_fp32():
    """Under autocast (the --amp bf16 training step) the losses still run their positive-logit
    einsums in fp32: bf16 features give the fp32 loss of the bf16-rounded features (bench_step's
    bf16 distillation step used to fail the kernel's dtype check here)."""
    import torch.nn.functional as F
    from skelfast import ops
    from skelfast.reference import losses as reflosses
    g = torch.Generator().manual_seed(0)
    G, N, D, K, S = 6, 8, 16, 64, 3
    unit = lambda *shape, dim=-1: F.normalize(torch.randn(*shape, generator=g), dim=dim)  # noqa: E731
    q, k, u = unit(G, N, D).bfloat16(), unit(G, N, D).bfloat16(), unit(G, N, G * D).bfloat16()
    s, tq = unit(S, N, G * D).bfloat16(), unit(G, N, D)
    Q, QT = unit(G, D, K, dim=1), unit(G * D, K, dim=0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = [ops.info_nce(q, k, Q, 0.07), ops.context_loss(q, k, Q, 0.07, 1), ops.ikem_loss(u, k, Q, 0.07),
               ops.relational_distill_loss(tq, s, Q, QT, 0.07, 1)]
    want = [reflosses.info_nce(q.float(), k.float(), Q, 0.07), reflosses.context_loss(q.float(), k.float(), Q, 0.07, 1),
            reflosses.ikem_loss(u.float(), k.float(), Q, 0.07),
            reflosses.relational_distill_loss(tq, s.float(), Q, QT, 0.07, 1)]
    for a, b in zip(got, want):
        assert a.dtype == torch.float32
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_fake_kernel_refuses_what_eager_refuses():
    """The contrastive_lse fake kernel (torch.compile's shape propagation) refuses the arguments the
    C++ kernel refuses: a pair index past the A + B sources, topk > K, a col_scale not of length K."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    q, lpos, Q = torch.randn(2, 3, 8), torch.randn(2, 3), torch.randn(2, 8, 16)
    cases = [(([0], [9], 1, None), "pair indices"), (([], [], 17, None), "topk must be in"),
             (([], [], 1, torch.ones(5)), "col_scale must be")]
    for (pa, pb, topk, cs), msg in cases:
        with pytest.raises(RuntimeError):                                  # eager
            torch.ops.skelfast.contrastive_lse(q, lpos, Q, cs, None, None, pa, pb, 0.07, topk)
        with FakeTensorMode() as mode:
            args = [mode.from_tensor(t) for t in (q, lpos, Q)]
            fcs = None if cs is None else mode.from_tensor(cs)
            with pytest.raises(RuntimeError, match=msg):
                torch.ops.skelfast.contrastive_lse(*args, fcs, None, None, pa, pb, 0.07, topk)
