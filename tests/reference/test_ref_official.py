"""Loading official CrosSCLR / IKEM state dicts (official key layout built here from the documented names)."""
import pytest
import torch
import torch.nn.functional as F

from skelfast.models import load_official_checkpoint, to_official_state_dict
from skelfast.reference import build
from skelfast.reference.losses import info_nce, phase2_loss, relational_distill_loss
from skelfast.reference.modalities import modalities, nrm

from _ref_helpers import TINY, TINY_LE, functional_stgcn, official_encoder_state, skeleton

H, HD, FD, K = TINY["hidden_channels"], TINY["hidden_dim"], TINY["feature_dim"], TINY["queue_size"]
SFX6 = ["", "_motion", "_bone", "_acceleration", "_rotation_axis", "_omega"]
LET6 = ["j", "m", "b", "a", "r", "o"]
FRAMES = torch.tensor([30, 50, 70, 120])


def official_ikem_state(G=6, ptr=8, seed=0):
    """State dict of the official pretraining CrosSCLR model (net/crossclr_6views.py / _3views.py)."""
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for sfx, let in zip(SFX6[:G], LET6[:G]):
        for role in ("q", "k"):
            sd.update(official_encoder_state(f"encoder_{role}{sfx}.", 3, H, HD, ("mlp", HD, FD), g))
        sd[f"mlp2{let}.0.weight"] = 0.2 * torch.randn(G * FD, HD, generator=g)
        sd[f"mlp2{let}.0.bias"] = 0.1 * torch.randn(G * FD, generator=g)
        sd[f"mlp2{let}.2.weight"] = 0.2 * torch.randn(G * FD, G * FD, generator=g)
        sd[f"mlp2{let}.2.bias"] = 0.1 * torch.randn(G * FD, generator=g)
        sd[f"queue{sfx}"] = F.normalize(torch.randn(FD, K, generator=g), dim=0)
        sd[f"queue_ptr{sfx}"] = torch.tensor([ptr])
    return sd


def official_student_state(fused=False, seed=1):
    """State dict of the official teacher-student model (pretrain=True, teacher_student=True)."""
    g = torch.Generator().manual_seed(seed)
    G = 3 if fused else 6
    sd = {}
    for sfx in SFX6[:G]:
        sd.update(official_encoder_state(f"encoder_q{sfx}.", 3, H, HD, ("mlp", HD, FD), g))
        sd[f"queue{sfx}"] = F.normalize(torch.randn(FD, K, generator=g), dim=0)
        sd[f"queue_ptr{sfx}"] = torch.tensor([4])
    students = {"encoder_student.": 9} if fused else {f"encoder_student_{l}.": 3 for l in "jmb"}
    for prefix, cin in students.items():
        sd.update(official_encoder_state(prefix, cin, H, HD, ("mlp", G * FD, G * FD), g))
    sd["queue_teacher"] = F.normalize(torch.randn(G * FD, K, generator=g), dim=0)
    sd["queue_ptr_teacher"] = torch.tensor([4])
    return sd


def test_ikem6_checkpoint_loads_completely():
    sd = official_ikem_state()
    m = build("ikem6", **TINY)
    report = load_official_checkpoint(sd, m)
    assert report.missing == [] and report.ignored == []
    assert m.queues.ptr == 8 and isinstance(m.queues.ptr, int)
    for g, sfx in enumerate(SFX6):
        torch.testing.assert_close(m.queues.queue[g], sd[f"queue{sfx}"])
        torch.testing.assert_close(m.encoders_k[g].st_gcn_networks[9].tcn[2].weight,
                                   sd[f"encoder_k{sfx}.st_gcn_networks.9.tcn.2.weight"])
        torch.testing.assert_close(m.ikem_heads[g][2].weight, sd[f"mlp2{LET6[g]}.2.weight"])
        torch.testing.assert_close(m.encoders_q[g].edge_importance[3], sd[f"encoder_q{sfx}.edge_importance.3"])
    assert m.encoders_q[2].data_bn.num_batches_tracked.item() == 7


def test_converted_ikem6_matches_official_forward():
    """Same outputs as the official model: encoders and both phase losses, eval mode (no dropout,
    running BN statistics), recomputed from the official state dict with an independent forward."""
    sd = official_ikem_state()
    m = build("ikem6", **TINY)
    load_official_checkpoint(sd, m)
    m.eval()
    x1, x2 = skeleton(seed=3), skeleton(seed=4)
    xq, xk = modalities(x1, FRAMES), modalities(x2, FRAMES)   # (N, 6, 3, T, V, M)
    q, k, u = [], [], []
    for g, (sfx, let) in enumerate(zip(SFX6, LET6)):
        zq, hq = functional_stgcn(sd, f"encoder_q{sfx}.", xq[:, g])
        zk, _ = functional_stgcn(sd, f"encoder_k{sfx}.", xk[:, g])
        torch.testing.assert_close(m.encoders_q[g](xq[:, g])[0], zq, rtol=1e-4, atol=1e-5)
        q.append(nrm(zq))
        k.append(nrm(zk))
        u.append(nrm(F.linear(F.relu(F.linear(hq, sd[f"mlp2{let}.0.weight"], sd[f"mlp2{let}.0.bias"])),
                              sd[f"mlp2{let}.2.weight"], sd[f"mlp2{let}.2.bias"])))
    q, k, u = torch.stack(q), torch.stack(k), torch.stack(u)
    Q = torch.stack([sd[f"queue{s}"] for s in SFX6])
    out1 = m(x1, x2, FRAMES, phase=1)
    torch.testing.assert_close(out1["loss"], info_nce(q, k, Q).sum(), rtol=1e-4, atol=1e-4)
    out2 = m(x1, x2, FRAMES, phase=2)
    torch.testing.assert_close(out2["loss"], phase2_loss(q, u, k, Q, 0.07, 1), rtol=1e-4, atol=1e-4)


