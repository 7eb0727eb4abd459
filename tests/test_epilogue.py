"""skelfast.ops.dropout_add_relu: the fused ST-GCN block epilogue ReLU(dropout(x) + residual)
(method.md §4.2) vs plain PyTorch with the kernel's own mask, gradients, mask statistics, errors."""
import pytest
import torch

from skelfast import _extension
from skelfast.ops import dropout_add_relu
from skelfast.ops.epilogue import dropout_add_relu_composite

from _common import raises_kernel_error

pytestmark = pytest.mark.skipif(not (_extension.has_cpu_kernels() and hasattr(torch.ops.skelfast, "dropout_add_relu")),
                                reason="needs the compiled extension")
op = torch.ops.skelfast.dropout_add_relu


def kernel_mask(shape, p, seed, dtype=torch.float64, memory_format=torch.contiguous_format):
    """The multiplier (0 or 1/(1-p)) the kernel applies to each element for this seed and layout."""
    ones = torch.ones(shape, dtype=dtype).contiguous(memory_format=memory_format)
    return op(ones, None, p, seed)


def inputs(shape, dtype, memory_format=torch.contiguous_format, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g, dtype=dtype).contiguous(memory_format=memory_format)
    r = torch.randn(shape, generator=g, dtype=dtype).contiguous(memory_format=memory_format)
    return x, r


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last])
@pytest.mark.parametrize("with_residual", [True, False])
@pytest.mark.parametrize("p", [0.0, 0.3, 0.5, 1.0])
def test_forward_backward_match_pytorch_with_the_kernel_mask(dtype, memory_format, with_residual, p):
    x, r = inputs((3, 5, 7, 4), dtype, memory_format)
    r = r if with_residual else None
    mask = kernel_mask(x.shape, p, 1234, dtype, memory_format)
    xg = x.clone().requires_grad_()
    rg = None if r is None else r.clone().requires_grad_()
    out = op(xg, rg, p, 1234)
    assert out.stride() == x.stride()
    xw = x.clone().requires_grad_()
    rw = None if r is None else r.clone().requires_grad_()
    want = torch.relu(xw * mask + (0 if rw is None else rw))
    torch.testing.assert_close(out, want)   # not bit-equal: the kernel may contract x*scale + r to an FMA
    g = torch.randn_like(out)
    got_grads = torch.autograd.grad(out, [t for t in (xg, rg) if t is not None], g)
    want_grads = torch.autograd.grad(want, [t for t in (xw, rw) if t is not None], g)
    for a, b in zip(got_grads, want_grads):
        torch.testing.assert_close(a, b)


def test_p_zero_is_add_relu_and_eval_mode_ignores_p():
    x, r = inputs((4, 6, 5, 3), torch.float32)
    torch.testing.assert_close(dropout_add_relu(x, r, 0.5, training=False), torch.relu(x + r), rtol=0, atol=0)
    torch.testing.assert_close(dropout_add_relu(x, None, 0.0), torch.relu(x), rtol=0, atol=0)


def test_p_one_drops_everything():
    x, r = inputs((2, 3, 4, 5), torch.float64)
    torch.testing.assert_close(op(x, r, 1.0, 7), torch.relu(r), rtol=0, atol=0)
    assert torch.all(op(x.abs() + 1, None, 1.0, 7) == 0)


def test_mask_statistics():
    """Keep rate 1 - p within 5 sigma; neighbouring elements and consecutive seeds uncorrelated."""
    n = 1 << 20
    for p in (0.1, 0.5, 0.9):
        keep = (kernel_mask((n,), p, 99) > 0).double()
        sigma = (p * (1 - p) / n) ** 0.5
        assert abs(keep.mean().item() - (1 - p)) < 5 * sigma, (p, keep.mean().item())
    keep = (kernel_mask((n,), 0.5, 99) > 0).double() - 0.5
    assert abs((keep[1:] * keep[:-1]).mean().item()) * 4 < 5 / n ** 0.5        # lag-1 correlation
    other = (kernel_mask((n,), 0.5, 100) > 0).double() - 0.5
    assert abs((keep * other).mean().item()) * 4 < 5 / n ** 0.5                 # seed s vs s + 1
    big = kernel_mask((3, 1 << 20), 0.5, -5)                                     # negative seeds are fine
    assert not torch.equal(big[0], big[1])


def test_seed_comes_from_torch_generator_and_is_thread_count_independent():
    x, r = inputs((8, 16, 9, 25), torch.float32)
    torch.manual_seed(5)
    a = dropout_add_relu(x, r, 0.5)
    b = dropout_add_relu(x, r, 0.5)
    torch.manual_seed(5)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        c = dropout_add_relu(x, r, 0.5)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(a, c) and not torch.equal(a, b)
    gen = torch.Generator().manual_seed(3)
    d = dropout_add_relu(x, r, 0.5, generator=gen)
    gen.manual_seed(3)
    assert torch.equal(d, dropout_add_relu(x, r, 0.5, generator=gen))


