"""skelfast.nn.BatchedSTGCN vs G independent reference encoders with the same weights (method.md §4.2)."""
import pytest
import torch

from skelfast._extension import has_cpu_kernels
from skelfast.nn import BatchedSTGCN
from skelfast.nn.batched_stgcn import BatchedSTGCNBlock
from skelfast.reference.stgcn import STGCN

pytestmark = pytest.mark.skipif(not (has_cpu_kernels() and hasattr(torch.ops.skelfast, "graph_conv")),
                                reason="skelfast._C not built")


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny tensors: intra-op threads only add barrier spinning on a shared 2-core box."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)

TINY = dict(hidden_channels=4, hidden_dim=16, feature_dim=8)


def make_refs(G, dtype=torch.float64, seed=0, **kw):
    """G reference encoders with independent weights, non-trivial edge importance and BN buffers."""
    torch.manual_seed(seed)
    cfg = dict(TINY, dropout=0.0)
    cfg.update(kw)
    refs = []
    for _ in range(G):
        m = STGCN(**cfg).to(dtype)
        with torch.no_grad():
            if m.edge_importance is not None:
                for p in m.edge_importance:
                    p.add_(0.2 * torch.randn_like(p))
            for mod in m.modules():
                if isinstance(mod, torch.nn.modules.batchnorm._BatchNorm):
                    mod.running_mean.normal_(0, 0.1)
                    mod.running_var.uniform_(0.5, 1.5)
                    mod.bias.normal_(0, 0.1)
        refs.append(m)
    return refs


def make_x(G, N=3, T=9, V=25, M=2, dtype=torch.float64, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(G, N, 3, T, V, M, generator=g, dtype=torch.float64)
    x[:, 0, ..., 1] = 0  # an absent second person, as in NTU
    return x.to(dtype)


def split_grads(batched):
    """Per-model gradients of the batched parameters, keyed as in the reference state dict."""
    out = [dict() for _ in range(batched.num_models)]
    for name, p in batched.named_parameters():
        parts = p.grad.unbind(0) if batched._is_stacked(name) else p.grad.chunk(batched.num_models, 0)
        for g, t in enumerate(parts):
            out[g][name] = t
    return out


def run_both(refs, batched, x, grad_seed=5):
    """Forward + backward of both with the same upstream gradients; returns outputs and grads."""
    G = len(refs)
    outs = [r(x[g]) for g, r in enumerate(refs)]
    ref_head = torch.stack([o[0] for o in outs])
    ref_pool = torch.stack([o[1] for o in outs])
    head, pool = batched(x)
    gen = torch.Generator().manual_seed(grad_seed)
    gh = torch.randn(head.shape, generator=gen, dtype=torch.float64).to(head.dtype)
    gp = torch.randn(pool.shape, generator=gen, dtype=torch.float64).to(pool.dtype)
    torch.autograd.backward([ref_head, ref_pool], [gh, gp])
    torch.autograd.backward([head, pool], [gh, gp])
    ref_grads = [{n: p.grad for n, p in r.named_parameters()} for r in refs]
    return (head, pool), (ref_head, ref_pool), split_grads(batched), ref_grads


@pytest.mark.parametrize("G", [2, 6])
@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("head", ["mlp", "linear", None])
def test_outputs_and_all_gradients_match_reference(G, mode, head):
    kw = dict(head=head) if head != "linear" else dict(head="linear", num_class=5)
    refs = make_refs(G, **kw)
    batched = BatchedSTGCN.from_reference(refs)
    for m in refs + [batched]:
        m.train(mode == "train")
    x = make_x(G)
    got, want, grads, ref_grads = run_both(refs, batched, x)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-10)
    for g in range(G):
        assert grads[g].keys() == ref_grads[g].keys()
        for name in ref_grads[g]:
            torch.testing.assert_close(grads[g][name], ref_grads[g][name], atol=1e-10, rtol=1e-9,
                                       msg=lambda m: f"model {g} grad {name}: {m}")
    if mode == "train":  # BN running statistics were updated identically
        for g, sd in enumerate(batched.per_model_state_dicts()):
            for k, v in refs[g].state_dict().items():
                torch.testing.assert_close(sd[k], v, atol=1e-12, rtol=1e-12, msg=lambda m: f"{k}: {m}")


