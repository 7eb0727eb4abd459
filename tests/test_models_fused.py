"""skelfast.models.build (fused modalities and losses) vs skelfast.reference.build: same state dict,
same losses and parameter gradients for one step of every pretraining model (method.md §5, §6), and
the linear-evaluation / fine-tuning models on batched encoders (§7)."""
import pytest
import torch
import torch.nn.functional as F

from skelfast.models import build, fused_kernels
from skelfast.nn import StackedEncoders
from skelfast.reference.models import REFERENCE_KERNELS

TINY = dict(hidden_channels=4, queue_size=64, dropout=0.0)


def reference_layout_grads(model):
    """{name: grad} in the reference model's parameter names (stacked encoders split per model)."""
    stacked = {name: m for name, m in model.named_modules() if isinstance(m, StackedEncoders)}
    out = {name: p.grad for name, p in model.named_parameters()
           if p.grad is not None and not any(name.startswith(pre + ".") for pre in stacked)}
    for pre, m in stacked.items():
        grads = {k: p.grad for k, p in m.named_parameters() if p.grad is not None}
        for g, part in enumerate(m.split_state(grads)):
            out.update({f"{pre}.{g}.{k}": v for k, v in part.items()})
    return out


def test_fused_kernel_set_uses_ops():
    k = fused_kernels()
    for name in ("modalities", "info_nce", "context_loss", "ikem_loss", "relational_distill_loss"):
        assert getattr(k, name).__module__.startswith("skelfast.ops"), name
        assert getattr(k, name) is not getattr(REFERENCE_KERNELS, name)
    assert k.encoders == StackedEncoders.build


@pytest.mark.parametrize("name, phase", [("ikem6", 1), ("ikem6", 2), ("crossclr3", 2), ("student6to3", None),
                                         ("student3to1", None)])
def test_one_step_matches_reference(name, phase):
    torch.manual_seed(0)
    # float64: in float32 the omega input differs by ~1e-7 (the CPU kernel's vectorised atan2), which
    # the input BatchNorm of a tiny batch amplifies in the gradients of near-constant channels.
    fused = build(name, **TINY).double()
    ref = build(name, backend="reference", **TINY).double()
    ref.load_state_dict(fused.state_dict())
    g = torch.Generator().manual_seed(1)
    x1 = torch.randn(8, 3, 10, 25, 2, generator=g, dtype=torch.float64)
    x2 = torch.randn(8, 3, 10, 25, 2, generator=g, dtype=torch.float64)
    frames = torch.randint(30, 300, (8,), generator=g)
    kwargs = {} if phase is None else {"phase": phase}
    out_f, out_r = fused(x1, x2, frames, **kwargs), ref(x1, x2, frames, **kwargs)
    torch.testing.assert_close(out_f["losses"], out_r["losses"], atol=1e-9, rtol=1e-9)
    for key in ("q", "k", "u", "teacher_q", "student"):   # features are unit rows (G, N, D)
        if key in out_f:
            norms = out_f[key].norm(dim=-1)
            torch.testing.assert_close(norms, torch.ones_like(norms), msg=lambda m: f"{key}: {m}")
    out_f["loss"].backward()
    out_r["loss"].backward()
    gf, gr = reference_layout_grads(fused), reference_layout_grads(ref)
    assert gr, "no parameter received a gradient"
    assert set(gf) == set(gr)
    for n in gr:
        torch.testing.assert_close(gf[n], gr[n], atol=1e-8, rtol=1e-7, msg=lambda m: f"{n}: {m}")
    # both enqueued the same keys at the same pointer
    bf, br = dict(fused.named_buffers()), dict(ref.named_buffers())
    queues = [n for n in br if n.endswith("queue")]
    assert queues
    for n in queues:
        torch.testing.assert_close(bf[n], br[n], atol=1e-10, rtol=1e-10, msg=lambda m: f"{n}: {m}")


@pytest.mark.parametrize("name", ["ikem6", "crossclr3", "student6to3", "student3to1"])
def test_same_seed_same_initial_state_on_both_backends(name):
    """Stacked encoders draw their initial weights from the reference encoders' random stream, so a
    seed gives the same model (and the same queues drawn after the encoders) on both backends."""
    torch.manual_seed(3)
    fused = build(name, **TINY)
    torch.manual_seed(3)
    ref = build(name, backend="reference", **TINY)
    sf, sr = fused.state_dict(), ref.state_dict()
    assert set(sf) == set(sr)
    for k in sr:
        if not k.endswith("_extra_state"):
            assert torch.equal(sf[k], sr[k]), k


