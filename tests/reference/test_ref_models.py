"""Reference models end to end on tiny configs (method.md §5, §6, §7, §11) and build()."""
import pytest
import torch
import torch.nn.functional as F

from skelfast.reference import Parity, build
from skelfast.reference.build import available
from skelfast.reference.losses import concat_keys, info_nce, phase2_loss, relational_distill_loss
from skelfast.reference.modalities import modalities

from _ref_helpers import TINY, TINY_LE, skeleton

FRAMES = torch.tensor([30, 50, 70, 120])


def batch(seed=0):
    return skeleton(N=4, T=12, seed=seed), skeleton(N=4, T=12, seed=seed + 100), FRAMES


def grads(params):
    return [p.grad for p in params]


def has_grad(module):
    gs = grads(module.parameters())
    return all(g is not None for g in gs) and any(g.abs().sum() > 0 for g in gs)


def no_grad(module):
    return all(g is None for g in grads(module.parameters()))


# ---------------------------------------------------------------- pretraining steps, §5.3 / §5.4
def test_phase1_step_ikem6():
    m = build("ikem6", **TINY)
    x1, x2, fr = batch()
    queue_before = m.queues.queue.clone()
    out = m(x1, x2, fr, phase=1)
    out["loss"].backward()
    assert out["losses"].shape == (6,) and torch.isfinite(out["loss"])
    torch.testing.assert_close(out["loss"], info_nce(out["q"], out["k"], queue_before, 0.07).sum())
    assert all(has_grad(e) for e in m.encoders_q)
    assert no_grad(m.encoders_k) and no_grad(m.ikem_heads)  # mlp2 unused in phase 1 (§5.2)
    # Keys are unit vectors and were enqueued at pointer 0 (§5.1).
    torch.testing.assert_close(out["k"].norm(dim=-1), torch.ones(6, 4))
    torch.testing.assert_close(m.queues.queue[:, :, :4], out["k"].transpose(1, 2))
    torch.testing.assert_close(m.queues.queue[:, :, 4:], queue_before[:, :, 4:])
    assert m.queues.ptr == 4 and isinstance(m.queues.ptr, int)


def test_phase2_step_ikem6():
    m = build("ikem6", **TINY)
    x1, x2, fr = batch()
    queue_before = m.queues.queue.clone()
    out = m(x1, x2, fr, phase=2)
    out["loss"].backward()
    assert out["u"].shape == (6, 4, 6 * 8)  # 768-d at full size: G * feature_dim (§5.4b)
    torch.testing.assert_close(out["loss"], phase2_loss(out["q"], out["u"], out["k"], queue_before, 0.07, 1))
    torch.testing.assert_close(out["losses"], out["context"] + out["ikem"])
    assert all(has_grad(e) for e in m.encoders_q) and all(has_grad(h) for h in m.ikem_heads)
    assert no_grad(m.encoders_k)
    assert m.queues.ptr == 4


def test_phase2_variants_context_off_and_ikem_off():
    x1, x2, fr = batch()
    out = build("ikem6", context=False, **TINY)(x1, x2, fr, phase=2)  # §11 #8: works instead of raising
    assert torch.isfinite(out["loss"])
    out = build("ikem6", ikem_term=False, **TINY)(x1, x2, fr, phase=2)  # §11 #3 src.zip variant
    assert "ikem" not in out
    torch.testing.assert_close(out["loss"], out["context"].sum())


def test_any_modality_subset_phase2():
    # Modality is an index, not code: a 4-modality IKEM (j, m, b, a) works with 4*feature_dim heads.
    names = ("joint", "motion", "bone", "acceleration")
    m = build("ikem6", modalities=names, **TINY)
    assert m.lock == (False,) * 4  # no official lock list for 4 modalities
    out = m(*batch(), phase=2)
    assert out["u"].shape == (4, 4, 32) and out["losses"].shape == (4,)
    out["loss"].backward()
    assert all(has_grad(h) for h in m.ikem_heads)


def test_crossclr3_ignores_frames_and_uses_crossclr_bones():
    m = build("crossclr3", **TINY).eval()
    assert m.modality_topology == "ntu25_crossclr" and not m.true_timeline  # §3.4, §11 #14
    x1, x2, fr = batch()
    a = m(x1, x2, fr, phase=2)["loss"]
    b = m(x1, x2, torch.tensor([10, 20, 30, 40]), phase=2)["loss"]
    torch.testing.assert_close(a, b)
    assert build("ikem6", **TINY).true_timeline


def test_shared_crossclr_heads_flag():
    m = build("crossclr3", shared_crossclr_heads=True, **TINY)
    for encs in (m.encoders_q, m.encoders_k):
        assert encs[1].fc[2] is encs[0].fc and encs[2].fc[2] is encs[0].fc  # §5.5 / §11 #10
    x1, x2, fr = batch()
    out = m(x1, x2, fr, phase=1)
    out["loss"].backward()
    assert torch.isfinite(out["loss"]) and has_grad(m.encoders_q[0].fc)


# ---------------------------------------------------------------- distillation, §6
def test_distillation_step_student6to3():
    m = build("student6to3", **TINY)
    x1, x2, fr = batch()
    qs_before, qt_before = m.queues.queue.clone(), m.teacher_queue.queue.clone()
    bn_before = m.teacher[0].data_bn.running_mean.clone()
    out = m(x1, x2, fr)
    out["loss"].backward()
    assert out["losses"].shape == (3,) and out["student"].shape == (3, 4, 48)
    torch.testing.assert_close(out["loss"], relational_distill_loss(out["teacher_q"], out["student"], qs_before,
                                                                     qt_before[0], 0.07, 1).sum())
    assert no_grad(m.teacher) and all(not p.requires_grad for p in m.teacher.parameters())
    assert all(has_grad(s) for s in m.students)
    # Queues get teacher queries and t = nrm(cat q) (§6.1 'After the step').
    torch.testing.assert_close(m.queues.queue[:, :, :4], out["teacher_q"].transpose(1, 2))
    torch.testing.assert_close(m.teacher_queue.queue[0, :, :4], concat_keys(out["teacher_q"]).T)
    assert m.queues.ptr == 4 and m.teacher_queue.ptr == 4
    # §11 #5 official: teacher in train mode, so its BN running statistics drift.
    assert not torch.equal(bn_before, m.teacher[0].data_bn.running_mean)