@pytest.mark.parametrize("split_backward,memory_format", [(True, "channels_last"), (True, "contiguous"),
                                                          (False, "channels_last")])
def test_conv_backward_split_per_group_or_grouped(monkeypatch, split_backward, memory_format):
    """Both CPU backward strategies of the grouped convolutions (per-group convolution_backward on
    slices, or oneDNN's grouped backward; chosen by width, SPLIT_BACKWARD_MIN_MACS) give the
    reference gradients, strided blocks and 1x1 residuals included; channels-last runs the 9x1
    convs' split backward as 1x9 convs over transposed slices."""
    import skelfast.nn.batched_stgcn as bs

    monkeypatch.setattr(bs, "SPLIT_BACKWARD_MIN_MACS", 0 if split_backward else 2**62)
    calls = []
    real_apply = bs._GroupedConvSplitBackward.apply
    monkeypatch.setattr(bs._GroupedConvSplitBackward, "apply", lambda *a: calls.append(1) or real_apply(*a))
    refs = make_refs(3)
    batched = BatchedSTGCN.from_reference(refs, memory_format=memory_format)
    got, want, grads, ref_grads = run_both(refs, batched, make_x(3))
    assert bool(calls) == split_backward
    torch.testing.assert_close(got[0], want[0], atol=1e-10, rtol=1e-10)
    for g in range(3):
        for name in ref_grads[g]:
            torch.testing.assert_close(grads[g][name], ref_grads[g][name], atol=1e-10, rtol=1e-9,
                                       msg=lambda m: f"model {g} grad {name}: {m}")


@pytest.mark.parametrize("kernel,stride,padding", [((9, 1), (2, 1), (4, 0)), ((3, 1), (1, 1), (1, 0)),
                                                    ((1, 1), (2, 1), (0, 0)), ((3, 3), (1, 2), (1, 1))])
@pytest.mark.parametrize("channels_last", [True, False])
@pytest.mark.parametrize("swap_taps", [True, False])
def test_split_backward_matches_grouped_conv_autograd(kernel, stride, padding, channels_last, swap_taps, monkeypatch):
    """_GroupedConvSplitBackward's gradients (x, weight, bias) equal autograd through the grouped
    F.conv2d, for the (k, 1) kernels it runs transposed as (1, k) and for kernels it does not, with
    the swap on and off whatever this host's ISA picked."""
    import skelfast.nn.batched_stgcn as bs

    monkeypatch.setattr(bs, "SWAP_TEMPORAL_TAPS", swap_taps)

    G, cin, cout = 3, 4, 5
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, G * cin, 11, 7, generator=gen, dtype=torch.float64)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    w = torch.randn(G * cout, cin, *kernel, generator=gen, dtype=torch.float64)
    b = torch.randn(G * cout, generator=gen, dtype=torch.float64)
    inputs = [t.clone().requires_grad_() for t in (x, w, b)]
    want = torch.nn.functional.conv2d(*inputs, stride, padding, 1, G)
    gout = torch.randn(want.shape, generator=gen, dtype=torch.float64)
    want_grads = torch.autograd.grad(want, inputs, gout)
    split_inputs = [t.clone().requires_grad_() for t in (x, w, b)]
    got = bs._GroupedConvSplitBackward.apply(*split_inputs, stride, padding, G)
    got_grads = torch.autograd.grad(got, split_inputs, gout)
    torch.testing.assert_close(got, want, atol=1e-12, rtol=1e-12)
    for name, g, r in zip(("x", "weight", "bias"), got_grads, want_grads):
        torch.testing.assert_close(g, r, atol=1e-12, rtol=1e-12, msg=lambda m: f"grad {name}: {m}")
    assert got_grads[0].is_contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)