def test_wrapper_aligns_layouts_and_falls_back():
    x, r = inputs((2, 4, 6, 3), torch.float32, torch.channels_last)
    out = dropout_add_relu(x, r.contiguous(), 0.0)          # residual in another layout
    torch.testing.assert_close(out, torch.relu(x + r), rtol=0, atol=0)
    assert out.is_contiguous(memory_format=torch.channels_last)
    xt = x.transpose(2, 3)                                   # neither layout: made dense first
    torch.testing.assert_close(dropout_add_relu(xt, None, 0.0), torch.relu(xt), rtol=0, atol=0)
    xb = x.bfloat16()                                        # not a kernel dtype: PyTorch path
    torch.testing.assert_close(dropout_add_relu(xb, r.bfloat16(), 0.0), torch.relu(xb + r.bfloat16()))


def test_empty_and_gradcheck():
    e = torch.empty(0, 3, 4, 5, dtype=torch.float64, requires_grad=True)
    out = op(e, None, 0.5, 1)
    assert out.shape == e.shape
    out.sum().backward()
    assert e.grad.shape == e.shape
    x, r = inputs((2, 3, 4, 5), torch.float64)
    x = (x + 0.05 * torch.sign(x)).requires_grad_()   # keep away from ReLU's kink
    r = r.requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b: op(a, b, 0.4, 11), (x, r))
    assert torch.autograd.gradcheck(lambda a: op(a, None, 0.4, 11), (x,))


def test_opcheck():
    x, r = inputs((2, 3, 4, 5), torch.float32, torch.channels_last)
    for args in ((x.requires_grad_(), r.requires_grad_(), 0.3, 5), (x, None, 0.0, 0)):
        torch.library.opcheck(op, args)


@pytest.mark.parametrize("training", [False, True])
def test_compiled_module_uses_pytorch_ops(training):
    """Under torch.compile the op traces to plain PyTorch ops (no skelfast op in the graph)."""
    x, r = inputs((2, 3, 4, 5), torch.float32)
    graphs = []

    def record(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    f = torch.compile(lambda a, b: dropout_add_relu(a, b, 0.5, training=training), backend=record, fullgraph=True)
    out = f(x, r)
    targets = [str(n.target) for gm in graphs for n in gm.graph.nodes if n.op == "call_function"]
    assert targets and not any("skelfast" in t for t in targets), targets
    if training:   # dropped elements give relu(r), kept ones relu(2x + r)
        assert ((out == torch.relu(r)) | torch.isclose(out, torch.relu(2 * x + r))).all()
    else:
        torch.testing.assert_close(out, torch.relu(x + r))


def test_errors():
    x, r = inputs((2, 3, 4, 5), torch.float32)
    with pytest.raises(ValueError, match="p must be in"):
        dropout_add_relu(x, r, 1.5)
    with pytest.raises(ValueError, match="p must be in"):
        dropout_add_relu(x, r, float("nan"))
    with pytest.raises(TypeError, match="p must be a real number, got str"):
        dropout_add_relu(x, r, "0.5")
    with pytest.raises(ValueError, match="residual shape"):
        dropout_add_relu(x, r[:1], 0.5)
    with raises_kernel_error("p must be in"):
        op(x, r, -0.1, 0)
    with raises_kernel_error("strides"):
        op(x, r.contiguous(memory_format=torch.channels_last), 0.5, 0)
    with raises_kernel_error("float32 or float64"):
        op(x.half(), None, 0.5, 0)


def test_composite_matches_torch_dropout_law():
    torch.manual_seed(0)
    x = torch.ones(1 << 16)
    out = dropout_add_relu_composite(x, None, 0.25)
    assert set(out.unique().tolist()) == {0.0, float(torch.tensor(1 / 0.75))}
    kept = (out != 0).double().mean().item()
    assert abs(kept - 0.75) < 5 * (0.75 * 0.25 / x.numel()) ** 0.5   # 5 sigma of the keep fraction


@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last])
def test_broadcast_pooled_gradient_is_read_in_place(memory_format):
    """The last block feeds a global mean over (T, V): its gradient is a stride-0 broadcast, which
    the backward reads without a copy (channels-last) or after one (contiguous); same result."""
    x, r = inputs((4, 6, 5, 3), torch.float64, memory_format)
    xg, rg = x.clone().requires_grad_(), r.clone().requires_grad_()
    out = op(xg, rg, 0.5, 21)
    out.mean(dim=(2, 3)).square().sum().backward()
    mask = kernel_mask(x.shape, 0.5, 21, memory_format=memory_format)
    xw, rw = x.clone().requires_grad_(), r.clone().requires_grad_()
    torch.relu(xw * mask + rw).mean(dim=(2, 3)).square().sum().backward()
    torch.testing.assert_close(xg.grad, xw.grad)
    torch.testing.assert_close(rg.grad, rw.grad)


def test_scalar_and_one_dimensional():
    for shape in ((), (7,)):
        x = torch.randn(shape, dtype=torch.float64, requires_grad=True)
        out = op(x, None, 0.0, 0)
        out.backward(torch.ones_like(out))
        torch.testing.assert_close(x.grad, (x > 0).double())


def test_more_than_eight_dims_runs_the_pytorch_ops_forward_and_backward():
    """The kernels index at most 8 dims: a 9-d input takes the PyTorch path (its forward ran the
    kernel and its backward then refused the shape)."""
    x = torch.randn(*([1] * 8), 5, requires_grad=True)
    r = torch.randn(x.shape)
    out = dropout_add_relu(x, r, 0.0)
    out.sum().backward()
    torch.testing.assert_close(out, torch.relu(x + r))
    torch.testing.assert_close(x.grad, (x + r > 0).to(x.dtype))
