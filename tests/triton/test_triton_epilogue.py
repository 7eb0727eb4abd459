"""Triton kernels of the block epilogues (skelfast/triton/epilogue.py: dropout_add_relu and
batch_norm_relu, method.md §4.2) vs the C++ kernels, under TRITON_INTERPRET=1 on CPU when no GPU
is visible. Both draw the dropout mask from the same counter-based hash of (seed, memory offset),
so forward, backward and statistics are compared with the same mask (fp64 at 1e-12)."""
import os

import pytest
import torch
import torch.nn.functional as F
from torch.library import opcheck

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before skelfast.triton is imported
triton = pytest.importorskip("triton")
import triton.language as tl  # noqa: E402

from skelfast import ops  # noqa: E402
from skelfast._extension import has_cpu_kernels  # noqa: E402
from skelfast.ops import _backend  # noqa: E402
from skelfast.triton.epilogue import _dropout_weight  # noqa: E402

pytestmark = pytest.mark.skipif(not (has_cpu_kernels() and hasattr(torch.ops.skelfast, "batch_norm_relu")),
                                reason="skelfast._C not built")

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
SEED = -1234567890123     # negative: the kernels read it as its 64-bit two's complement
TOL = {torch.float64: dict(rtol=1e-12, atol=1e-12), torch.float32: dict(rtol=1e-5, atol=1e-5)}


def _te():
    if not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("triton was imported before TRITON_INTERPRET=1 could be set")
    from skelfast.triton import epilogue as TE
    return TE


def make(dtype, memory_format, shape=(3, 5, 7, 4), seed=0):
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(shape, generator=g, dtype=torch.float64) * 2 + 1).to(dtype).contiguous(memory_format=memory_format)
    r = torch.randn(shape, generator=g, dtype=torch.float64).to(dtype).contiguous(memory_format=memory_format)
    C = shape[1]
    w, b = torch.randn(C, generator=g, dtype=dtype), torch.randn(C, generator=g, dtype=dtype)
    rm, rv = torch.randn(C, generator=g, dtype=dtype), torch.rand(C, generator=g, dtype=dtype) + 0.5
    go = torch.randn(shape, generator=g, dtype=torch.float64).to(dtype).contiguous(memory_format=memory_format)
    return x, r, w, b, rm, rv, go


def _dev(*ts):
    return [t.to(DEVICE) if isinstance(t, torch.Tensor) else t for t in ts]


def _close(got, want, tol):
    for a, c in zip(got, want):
        torch.testing.assert_close(a.cpu(), c, **tol)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last])
@pytest.mark.parametrize("p", [0.0, 0.3, 1.0])
@pytest.mark.parametrize("with_residual", [True, False])
def test_dropout_add_relu_matches_cpp(dtype, memory_format, p, with_residual):
    TE = _te()
    x, r, *_, go = make(dtype, memory_format)
    r = r if with_residual else None
    want = torch.ops.skelfast.dropout_add_relu(x, r, p, SEED)
    got = TE.dropout_add_relu_forward(*_dev(x, r), p, SEED)
    assert got.stride() == want.stride()
    _close([got], [want], TOL[dtype])
    want_b = torch.ops.skelfast.dropout_add_relu_backward(go, want, p, SEED, with_residual)
    got_b = TE.dropout_add_relu_backward(*_dev(go, want), p, SEED, with_residual)
    _close(got_b, want_b, TOL[dtype])


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last])
@pytest.mark.parametrize("p", [0.0, 0.3, 1.0])
@pytest.mark.parametrize("with_residual", [True, False])
@pytest.mark.parametrize("batch_stats", [True, False])
def test_batch_norm_relu_matches_cpp(dtype, memory_format, p, with_residual, batch_stats):
    TE = _te()
    x, r, w, b, rm, rv, go = make(dtype, memory_format)
    r = r if with_residual else None
    stats = (None, None) if batch_stats else (rm, rv)
    want = torch.ops.skelfast.batch_norm_relu(x, w, b, *stats, r, 1e-5, p, SEED)
    got = TE.batch_norm_relu_forward(*_dev(x, w, b, *stats, r), 1e-5, p, SEED)
    assert got[0].stride() == want[0].stride()
    _close(got, want, TOL[dtype])
    out, mean, invstd, _ = want
    args = (go, out, x, w, mean, invstd)
    want_b = torch.ops.skelfast.batch_norm_relu_backward(*args, batch_stats, p, SEED, with_residual)
    got_b = TE.batch_norm_relu_backward(*_dev(*args), batch_stats, p, SEED, with_residual)
    _close(got_b, want_b, TOL[dtype])