def _conv_calls(fn):
    """(per-group input channels, kernel, stride) of every aten convolution and convolution_backward
    that fn dispatches, forward and backward."""
    from torch.utils._python_dispatch import TorchDispatchMode
    ops = {torch.ops.aten.convolution.default: 1, torch.ops.aten.convolution_backward.default: 2}
    calls = []

    class Record(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func in ops:  # the weight is argument 1 (forward) or 2 (backward), the stride two later
                w = args[ops[func]]
                calls.append((w.shape[1], tuple(w.shape[2:]), tuple(args[ops[func] + 2])))
            return func(*args, **(kwargs or {}))

    with Record():
        fn()
    return calls


@pytest.mark.parametrize("G,hidden,strided_1x1_expected", [(1, 4, False), (6, 4, False), (1, 16, True)])
def test_narrow_strided_1x1_convs_run_at_unit_stride(G, hidden, strided_1x1_expected):
    """The oneDNN#6035 workaround (STRIDED_1X1_MIN_CHANNELS in skelfast/nn/batched_stgcn.py): on CPU a
    stride-2 residual 1x1 conv with fewer than 16 input channels per group never reaches oneDNN with
    its stride (forward or backward); a 16-channel one still does. The outputs and gradients of
    these encoders against the reference are checked by the tests above."""
    refs = make_refs(G, dtype=torch.float32, hidden_channels=hidden)
    batched = BatchedSTGCN.from_reference(refs)
    x = make_x(G, N=2, T=8, dtype=torch.float32)

    def step():
        head, pool = batched(x)
        (head.sum() + pool.sum()).backward()

    calls = _conv_calls(step)
    strided_1x1 = [c for c in calls if c[1] == (1, 1) and c[2] != (1, 1)]
    unit_1x1 = [c for c in calls if c[1] == (1, 1) and c[2] == (1, 1) and c[0] == hidden]
    if strided_1x1_expected:
        assert strided_1x1 and all(c[0] >= 16 for c in strided_1x1), calls
    else:
        # the 4 -> 8 residual (stride 2), at stride 1 in the forward and the backward
        assert not strided_1x1, strided_1x1
        assert len(unit_1x1) >= 2, calls


def test_narrow_strided_1x1_conv_backward_keeps_the_heap_intact():
    """Regression for the fine-tuning abort on an AVX2 host: glibc 'corrupted size vs. prev_size'
    from oneDNN's strided 1x1 weight gradient on a 4-channel channels-last input (oneDNN#6035). A
    one-encoder, 4-channel model trains a few steps in a fresh process with glibc's heap checks on
    (MALLOC_CHECK_=3 aborts on the first inconsistency); without the workaround this aborted on
    the Zen 3 AVX2 host on every run. Hosts whose oneDNN takes another kernel pass either way."""
    import os
    import subprocess
    import sys
    code = (
        "import torch\n"
        "torch.set_num_threads(1)\n"
        "from skelfast.nn import BatchedSTGCN\n"
        "torch.manual_seed(0)\n"
        "m = BatchedSTGCN(1, hidden_channels=4, hidden_dim=16, feature_dim=8, dropout=0.0)\n"
        "for _ in range(4):\n"
        "    head, pool = m(torch.randn(1, 4, 3, 50, 25, 2))\n"
        "    (head.square().sum() + pool.sum()).backward()\n"
        "print('ok')\n")
    env = dict(os.environ, MALLOC_CHECK_="3", SKELFAST_QUIET_IMPORT="1")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 0 and res.stdout.strip() == "ok", (res.returncode, res.stderr[-2000:])


def test_list_input_fp32_strided_odd_T():
    refs = make_refs(3, dtype=torch.float32)
    batched = BatchedSTGCN.from_reference(refs)
    x = make_x(3, N=2, T=7, dtype=torch.float32)
    head, pool = batched([x[g] for g in range(3)])
    for g, r in enumerate(refs):
        rh, rp = r(x[g])
        torch.testing.assert_close(head[g], rh, atol=2e-5, rtol=1e-4)
        torch.testing.assert_close(pool[g], rp, atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("fused,memory_format", [(False, "auto"), (True, "contiguous"), (False, "channels_last")])
def test_unfused_layouts_and_no_edge_importance(fused, memory_format):
    refs = make_refs(2, edge_importance=False)
    batched = BatchedSTGCN.from_reference(refs, fused=fused, memory_format=memory_format)
    x = make_x(2, T=5)
    got, want, grads, ref_grads = run_both(refs, batched, x)
    torch.testing.assert_close(got[0], want[0], atol=1e-10, rtol=1e-10)
    for g in range(2):
        for name in ref_grads[g]:
            torch.testing.assert_close(grads[g][name], ref_grads[g][name], atol=1e-10, rtol=1e-9)


def test_state_dict_layout_roundtrip():
    refs = make_refs(3)
    batched = BatchedSTGCN.from_reference(refs)
    per = batched.per_model_state_dicts()
    for g, r in enumerate(refs):
        ref_sd = r.state_dict()
        assert per[g].keys() == ref_sd.keys()  # reference (= official encoder) key layout
        for k in ref_sd:
            assert per[g][k].shape == ref_sd[k].shape, k
            assert torch.equal(per[g][k], ref_sd[k]), k
    # load into a fresh batched encoder; to_reference gives back equal reference encoders
    fresh = BatchedSTGCN(num_models=3, **TINY, dropout=0.0).double()
    fresh.load_per_model_state_dicts([r.state_dict() for r in refs])
    for a, b in zip(fresh.state_dict().values(), batched.state_dict().values()):
        assert torch.equal(a, b)
    back = fresh.to_reference()
    x = make_x(3, N=2, T=5)
    for g in range(3):
        torch.testing.assert_close(back[g](x[g])[0], refs[g](x[g])[0], atol=0, rtol=0)
    with pytest.raises(ValueError):
        fresh.load_per_model_state_dicts([refs[0].state_dict()])


def test_parameter_count_matches_reference():
    """Full-size encoders: G x 920,068 parameters (method.md §4.3)."""
    b = BatchedSTGCN(num_models=2, init=None)
    assert sum(p.numel() for p in b.parameters()) == 2 * 920_068


def test_official_init_statistics():
    b = BatchedSTGCN(num_models=2, **TINY)
    w = b.st_gcn_networks[9].tcn[2].weight
    assert abs(w.std().item() - 0.02) < 0.005 and b.st_gcn_networks[9].tcn[2].bias.abs().max() == 0
    assert torch.all(b.edge_importance[0] == 1)
    assert abs(b.fc[0].weight.std().item() - 0.02) < 0.005


def test_bf16_autocast_cpu():
    """bf16 autocast: convs and graph conv in bf16 with fp32 accumulation, BN in fp32. Stated
    tolerance: pooled features within 5% relative (L2) of the fp32 reference encoders."""
    refs = make_refs(2, dtype=torch.float32)
    batched = BatchedSTGCN.from_reference(refs)
    x = make_x(2, N=2, T=8, dtype=torch.float32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        head, pool = batched(x)
    want = torch.stack([r(x[g])[1] for g, r in enumerate(refs)])
    rel = (pool.float() - want).norm() / want.norm()
    assert rel < 5e-2, rel
    (head.float().sum() + pool.float().sum()).backward()
    assert all(torch.isfinite(p.grad).all() for p in batched.parameters())
    assert batched.st_gcn_networks[0].tcn[0].running_mean.dtype == torch.float32


def test_torch_compile_fullgraph_cpu_train_step():
    """torch.compile(fullgraph=True) of a training step (train-mode BN, backward through
    graph_conv's registered backward and the split grouped-conv backward) matches eager."""
    refs = make_refs(2, dtype=torch.float32)
    batched = BatchedSTGCN.from_reference(refs).train()
    x = make_x(2, N=2, T=6, dtype=torch.float32)
    head, pool = batched(x)
    (head.sum() + pool.sum()).backward()
    want = [p.grad.clone() for p in batched.parameters()]
    batched.zero_grad(set_to_none=True)
    compiled = torch.compile(batched, fullgraph=True)
    h2, p2 = compiled(x)
    (h2.sum() + p2.sum()).backward()
    torch.testing.assert_close(p2, pool, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(h2, head, atol=1e-5, rtol=1e-4)
    for a, p in zip(want, batched.parameters()):
        torch.testing.assert_close(p.grad, a, atol=1e-4, rtol=1e-3)


@pytest.mark.cuda
def test_cuda_graph_capture_training_step():
    refs = make_refs(2, dtype=torch.float32)
    batched = BatchedSTGCN.from_reference(refs).cuda()
    x = make_x(2, N=4, T=10, dtype=torch.float32).cuda()
    static_x = x.clone()
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(2):  # warm-up outside the graph
            batched.zero_grad(set_to_none=False)
            sum(o.sum() for o in batched(static_x)).backward()
    torch.cuda.current_stream().wait_stream(s)
    graph = torch.cuda.CUDAGraph()
    batched.zero_grad(set_to_none=False)
    with torch.cuda.graph(graph):
        out = batched(static_x)
        sum(o.sum() for o in out).backward()
    static_x.copy_(x * 0.5)
    graph.replay()       # the grads were zero at capture, so after one replay they are the new input's
    torch.cuda.synchronize()
    replayed = {n: p.grad.clone() for n, p in batched.named_parameters()}
    batched.zero_grad(set_to_none=True)
    eager = batched(x * 0.5)
    sum(o.sum() for o in eager).backward()
    torch.testing.assert_close(out[1], eager[1], atol=1e-4, rtol=1e-4)
    for n, p in batched.named_parameters():
        scale = p.grad.abs().max().item()
        torch.testing.assert_close(replayed[n], p.grad, atol=1e-4 * scale, rtol=1e-4, msg=lambda m: f"{n}: {m}")


def test_official_prefixed_checkpoint_roundtrip():
    """Encoders stored under official module prefixes (encoder_q, encoder_q_motion, ...) load into
    one batched encoder and are written back key-for-key."""
    from skelfast.models.official import OFFICIAL_SUFFIX
    refs = make_refs(3)
    prefixes = ["encoder_q" + OFFICIAL_SUFFIX[m] for m in ("joint", "motion", "bone")]
    ckpt = {f"{p}.{k}": v for p, r in zip(prefixes, refs) for k, v in r.state_dict().items()}
    ckpt["queue"] = torch.zeros(8, 16)  # other official state is ignored
    batched = BatchedSTGCN(num_models=3, **TINY, dropout=0.0).double()
    batched.load_prefixed_state_dict(ckpt, prefixes)
    back = batched.prefixed_state_dict(prefixes)
    assert back.keys() == {k for k in ckpt if k != "queue"}
    for k, v in back.items():
        assert torch.equal(v, ckpt[k]), k
    x = make_x(3, N=2, T=5)
    torch.testing.assert_close(batched(x)[1][2], refs[2](x[2])[1], atol=1e-12, rtol=1e-12)


def test_dropout_train_runs_and_scales():
    """With dropout active (p=0.5) the in-place block arithmetic still backpropagates; a block's
    dropout drops about half of its elements (per element, not per channel) and scales the rest."""
    refs = make_refs(2, dropout=0.5)
    batched = BatchedSTGCN.from_reference(refs).train()
    x = make_x(2, N=2, T=6)
    head, pool = batched(x)
    (head.sum() + pool.sum()).backward()
    assert all(torch.isfinite(p.grad).all() for p in batched.parameters())
    # The block's own output (the fused BN + dropout + ReLU path). Without a residual, an element the
    # mask drops is 0 and a kept one is twice its p=0 value: compare the same batch at p=0.5 and p=0.
    blk = BatchedSTGCNBlock(2, 4, 8, residual="none", dropout=0.5).double().train()
    xb = torch.randn(4, 2 * 4, 6, 25, dtype=torch.float64)
    out = blk(xb, batched.A, None)
    blk.tcn[4].p = 0.0
    plain = blk(xb, batched.A, None)
    positive = plain > 0
    dropped, kept = out[positive] == 0, torch.isclose(out[positive], 2 * plain[positive])
    assert (dropped ^ kept).all()
    assert positive.sum() > 1000 and 0.45 < dropped.double().mean().item() < 0.55
    per_channel = dropped.new_zeros(positive.shape)
    per_channel[positive] = dropped
    mixed = [(per_channel[:, c][positive[:, c]]) for c in range(out.shape[1])]
    assert all(0 < m.double().mean() < 1 for m in mixed)         # per element: no channel dropped whole
    batched.eval()
    for r, sd in zip(refs, batched.per_model_state_dicts()):  # BN statistics moved during training
        r.load_state_dict(sd)
        r.eval()
    torch.testing.assert_close(batched(x)[1][1], refs[1](x[1])[1], atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("fused", [True, False])
def test_dropout_follows_its_own_module_mode(fused):
    """Dropout obeys its own train/eval flag, not the block's: model.train() then every Dropout's
    .eval() (dropout off, batch-statistic BN) equals the reference in the same state; a dropout left
    on while BN runs on running statistics still drops (the fused op cannot, so the block takes the
    unfused path)."""
    refs = make_refs(2, dropout=0.5)
    batched = BatchedSTGCN.from_reference(refs, fused=fused).train()
    x = make_x(2, N=2, T=6)
    for m in refs + [batched]:
        m.train()
        for d in m.modules():
            if isinstance(d, torch.nn.Dropout):
                d.eval()
    got = batched(x)[1]
    want = torch.stack([r(x[g])[1] for g, r in enumerate(refs)])
    torch.testing.assert_close(got, want, atol=1e-10, rtol=1e-10)
    batched.eval()
    no_drop = batched(x)[1]
    for d in batched.modules():
        if isinstance(d, torch.nn.Dropout):
            d.train()
    assert not torch.allclose(batched(x)[1], no_drop)


@pytest.mark.parametrize("grad", [True, False])
def test_hooks_on_the_grouped_convs_run(grad, monkeypatch):
    """The temporal and residual convs stay module calls whichever CPU path they take (the split
    backward, forced here for every width, runs with autograd on): a forward hook that zeroes block
    8's strided 9x1 conv and residual conv outputs changes the result exactly as on the reference
    encoders."""
    import skelfast.nn.batched_stgcn as bs
    monkeypatch.setattr(bs, "SPLIT_BACKWARD_MIN_MACS", 0)
    split_calls, apply = [0], bs._GroupedConvSplitBackward.apply

    def counted(*args):
        split_calls[0] += 1
        return apply(*args)

    monkeypatch.setattr(bs._GroupedConvSplitBackward, "apply", counted)
    refs = make_refs(2)
    batched = BatchedSTGCN.from_reference(refs).eval()
    for r in refs:
        r.eval()
    calls = []

    def zero(module, inputs, output):
        calls.append(type(module).__name__)
        return output * 0

    last = batched.st_gcn_networks[7]
    handles = [last.tcn[2].register_forward_hook(zero), last.residual[0].register_forward_hook(zero)]
    for r in refs:
        handles += [r.st_gcn_networks[7].tcn[2].register_forward_hook(zero),
                    r.st_gcn_networks[7].residual[0].register_forward_hook(zero)]
    x = make_x(2, N=2, T=8)
    with torch.set_grad_enabled(grad):
        got = batched(x)[1]
        want = torch.stack([r(x[g])[1] for g, r in enumerate(refs)])
    for h in handles:
        h.remove()
    assert calls.count("GroupedConv2d") == 2
    assert (split_calls[0] > 0) == grad   # with autograd the convs took the split-backward path
    torch.testing.assert_close(got, want, atol=1e-10, rtol=1e-10)
    assert not torch.allclose(got, batched(x)[1])


def test_per_model_shape_errors_name_the_key_and_the_model():
    refs = make_refs(2)
    batched = BatchedSTGCN.from_reference(refs)
    good = [r.state_dict() for r in refs]
    key = "st_gcn_networks.3.tcn.0.weight"
    for a, b in [(5, 4), (3, 5)]:   # 3 + 5 = 2 x 4: concatenation alone would not notice
        bad = [dict(sd) for sd in good]
        bad[0][key], bad[1][key] = torch.ones(a).double(), torch.ones(b).double()
        with pytest.raises(ValueError, match=rf"per-model state dict {0 if a != 4 else 1}: '{key}' has shape"):
            batched.load_per_model_state_dicts(bad)
    bad = [dict(sd) for sd in good]
    bad[1]["fc.2.weight"] = bad[1]["fc.2.weight"][:5]
    with pytest.raises(ValueError, match=r"per-model state dict 1: 'fc.2.weight' has shape \(5, 16\)"):
        batched.load_per_model_state_dicts(bad)


def test_from_reference_keeps_bn_settings_and_requires_grad():
    """What a state dict does not carry: BN momentum and eps, frozen parameters."""
    refs = make_refs(2)
    for r in refs:
        for m in r.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.momentum, m.eps = 0.01, 1e-3
        r.requires_grad_(False)
    batched = BatchedSTGCN.from_reference(refs)
    bns = [m for m in batched.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    assert bns and all(m.momentum == 0.01 and m.eps == 1e-3 for m in bns)
    assert not any(p.requires_grad for p in batched.parameters())
    x = make_x(2)
    for m in refs + [batched]:
        m.train()
    got = batched(x)[1]
    want = torch.stack([r(x[g])[1] for g, r in enumerate(refs)])
    torch.testing.assert_close(got, want, atol=1e-10, rtol=1e-10)
    for g, sd in enumerate(batched.per_model_state_dicts()):   # running statistics at momentum 0.01
        torch.testing.assert_close(sd["data_bn.running_mean"], refs[g].state_dict()["data_bn.running_mean"])
    refs[1].data_bn.momentum = 0.1
    with pytest.raises(ValueError, match="data_bn.momentum differs"):
        BatchedSTGCN.from_reference(refs)


def test_differing_batch_counters_warn_or_raise():
    """One counter per stacked BN: per-model counters that differ are merged to the maximum with a
    warning; with momentum=None (counter = averaging factor) they are an error."""
    refs = make_refs(2)
    batched = BatchedSTGCN.from_reference(refs)
    sds = [r.state_dict() for r in refs]
    sds[0]["data_bn.num_batches_tracked"] = torch.tensor(5)
    sds[1]["data_bn.num_batches_tracked"] = torch.tensor(9)
    with pytest.warns(UserWarning, match=r"data_bn.num_batches_tracked: per-model counters \[5, 9\] differ"):
        batched.load_per_model_state_dicts(sds)
    assert int(batched.data_bn.num_batches_tracked) == 9
    batched.data_bn.momentum = None
    with pytest.raises(ValueError, match="momentum=None"):
        batched.load_per_model_state_dicts(sds)


def test_input_errors_name_the_mismatch():
    """x of the wrong joints, channels, an empty batch or another dtype: one error naming the
    expected layout (they surfaced as BatchNorm's 'running_mean should contain 144 elements',
    a reshape of 0 elements, or 'mixed dtype')."""
    m = BatchedSTGCN(2, hidden_channels=4, hidden_dim=16, head=None)
    x = torch.randn(2, 3, 3, 10, 25, 2)
    for bad in (x[..., :24, :], x[:, :, :2], x[:, :0]):
        with pytest.raises(ValueError, match=r"x must be \(G=2, N, C=3, T, V=25, M\)"):
            m(bad)
    with pytest.raises(TypeError, match="x is torch.float64 but the encoders are torch.float32"):
        m(x.double())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert m(x)[0].dtype == torch.bfloat16        # autocast: fp32 input, bf16 compute


def test_stacked_load_with_a_wrong_shape_names_the_cause_first():
    """A per-model tensor of the wrong shape: the message is the cause (it used to be the last line of
    ~19 kB listing every key as missing or unexpected), and the module is unchanged."""
    from skelfast.nn import StackedEncoders
    stacked = StackedEncoders.build(2, hidden_channels=4, hidden_dim=8, feature_dim=4)
    sd = {k: v.clone() for k, v in stacked.state_dict().items()}
    before = {k: v.clone() for k, v in sd.items()}
    sd["1.fc.0.weight"] = torch.ones(3, 3)
    with pytest.raises(RuntimeError, match=r"^Error\(s\) in loading state_dict for StackedEncoders: encoders: "
                                           r"per-model state dict 1: 'fc.0.weight' has shape \(3, 3\)") as exc:
        stacked.load_state_dict(sd)
    assert len(str(exc.value)) < 500
    assert all(torch.equal(before[k], v) for k, v in stacked.state_dict().items())