def test_distillation_teacher_eval_flag():
    m = build("student6to3", teacher_train_mode=False, **TINY).train()
    assert not m.teacher.training and m.students.training
    bn_before = m.teacher[0].data_bn.running_mean.clone()
    m(*batch())
    assert torch.equal(bn_before, m.teacher[0].data_bn.running_mean)


def test_distillation_bug1_flag_in_model():
    x1, x2, fr = batch()
    for bug in (False, True):
        m = build("student6to3", omega_uses_bone_queue=bug, **TINY)
        Q = m.queues.queue.clone()
        QT = m.teacher_queue.queue[0].clone()
        out = m(x1, x2, fr)
        if bug:
            Q[5] = Q[2]  # omega slot <- bone queue (method.md §6.1 BUG, §11 #1)
        torch.testing.assert_close(out["losses"], relational_distill_loss(out["teacher_q"], out["student"], Q, QT))
    assert Parity().omega_uses_bone_queue is False  # default = the fix


def test_student3to1_fused_student():
    m = build("student3to1", **TINY)
    assert len(m.students) == 1 and m.students[0].in_channels == 9  # §6.2: [J, Mo, B] channels
    assert m.teacher_queue.queue.shape == (1, 24, 16)  # 384-d at full size
    out = m(*batch())
    out["loss"].backward()
    assert out["losses"].shape == (1,) and has_grad(m.students[0]) and no_grad(m.teacher)


# ---------------------------------------------------------------- loss decreases, fixed batch
def _train(model, step, n=30, lr=0.05):
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=lr, momentum=0.9)
    losses = []
    for _ in range(n):
        loss = step()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


@pytest.mark.parametrize("name,kw", [("crossclr3", dict(phase=1)), ("ikem6", dict(phase=2)), ("student6to3", {})])
def test_loss_decreases_on_fixed_batch(name, kw):
    torch.manual_seed(0)
    m = build(name, **TINY)
    x1, x2, fr = batch()
    losses = _train(m, lambda: m(x1, x2, fr, enqueue=False, **kw)["loss"])
    assert all(map(lambda v: v == v, losses))
    assert sum(losses[-5:]) / 5 < 0.8 * losses[0], losses


# ---------------------------------------------------------------- linear evaluation, §7
def test_linear6_views_and_training():
    m = build("linear6", **TINY_LE)
    trainable = [n for n, p in m.named_parameters() if p.requires_grad]
    assert len(trainable) == 12 and all(".fc." in n for n in trainable)  # 2 tensors per encoder
    m.train()
    assert not any(mod.training for mod in m.encoders.modules())  # model.eval() semantics (§7)
    x, fr = skeleton(N=4), FRAMES
    single = {v: m(x, fr, view=v) for v in m.streams}
    torch.testing.assert_close(m(x, fr, view="all"), torch.stack(list(single.values())).mean(0))
    torch.testing.assert_close(m(x, fr, view="3views"),
                               (single["joint"] + single["motion"] + single["bone"]) / 3)
    # The joint stream is exactly encoder 0 on the joint modality.
    torch.testing.assert_close(single["joint"], m.encoders[0](modalities(x, fr, "joint")[:, 0])[0])
    y = torch.tensor([0, 1, 2, 3])
    F.cross_entropy(m(x, fr, view="3views"), y).backward()
    fc_grads = [e.fc.weight.grad for e in m.encoders]
    assert all(g is not None and g.abs().sum() > 0 for g in fc_grads[:3])  # trained jointly through the mean
    assert all(g is None for g in fc_grads[3:])
    assert all(p.grad is None for n, p in m.named_parameters() if ".fc." not in n)
    with pytest.raises(ValueError):
        m(x, fr, view="elbow")


def test_linear3_and_student_linear_models():
    x, fr = skeleton(N=4), FRAMES
    m3 = build("linear3", **TINY_LE)
    assert m3.modality_topology == "ntu25_crossclr" and not m3.true_timeline
    torch.testing.assert_close(m3(x, fr), m3(x, None))  # no time scale in the 3-modality configs
    with pytest.raises(ValueError):
        m3(x, fr, view="omega")
    fused = build("linear_student3to1", **TINY_LE)
    assert fused(x, fr).shape == (4, 60) and fused.encoders[0].in_channels == 9
    assert build("linear_student6to3", **TINY_LE)(x, fr, view="all").shape == (4, 60)


# ---------------------------------------------------------------- build()
def test_build_names_defaults_and_errors():
    assert {"crossclr3", "ikem6", "student6to3", "student3to1", "linear6", "linear3"} <= set(available())
    m = build("crossclr3", **TINY)
    assert m.tau == 0.07 and m.topk == 1 and m.momentum == 0.999 and m.modalities == ("joint", "motion", "bone")
    assert build("linear6", num_class=120, **TINY_LE).encoders[0].fc.out_features == 120
    with pytest.raises(ValueError, match="unknown model"):
        build("resnet")
    with pytest.raises(TypeError, match="unknown argument"):
        build("ikem6", colour="red")
    p = build("ikem6", parity=Parity(ikem_term=False), context=False, **TINY).parity
    assert p.ikem_term is False and p.context is False