def test_pretrain_checkpoint_into_linear_eval_ignores_heads_keys_queues():
    sd = official_ikem_state()
    m = build("linear6", **TINY_LE)
    fc_before = m.encoders[0].fc.weight.clone()
    report = load_official_checkpoint(sd, m)
    # ignore_weights-style: key encoders, queues (prefix 'queue' also drops queue_ptr*), mlp2, MLP heads.
    assert any(k.startswith("encoder_k_omega.") for k in report.ignored)
    assert "queue_ptr_bone" in report.ignored and "mlp2o.2.bias" in report.ignored
    assert "encoder_q_motion.fc.0.weight" in report.ignored
    assert sorted(report.missing) == sorted(f"encoders.{i}.fc.{w}" for i in range(6) for w in ("weight", "bias"))
    assert torch.equal(m.encoders[0].fc.weight, fc_before)  # new linear head stays fresh
    x = skeleton(seed=5)
    xm = modalities(x, FRAMES)
    _, h = functional_stgcn(sd, "encoder_q_omega.", xm[:, 5])
    torch.testing.assert_close(m.encoders[5].backbone(xm[:, 5]), h, rtol=1e-4, atol=1e-5)


def test_linear_eval_checkpoint_gives_official_logits():
    g = torch.Generator().manual_seed(2)
    sd = {}
    for sfx in SFX6:
        sd.update(official_encoder_state(f"encoder_q{sfx}.", 3, H, HD, ("linear", 60), g))
    m = build("linear6", **TINY_LE)
    report = load_official_checkpoint(sd, m)
    assert report.missing == []
    x = skeleton(seed=6)
    xm = modalities(x, FRAMES)
    logits = [functional_stgcn(sd, f"encoder_q{sfx}.", xm[:, i])[0] for i, sfx in enumerate(SFX6)]
    torch.testing.assert_close(m(x, FRAMES, view="all"), torch.stack(logits).mean(0), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(m(x, FRAMES, view="omega"), logits[5], rtol=1e-4, atol=1e-5)


def test_pretrain_checkpoint_into_teacher_student():
    sd = official_ikem_state()
    m = build("student6to3", **TINY)
    student_before = m.students[1].fc[2].weight.clone()
    queue_before = m.queues.queue.clone()
    report = load_official_checkpoint(sd, m)
    torch.testing.assert_close(m.teacher[4].st_gcn_networks[0].gcn.conv.weight,
                               sd["encoder_q_rotation_axis.st_gcn_networks.0.gcn.conv.weight"])
    assert torch.equal(m.students[1].fc[2].weight, student_before)  # fresh students (§6.1)
    assert torch.equal(m.queues.queue, queue_before) and m.queues.ptr == 0  # queues re-initialised
    assert all(k.startswith(("students.", "queues.", "teacher_queue.")) for k in report.missing)


@pytest.mark.parametrize("fused", [False, True])
def test_teacher_student_checkpoint_round_trip_outputs(fused):
    sd = official_student_state(fused)
    m = build("student3to1" if fused else "student6to3", **TINY)
    report = load_official_checkpoint(sd, m)
    assert report.missing == [] and m.teacher_queue.ptr == 4
    m.eval()
    x1, x2 = skeleton(seed=7), skeleton(seed=8)
    G = 3 if fused else 6
    topo = "ntu25_crossclr" if fused else "ntu25"
    xq = modalities(x1, FRAMES, topology=topo, names=["joint", "motion", "bone", "acceleration", "rotation_axis",
                                                     "omega"][:G])
    xs = modalities(x2, FRAMES, ("joint", "motion", "bone"), topology=topo)
    tq = torch.stack([nrm(functional_stgcn(sd, f"encoder_q{sfx}.", xq[:, g])[0]) for g, sfx in enumerate(SFX6[:G])])
    if fused:
        s = nrm(functional_stgcn(sd, "encoder_student.", xs.flatten(1, 2))[0])[None]
    else:
        s = torch.stack([nrm(functional_stgcn(sd, f"encoder_student_{l}.", xs[:, i])[0]) for i, l in enumerate("jmb")])
    Q = torch.stack([sd[f"queue{sfx}"] for sfx in SFX6[:G]])
    ref = relational_distill_loss(tq, s, Q, sd["queue_teacher"])
    torch.testing.assert_close(m(x1, x2, FRAMES)["losses"], ref, rtol=1e-4, atol=1e-4)


def test_unmatched_and_mismatched_keys_fail_with_list():
    sd = official_ikem_state(G=3)
    sd["encoder_q_elbow.fc.weight"] = torch.zeros(1)
    sd["queue_acceleration"] = torch.zeros(FD, K)  # a 6-modality key in a 3-modality model
    with pytest.raises(ValueError) as err:
        load_official_checkpoint(sd, build("crossclr3", **TINY))
    msg = str(err.value)
    assert "2 unmatched" in msg and "encoder_q_elbow.fc.weight" in msg and "queue_acceleration" in msg
    sd = official_ikem_state(G=3)
    sd["mlp2j.0.weight"] = torch.zeros(5, 5)
    with pytest.raises(ValueError, match=r"shape mismatch.*mlp2j\.0\.weight"):
        load_official_checkpoint(sd, build("crossclr3", **TINY))


def test_missing_parts_strict_and_ignore_weights():
    sd = official_ikem_state(G=3)
    del sd["encoder_k_bone.st_gcn_networks.4.residual.1.running_var"]
    m = build("crossclr3", **TINY)
    with pytest.raises(ValueError, match=r"encoders_k\.2\.st_gcn_networks\.4\.residual\.1\.running_var"):
        load_official_checkpoint(sd, m)
    report = load_official_checkpoint(sd, m, strict=False)
    assert report.missing == ["encoders_k.2.st_gcn_networks.4.residual.1.running_var"]
    # Explicit ignore_weights (prefix match, as the official configs) drops parts on purpose.
    report = load_official_checkpoint(official_ikem_state(G=3), m, ignore_weights=["mlp2"], strict=False)
    assert len(report.ignored) == 12 and all(k.startswith("ikem_heads.") for k in report.missing)


def test_pointer_disagreement_and_file_with_module_prefix(tmp_path):
    sd = official_ikem_state(G=3)
    sd["queue_ptr_motion"] = torch.tensor([4])
    with pytest.raises(ValueError, match="pointers"):
        load_official_checkpoint(sd, build("crossclr3", **TINY))
    sd = official_ikem_state(G=3, ptr=K)
    with pytest.raises(ValueError, match=rf"pointer {K} for 'queues' is outside the queue \[0, {K}\)"):
        load_official_checkpoint(sd, build("crossclr3", **TINY))
    sd = official_ikem_state(G=3, ptr=12)
    path = tmp_path / "epoch150_model.pt"
    torch.save({"state_dict": {"module." + k: v for k, v in sd.items()}}, path)
    m = build("crossclr3", **TINY)
    load_official_checkpoint(str(path), m)
    assert m.queues.ptr == 12
    torch.testing.assert_close(m.queues.queue[1], sd["queue_motion"])


def test_export_round_trip():
    m = build("ikem6", **TINY)
    m.queues.ptr = 12
    off = to_official_state_dict(m)
    assert off["queue_ptr_omega"].tolist() == [12] and off["queue_bone"].shape == (FD, K)
    assert set(off) == set(official_ikem_state())  # exactly the official key set
    m2 = build("ikem6", **TINY)
    load_official_checkpoint(off, m2)
    for (a, va), (b, vb) in zip(m.state_dict().items(), m2.state_dict().items()):
        assert a == b
        assert va == vb if not torch.is_tensor(va) else torch.equal(va, vb)
    shared = to_official_state_dict(build("crossclr3", shared_crossclr_heads=True, **TINY))
    assert "encoder_q_motion.fc.2.2.weight" in shared  # CrosSCLR-original nested head layout (§5.5)


def test_partial_distillation_checkpoint_is_refused():
    """Students and queues may stay fresh only when a *pretraining* checkpoint becomes the teacher
    (§6.1): a distillation checkpoint missing a student or a queue is an error, and so is a
    queue bank that got only some of its slots."""
    sd = official_student_state()
    del sd["queue_omega"]
    for k in [k for k in sd if k.startswith("encoder_student_b.")]:
        del sd[k]
    with pytest.raises(ValueError, match=r"unloaded: .*students\.2\..*queues\.queue"):
        load_official_checkpoint(sd, build("student6to3", **TINY))
    report = load_official_checkpoint(sd, build("student6to3", **TINY), strict=False)
    assert "queues.queue" in report.missing and any(k.startswith("students.2.") for k in report.missing)
    # a pretraining checkpoint whose queues are kept (not ignored) but one is missing: the bank
    # would be part loaded, part random
    sd = official_ikem_state()
    assert load_official_checkpoint(sd, build("student6to3", **TINY), ignore_weights=["encoder_k", "mlp2"]).loaded
    del sd["queue_motion"]
    with pytest.raises(ValueError, match=r"unloaded: queues\.queue"):
        load_official_checkpoint(sd, build("student6to3", **TINY), ignore_weights=["encoder_k", "mlp2"])