def test_stacked_state_dict_is_views_saved_once(tmp_path):
    """The per-model tensors of state_dict() are views of the stacked tensors, as nn.Module returns
    references: an in-place write through them (an EMA's copy_, as in timm's ModelEmaV2) reaches
    the module, and torch.save writes each stacked storage once, so the checkpoint has the
    reference model's size."""
    torch.manual_seed(0)
    fused, ref = build("ikem6", **TINY), build("ikem6", backend="reference", **TINY)
    torch.save(fused.state_dict(), tmp_path / "f.pt")
    torch.save(ref.state_dict(), tmp_path / "r.pt")
    size_f, size_r = (tmp_path / "f.pt").stat().st_size, (tmp_path / "r.pt").stat().st_size
    assert abs(size_f - size_r) < 0.02 * size_r, (size_f, size_r)
    sd = fused.state_dict()
    key = next(k for k in sd if k.endswith("2.st_gcn_networks.1.tcn.2.weight"))
    sd[key].fill_(0.25)
    assert (fused.state_dict()[key] == 0.25).all()
    others = [k for k in sd if k.endswith("st_gcn_networks.1.tcn.2.weight") and k != key]
    assert others and all(not (fused.state_dict()[k] == 0.25).all() for k in others)


@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last])
def test_momentum_update_of_a_subset_matches_reference(memory_format):
    """Phase 2 updates only the unlocked key encoders (§5.4, §11 #2): rows of the stacked tensors,
    also when the conv weights are channels-last (model.to(memory_format=...))."""
    torch.manual_seed(0)
    fused = build("ikem6", **TINY).double()
    ref = build("ikem6", backend="reference", **TINY).double()
    with torch.no_grad():   # make query and key encoders differ
        for p in ref.encoders_q.parameters():
            p.add_(torch.randn_like(p))
    fused.load_state_dict(ref.state_dict())
    fused.to(memory_format=memory_format)
    before = {k: v.clone() for k, v in ref.state_dict().items() if isinstance(v, torch.Tensor)}
    fused.momentum_update_([0, 2, 5])
    ref.momentum_update_([0, 2, 5])
    sf, sr = fused.state_dict(), ref.state_dict()
    for k in sr:
        if k.startswith("encoders_k."):
            assert torch.equal(sf[k], sr[k]), k
    for g in range(6):   # the listed key encoders moved, the others kept their weights
        key = f"encoders_k.{g}.data_bn.weight"
        assert torch.equal(sf[key], before[key]) == (g not in (0, 2, 5)), key
    for bad in ([-1], [6]):         # -1 silently updated model 5
        with pytest.raises(ValueError, match="model indices in"):
            fused.encoders_k.momentum_update_(fused.encoders_q, 0.9, bad)


def test_partial_encoder_state_is_reported_missing():
    """A key given for some encoders only: strict loading fails naming the absent ones; non-strict
    loading keeps their current values and lists them as missing."""
    torch.manual_seed(0)
    fused = build("crossclr3", **TINY)
    sd = fused.state_dict()
    before = sd["encoders_q.1.data_bn.weight"].clone()
    sd["encoders_q.0.data_bn.weight"] = torch.full_like(sd["encoders_q.0.data_bn.weight"], 7.0)
    del sd["encoders_q.1.data_bn.weight"]
    with pytest.raises(RuntimeError, match=r"encoders_q\.1\.data_bn\.weight"):
        fused.load_state_dict(sd)
    result = fused.load_state_dict(sd, strict=False)
    assert result.missing_keys == ["encoders_q.1.data_bn.weight"]
    after = fused.state_dict()
    assert torch.equal(after["encoders_q.1.data_bn.weight"], before)
    assert torch.all(after["encoders_q.0.data_bn.weight"] == 7.0)


def test_unknown_encoder_key_is_unexpected():
    torch.manual_seed(0)
    fused = build("crossclr3", **TINY)
    sd = fused.state_dict()
    sd["encoders_q.0.not_a_layer.weight"] = torch.zeros(1)
    with pytest.raises(RuntimeError, match="not_a_layer"):
        fused.load_state_dict(sd)


@pytest.mark.parametrize("name", ["ikem6", "student6to3"])
def test_official_checkpoint_round_trip_on_stacked_encoders(name):
    from skelfast.models import load_official_checkpoint, to_official_state_dict
    torch.manual_seed(0)
    src = build(name, **TINY)
    torch.manual_seed(1)
    dst = build(name, **TINY)
    load_official_checkpoint(to_official_state_dict(src), dst)
    sd_src, sd_dst = src.state_dict(), dst.state_dict()
    for k in sd_src:
        if not k.endswith("_extra_state"):
            assert torch.equal(sd_src[k], sd_dst[k]), k


