"""MoCo machinery (method.md §5.1): momentum update, queues, key-encoder locks (§5.4, §11 #2, #4)."""
import pytest
import torch

from skelfast.reference import build
from skelfast.reference.moco import QueueBank, enqueue_, init_queue, momentum_update_

from _ref_helpers import TINY, skeleton


def test_momentum_update_formula_and_single_multi_tensor_call(monkeypatch):
    g = torch.Generator().manual_seed(0)
    keys = [torch.randn(3, 4, generator=g), torch.randn(5, generator=g)]
    queries = [torch.randn(3, 4, generator=g), torch.randn(5, generator=g)]
    expected = [0.999 * k + 0.001 * q for k, q in zip(keys, queries)]
    calls = []
    real = torch._foreach_mul_
    monkeypatch.setattr(torch, "_foreach_mul_", lambda *a, **kw: (calls.append(len(a[0])), real(*a, **kw))[1])
    momentum_update_(keys, queries, 0.999)
    assert calls == [2]  # one multi-tensor call over all tensors, no per-parameter loop (§9.3)
    for k, e in zip(keys, expected):
        torch.testing.assert_close(k, e)
    with pytest.raises(ValueError):
        momentum_update_(keys, queries[:1], 0.9)
    before = [k.clone() for k in keys]
    for m in (-0.5, 1.5, float("nan")):          # nan turned every key weight into NaN
        with pytest.raises(ValueError, match="m must be in"):
            momentum_update_(keys, queries, m)
    assert all(torch.equal(k, b) for k, b in zip(keys, before))


def test_enqueue_writes_columns_and_wraps():
    queue = torch.zeros(2, 3, 8)
    keys = torch.arange(2 * 4 * 3, dtype=torch.float32).view(2, 4, 3)
    ptr = enqueue_(queue, keys, 4)
    assert ptr == 0 and isinstance(ptr, int)  # (4 + 4) % 8
    torch.testing.assert_close(queue[:, :, 4:], keys.transpose(1, 2))
    assert torch.count_nonzero(queue[:, :, :4]) == 0
    with pytest.raises(ValueError, match="multiple of the batch size"):
        enqueue_(torch.zeros(3, 10), torch.zeros(4, 3), 0)  # K % N != 0 (§5.1)
    with pytest.raises(ValueError, match="runs past the queue size"):
        enqueue_(torch.zeros(3, 8), torch.zeros(4, 3), 6)  # would run past the end
    with pytest.raises(ValueError, match="runs past the queue size"):
        enqueue_(torch.zeros(3, 8), torch.zeros(4, 3), -4)  # a negative pointer
    with pytest.raises(ValueError, match="N=0"):
        enqueue_(torch.zeros(3, 8), torch.zeros(0, 3), 0)   # was a ZeroDivisionError


def test_queue_bank_init_pointer_and_state_dict():
    bank = QueueBank(3, 5, 8)
    torch.testing.assert_close(bank.queue.norm(dim=1), torch.ones(3, 8))  # unit columns (§5.1)
    assert bank.enqueue_(torch.randn(3, 4, 5)) == 4 and bank.ptr == 4
    sd = bank.state_dict()
    other = QueueBank(3, 5, 8)
    other.load_state_dict(sd)
    assert other.ptr == 4 and torch.equal(other.queue, bank.queue)
    assert init_queue(2, 4, 6).shape == (2, 4, 6)


def _key_params(model, g):
    return [p.detach().clone() for p in model.encoders_k[g].parameters()]


def test_key_encoders_have_no_grad_and_independent_init():
    m = build("ikem6", **TINY)
    assert all(not p.requires_grad for p in m.encoders_k.parameters())
    assert all(p.requires_grad for p in m.encoders_q.parameters())
    # §11 #4 (official default): weights_init re-draws key encoders, so q != k at step 0.
    assert not torch.equal(m.encoders_q[0].st_gcn_networks[0].gcn.conv.weight,
                           m.encoders_k[0].st_gcn_networks[0].gcn.conv.weight)
    copied = build("ikem6", independent_key_init=False, **TINY)
    for pq, pk in zip(copied.encoders_q.parameters(), copied.encoders_k.parameters()):
        assert torch.equal(pq, pk)


@pytest.mark.parametrize("phase", [1, 2])
def test_momentum_update_and_locks_in_model(phase):
    m = build("ikem6", **TINY)
    assert m.lock == (True, False, True, False, True, False)  # 3lock: j, b, r (§5.4)
    before_k = [_key_params(m, g) for g in range(6)]
    q_params = [[p.detach().clone() for p in m.encoders_q[g].parameters()] for g in range(6)]
    m(skeleton(), skeleton(seed=1), torch.tensor([30, 50, 70, 90]), phase=phase)
    for g in range(6):
        after = list(m.encoders_k[g].parameters())
        updated = phase == 1 or not m.lock[g]
        for b, a, q in zip(before_k[g], after, q_params[g]):
            expected = 0.999 * b + 0.001 * q if updated else b
            torch.testing.assert_close(a.detach(), expected)


def test_lock_flags_are_configurable():
    assert build("crossclr3", **TINY).lock == (True, False, True)  # CrosSCLR: only motion updated
    assert build("ikem6", lock_keys=(), **TINY).lock == (False,) * 6
    m = build("ikem6", lock_keys=("omega",), **TINY)
    assert m.lock == (False,) * 5 + (True,)
    assert m.unlocked(2) == (0, 1, 2, 3, 4) and m.unlocked(1) == tuple(range(6))
    with pytest.raises(ValueError, match="unknown modality"):
        build("ikem6", lock_keys=("elbow",), **TINY)
    with pytest.raises(ValueError, match=r"\['acceleration'\] that this model does not have"):
        build("crossclr3", lock_keys=("joint", "acceleration"), **TINY)   # would lock nothing for it


def test_eval_mode_neither_updates_keys_nor_enqueues():
    m = build("crossclr3", **TINY).eval()
    before = _key_params(m, 1)
    queue = m.queues.queue.clone()
    m(skeleton(), skeleton(seed=1), phase=1)
    assert all(torch.equal(b, a) for b, a in zip(before, m.encoders_k[1].parameters()))
    assert torch.equal(queue, m.queues.queue) and m.queues.ptr == 0