@pytest.mark.parametrize("shape", [(2, 3), (2, 3, 5), (2, 4, 3, 2, 2), (1, 300, 2, 3), (70, 3, 1, 1), (2, 3, 130, 130)])
def test_batch_norm_relu_other_shapes(shape):
    """Ranks 2, 3 and 5; more channels than one channel tile; more rows than one row tile, and
    than one tile per row split (2, 3, 130, 130)."""
    TE = _te()
    x, r, w, b, rm, rv, go = make(torch.float64, torch.contiguous_format, shape)
    want = torch.ops.skelfast.batch_norm_relu(x, w, b, None, None, r, 1e-5, 0.5, SEED)
    got = TE.batch_norm_relu_forward(*_dev(x, w, b, None, None, r), 1e-5, 0.5, SEED)
    _close(got, want, TOL[torch.float64])
    out, mean, invstd, _ = want
    want_b = torch.ops.skelfast.batch_norm_relu_backward(go, out, x, w, mean, invstd, True, 0.5, SEED, True)
    got_b = TE.batch_norm_relu_backward(*_dev(go, out, x, w, mean, invstd), True, 0.5, SEED, True)
    _close(got_b, want_b, TOL[torch.float64])


def test_int64_channel_index_path(monkeypatch):
    """Tensors of 2^31 elements or more index channels in int64: forced here on a small one."""
    TE = _te()
    monkeypatch.setattr(TE, "_WIDE_FROM", 0)
    x, r, w, b, rm, rv, go = make(torch.float64, torch.contiguous_format)
    want = torch.ops.skelfast.batch_norm_relu(x, w, b, None, None, r, 1e-5, 0.5, SEED)
    _close(TE.batch_norm_relu_forward(*_dev(x, w, b, None, None, r), 1e-5, 0.5, SEED), want, TOL[torch.float64])
    out, mean, invstd, _ = want
    want_b = torch.ops.skelfast.batch_norm_relu_backward(go, out, x, w, mean, invstd, True, 0.5, SEED, True)
    got_b = TE.batch_norm_relu_backward(*_dev(go, out, x, w, mean, invstd), True, 0.5, SEED, True)
    _close(got_b, want_b, TOL[torch.float64])


def _hash32(v: int) -> int:
    """csrc/include/skelfast/dropout_math.h hash32, transcribed."""
    m = 0xFFFFFFFF
    v ^= v >> 16
    v = (v * 0x7FEB352D) & m
    v ^= v >> 15
    v = (v * 0x846CA68B) & m
    return v ^ (v >> 16)


def _kept(i: int, seed: int, p: float) -> bool:
    """dropout_math.h dropout_weight != 0 for element offset i, transcribed (0 < p < 1)."""
    s = seed & 0xFFFFFFFFFFFFFFFF
    key0, key1 = s & 0xFFFFFFFF, s >> 32
    h = _hash32((i & 0xFFFFFFFF) ^ key0)
    h = _hash32((h + (key1 ^ (((i >> 32) * 0x9E3779B9) & 0xFFFFFFFF))) & 0xFFFFFFFF)
    return h >= int(p * 4294967296.0)


@triton.jit
def _mask_kernel(off_ptr, out_ptr, n, key0, key1, threshold, keep_hi, keep_lo, BLOCK: tl.constexpr):
    k = tl.arange(0, BLOCK)
    m = k < n
    i = tl.load(off_ptr + k, mask=m, other=0)
    tl.store(out_ptr + k, _dropout_weight(i, key0, key1, threshold, keep_hi, keep_lo, tl.float64), mask=m)