@pytest.mark.parametrize("name, phase", [("ikem6", 2), ("student6to3", None)])
def test_three_sgd_steps_match_reference(name, phase):
    """Several steps (momentum updates of the unlocked keys, enqueues, SGD with weight decay) keep
    the two backends on the same trajectory in float64: no systematic difference accumulates."""
    models = {}
    for backend in ("skelfast", "reference"):
        torch.manual_seed(0)
        models[backend] = build(name, backend=backend, **TINY, hidden_dim=32, feature_dim=16).double().train()
    opts = {b: torch.optim.SGD([p for p in m.parameters() if p.requires_grad], lr=0.1, momentum=0.9,
                               weight_decay=1e-4) for b, m in models.items()}
    g = torch.Generator().manual_seed(1)
    kwargs = {} if phase is None else {"phase": phase}
    for _ in range(3):
        x1, x2 = (torch.randn(8, 3, 10, 25, 2, generator=g, dtype=torch.float64) for _ in range(2))
        frames = torch.randint(30, 300, (8,), generator=g)
        for b, m in models.items():
            opts[b].zero_grad()
            m(x1, x2, frames, **kwargs)["loss"].backward()
            opts[b].step()
    sf, sr = models["skelfast"].state_dict(), models["reference"].state_dict()
    for k in sr:
        if not k.endswith("_extra_state"):
            torch.testing.assert_close(sf[k], sr[k], atol=1e-9, rtol=1e-8, msg=lambda m: f"{k}: {m}")


def _queue_buffers(model):
    return [b for n, b in model.named_buffers() if n.endswith("queue")]


@pytest.mark.parametrize("backend", ["skelfast", "reference"])
@pytest.mark.parametrize("name, phase", [("ikem6", 1), ("ikem6", 2), ("student6to3", None)])
def test_deferred_enqueue_uses_the_queue_in_place(backend, name, phase):
    """enqueue=False (what the trainer does: enqueue after the optimiser step) reads the queue
    buffers without the snapshot copy; losses and gradients equal those of the snapshotting
    enqueue=True forward, and an enqueue before backward is refused by autograd, never used."""
    kwargs = {} if phase is None else {"phase": phase}
    torch.manual_seed(0)
    a = build(name, backend=backend, **TINY).double().train()
    b = build(name, backend=backend, **TINY).double().train()
    b.load_state_dict(a.state_dict())
    g = torch.Generator().manual_seed(2)
    x1, x2 = (torch.randn(8, 3, 10, 25, 2, generator=g, dtype=torch.float64) for _ in range(2))
    frames = torch.randint(30, 300, (8,), generator=g)
    before = [q.clone() for q in _queue_buffers(b)]
    out_a = a(x1, x2, frames, enqueue=True, **kwargs)
    out_b = b(x1, x2, frames, enqueue=False, **kwargs)
    assert all(torch.equal(q, q0) for q, q0 in zip(_queue_buffers(b), before))     # nothing enqueued yet
    assert not all(torch.equal(q, q0) for q, q0 in zip(_queue_buffers(a), before))
    torch.testing.assert_close(out_b["losses"], out_a["losses"], atol=0, rtol=0)
    out_a["loss"].backward()
    out_b["loss"].backward()
    ga, gb = reference_layout_grads(a), reference_layout_grads(b)
    assert ga and set(ga) == set(gb)
    for n in ga:
        torch.testing.assert_close(gb[n], ga[n], atol=0, rtol=0, msg=lambda m: f"{n}: {m}")

    if backend == "skelfast" and phase == 1:
        return      # the fused InfoNCE computes its gradient in the forward and keeps no queue
    out = b(x1, x2, frames, enqueue=False, **kwargs)
    b.enqueue_(out["teacher_q" if "teacher_q" in out else "k"])     # the trainer's after_step, before backward
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        out["loss"].backward()


LINEAR_TINY = dict(hidden_channels=4, hidden_dim=16, dropout=0.0, num_class=5)


def _linear_pair(name, **kw):
    """(skelfast, reference) LinearEval `name`, float64, same weights."""
    torch.manual_seed(0)
    fast = build(name, **LINEAR_TINY, **kw).double()
    ref = build(name, backend="reference", **LINEAR_TINY, **kw).double()
    assert isinstance(fast.encoders, StackedEncoders) and not fast.per_stream and ref.per_stream
    assert fast.state_dict().keys() == ref.state_dict().keys()
    ref.load_state_dict(fast.state_dict())
    g = torch.Generator().manual_seed(2)
    x = torch.randn(6, 3, 12, 25, 2, generator=g, dtype=torch.float64)
    x[2, ..., 1] = 0                                     # an absent second person
    return fast, ref, x, torch.randint(30, 300, (6,), generator=g)


@pytest.mark.parametrize("name, views", [("linear6", ("all", "3views", "joint", "omega")),
                                         ("linear_student3to1", ("all",))])