def test_mask_matches_hash_past_2_to_32_elements():
    """The transcription above reproduces the C++ mask on real offsets, and the Triton mask matches
    it on offsets past 2^32 (the high word's hash round), where no test tensor can reach."""
    TE = _te()
    p = 0.4
    ones = torch.ones(256, dtype=torch.float64)
    cpp_kept = torch.ops.skelfast.dropout_add_relu(ones, None, p, SEED) > 0
    assert cpp_kept.tolist() == [_kept(i, SEED, p) for i in range(256)]
    offsets = [0, 1, 255, 2**31 - 1, 2**31, 2**32 - 1, 2**32, 2**32 + 7, 3 * 2**32 + 12345, 2**40 + 3, 2**50 + 17]
    offsets += [2**33 + k for k in range(40)]
    drop, key = TE.dropout_key(p, SEED)
    assert drop
    out = torch.empty(len(offsets), dtype=torch.float64, device=DEVICE)
    _mask_kernel[(1,)](torch.tensor(offsets, dtype=torch.int64, device=DEVICE), out, len(offsets), *key, BLOCK=64)
    want = [1 / (1 - p) if _kept(i, SEED, p) else 0.0 for i in offsets]
    torch.testing.assert_close(out.cpu(), torch.tensor(want, dtype=torch.float64), rtol=1e-14, atol=0)
    assert 0 < sum(v > 0 for v in want) < len(want)


@pytest.mark.parametrize("low", [torch.bfloat16, torch.float16])
def test_low_precision_input_with_fp32_parameters(low):
    """The autocast path: bf16/fp16 activations, fp32 weights and statistics; computed in fp32 and
    stored in the activation dtype (compared with the fp32 C++ kernel on the same rounded input)."""
    TE = _te()
    x, r, w, b, _, _, go = make(torch.float32, torch.channels_last, (4, 6, 5, 3))
    xl, rl, gl = x.to(low), r.to(low), go.to(low)
    want = torch.ops.skelfast.batch_norm_relu(xl.float(), w, b, None, None, rl.float(), 1e-5, 0.5, SEED)
    got = TE.batch_norm_relu_forward(*_dev(xl, w, b, None, None, rl), 1e-5, 0.5, SEED)
    assert got[0].dtype == low and got[1].dtype == got[2].dtype == torch.float32
    torch.testing.assert_close(got[0].cpu().float(), want[0], rtol=1e-2, atol=2e-2)
    _close(got[1:], want[1:], dict(rtol=1e-5, atol=1e-5))
    out, mean, invstd, _ = want
    want_b = torch.ops.skelfast.batch_norm_relu_backward(gl.float(), out, xl.float(), w, mean, invstd, True, 0.5, SEED,
                                                         True)
    got_b = TE.batch_norm_relu_backward(*_dev(gl, out.to(low), xl, w, mean, invstd), True, 0.5, SEED, True)
    assert got_b[0].dtype == low and got_b[1].dtype == torch.float32
    # out rounded to low precision can flip ReLU's mask only where out is ~0: compare where it is not
    live = (out.abs() > 0.05).to(DEVICE)
    torch.testing.assert_close(got_b[0].float()[live].cpu(), want_b[0][live.cpu()], rtol=3e-2, atol=3e-2)
    torch.testing.assert_close(got_b[1].cpu(), want_b[1], rtol=5e-2, atol=5e-2)
    torch.testing.assert_close(got_b[2].cpu(), want_b[2], rtol=5e-2, atol=5e-2)


def test_errors():
    TE = _te()
    x, r, w, b, rm, rv, go = _dev(*make(torch.float32, torch.contiguous_format))
    with pytest.raises(RuntimeError, match="p must be in"):
        TE.dropout_add_relu_forward(x, None, 1.5, 0)
    with pytest.raises(RuntimeError, match="contiguous or channels-last"):
        TE.dropout_add_relu_forward(x.flatten()[::2], None, 0.5, 0)
    scalar = torch.tensor(-0.5, device=DEVICE)   # any rank, including 0-d
    assert TE.dropout_add_relu_forward(scalar, torch.tensor(1.0, device=DEVICE), 0.0, 0).item() == 0.5
    with pytest.raises(RuntimeError, match="residual must have x's shape, dtype and strides"):
        TE.batch_norm_relu_forward(x, w, b, None, None, r.contiguous(memory_format=torch.channels_last), 1e-5, 0.0, 0)
    with pytest.raises(RuntimeError, match="weight must be a contiguous"):
        TE.batch_norm_relu_forward(x, w.double(), b, None, None, None, 1e-5, 0.0, 0)
    with pytest.raises(RuntimeError, match="mean and var must be given together"):
        TE.batch_norm_relu_forward(x, w, b, rm, None, None, 1e-5, 0.0, 0)
    with pytest.raises(RuntimeError, match="eps must be"):
        TE.batch_norm_relu_forward(x, w, b, None, None, None, -1.0, 0.0, 0)
    with pytest.raises(RuntimeError, match="contiguous or channels-last"):
        TE.batch_norm_relu_forward(x.transpose(2, 3), w, b, None, None, None, 1e-5, 0.0, 0)
    with pytest.raises(RuntimeError, match="at least one value per channel"):
        TE.batch_norm_relu_forward(x[:0], w, b, None, None, None, 1e-5, 0.0, 0)


@pytest.mark.skipif(DEVICE != "cpu", reason="dispatch test uses the CPU key under the interpreter")
def test_attached_ops_autograd_and_running_stats(monkeypatch):
    """attach_triton() routes both ops to Triton (here on the CPU key, as on CUDA in production):
    the public functions give the C++ kernels' outputs, gradients and running statistics, opcheck
    passes on the routed op, and detach_triton() restores the C++ kernels."""
    _te()
    calls = []
    for name in ("batch_norm_relu", "dropout_add_relu"):
        fn, fallbacks = _backend._TRITON_KERNELS[name]

        def counting(*args, _fn=fn, _name=name):
            calls.append(_name)
            return _fn(*args)

        monkeypatch.setitem(_backend._TRITON_KERNELS, name, (counting, fallbacks))
    x, r, w, b, rm, rv, go = make(torch.float64, torch.channels_last)

    def run():
        xs, ws, bs, rs = (t.clone().requires_grad_() for t in (x, w, b, r))
        rm1, rv1 = rm.clone(), rv.clone()
        gen = torch.Generator().manual_seed(5)
        y = ops.batch_norm_relu(xs, rm1, rv1, ws, bs, True, 0.1, 1e-5, rs, 0.5, generator=gen)
        y = ops.dropout_add_relu(y, None, 0.25, True, generator=gen)
        return [y] + list(torch.autograd.grad(y, (xs, ws, bs, rs), go)) + [rm1, rv1]

    want = run()
    try:
        _backend.attach_triton("CPU")
        got = run()
        assert set(calls) == {"batch_norm_relu", "dropout_add_relu"}, "the Triton kernels were not called"
        opcheck(torch.ops.skelfast.batch_norm_relu.default,
                (x.clone().requires_grad_(), w.clone().requires_grad_(), b, None, None, r, 1e-5, 0.5, SEED),
                test_utils=("test_schema", "test_autograd_registration", "test_faketensor"))
    finally:
        _backend.detach_triton()
    _close(got, want, TOL[torch.float64])
    n = len(calls)
    run()
    assert len(calls) == n, "the C++ kernels were not restored"


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_batched_block_under_autocast_and_graph_capture():
    """On CUDA the public op runs Triton for bf16 activations with fp32 parameters (autocast) and
    falls back to PyTorch ops while a CUDA graph with p > 0 is captured."""
    from skelfast.ops import epilogue
    x, r, w, b, rm, rv, go = _dev(*make(torch.float32, torch.channels_last, (4, 6, 5, 3)))
    assert epilogue.kernel_applies(x.bfloat16(), 0.5)
    y = ops.batch_norm_relu(x.bfloat16(), None, None, w, b, True, 0.1, 1e-5, r.bfloat16(), 0.0)
    want = F.relu(F.batch_norm(x.bfloat16().float(), None, None, w, b, True, 0.1, 1e-5) + r.bfloat16().float())
    torch.testing.assert_close(y.float(), want, rtol=2e-2, atol=3e-2)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):   # asserted after the capture, so a failure cannot leave it open
        with_dropout, without = epilogue.kernel_applies(x, 0.5), epilogue.kernel_applies(x, 0.0)
        x.mul_(1.0)             # a non-empty graph
    assert not with_dropout and without