def test_linear_eval_on_stacked_encoders_matches_reference(name, views):
    """Linear evaluation (§7) on skelfast's batched encoders: the logits of every view equal the
    per-stream reference encoders', and only the heads are trainable, as in the reference."""
    fast, ref, x, frames = _linear_pair(name)
    trainable = lambda m: sorted(k for k, p in m.named_parameters() if p.requires_grad)  # noqa: E731
    assert trainable(fast) == ["encoders.fc.bias", "encoders.fc.weight"]
    assert {k.split(".")[-2] for k in trainable(ref)} == {"fc"}
    fast.train(), ref.train()                             # backbones stay in eval mode (§7)
    assert not fast.encoders.training
    with torch.no_grad():
        for view in views:
            torch.testing.assert_close(fast(x, frames, view), ref(x, frames, view), atol=1e-10, rtol=1e-9,
                                       msg=lambda m: f"{view}: {m}")
    # heads-only training on a view of all streams: the same head gradients
    F.cross_entropy(fast(x, frames, "all"), torch.arange(6) % 5).backward()
    F.cross_entropy(ref(x, frames, "all"), torch.arange(6) % 5).backward()
    gf, gr = reference_layout_grads(fast), reference_layout_grads(ref)
    assert set(gf) == set(gr) and all(".fc." in k for k in gr)
    for n in gr:
        torch.testing.assert_close(gf[n], gr[n], atol=1e-10, rtol=1e-9, msg=lambda m: f"{n}: {m}")


def test_linear_eval_subset_view_cannot_train_stacked_encoders():
    """A view of some streams runs all batched encoders: allowed frozen and without gradients, an
    error (naming the fix) whenever parameters would be trained; the reference trains only its own."""
    fast, ref, x, frames = _linear_pair("linear6")
    fast.train()
    with pytest.raises(ValueError, match=r"build the model with streams=\('joint',\)"):
        fast(x, frames, "joint")                          # the heads require grad
    ref(x, frames, "joint").sum().backward()
    assert ref.encoders[0].fc.weight.grad is not None and ref.encoders[1].fc.weight.grad is None
    tuned = build("linear6", backbone_eval=False, **LINEAR_TINY)
    with torch.no_grad(), pytest.raises(ValueError, match="batched encoders"):
        tuned(x.float(), frames, "3views")                # training mode: BN statistics would move
    tuned.eval()
    with torch.no_grad():
        assert tuned(x.float(), frames, "3views").shape == (6, 5)


@pytest.mark.parametrize("name", ["linear6", "linear_student3to1"])
def test_finetuning_step_on_stacked_encoders_matches_reference(name):
    """Fine-tuning (backbones in train mode, every parameter trainable) of all streams at once: the
    same loss, gradients of every parameter, and BN running statistics as the reference encoders."""
    fast, ref, x, frames = _linear_pair(name, backbone_eval=False)
    for m in (fast, ref):
        m.train()
        m.requires_grad_(True)
    lf = F.cross_entropy(fast(x, frames), torch.arange(6) % 5)
    lr = F.cross_entropy(ref(x, frames), torch.arange(6) % 5)
    torch.testing.assert_close(lf, lr, atol=1e-10, rtol=1e-9)
    lf.backward(), lr.backward()
    gf, gr = reference_layout_grads(fast), reference_layout_grads(ref)
    assert len(gr) == sum(1 for _ in ref.parameters()) and set(gf) == set(gr)
    for n in gr:
        torch.testing.assert_close(gf[n], gr[n], atol=1e-8, rtol=1e-7, msg=lambda m: f"{n}: {m}")
    sf, sr = fast.state_dict(), ref.state_dict()
    moved = [k for k in sr if k.endswith("running_mean") and not torch.equal(sr[k], torch.zeros_like(sr[k]))]
    assert moved                                          # train mode did update the statistics
    for k in sr:
        torch.testing.assert_close(sf[k], sr[k], atol=1e-10, rtol=1e-9, msg=lambda m: f"{k}: {m}")


@pytest.mark.parametrize("backend", ["skelfast", "reference"])
def test_set_heads_writes_the_given_streams(backend):
    model = build("linear6", backend=backend, **LINEAR_TINY)
    # Clones: state_dict() tensors share storage with the parameters set_heads_ writes in place.
    before = {k: v.clone() for k, v in model.state_dict().items()}
    w, b = torch.randn(2, 5, 16), torch.randn(2, 5)
    model.set_heads_((4, 1), w, b)
    after = model.state_dict()
    for stream, i in ((4, 0), (1, 1)):
        torch.testing.assert_close(after[f"encoders.{stream}.fc.weight"], w[i], rtol=0, atol=0)
        torch.testing.assert_close(after[f"encoders.{stream}.fc.bias"], b[i], rtol=0, atol=0)
    untouched = [k for k in after if not k.startswith(("encoders.4.fc.", "encoders.1.fc."))]
    assert any(k.startswith("encoders.0.fc.") for k in untouched)  # the other streams' heads are checked too
    assert all(torch.equal(after[k], before[k]) for k in untouched)
