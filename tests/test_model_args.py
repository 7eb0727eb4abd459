"""Bad constructor arguments of the public model API are refused where they are given, naming the
argument, and before any state changes (a model/nn bad-input fuzz found each of these accepted,
failing deep inside a BatchNorm or mid-forward, or silently wrong)."""
import copy
import math
import re

import pytest
import torch

from skelfast.models import build, load_official_checkpoint, read_state_dict
from skelfast.nn import BatchedSTGCN, StackedEncoders
from skelfast.reference.stgcn import STGCN
from skelfast.topology import Topology

from _common import make_skeleton

TINY = dict(hidden_channels=4, hidden_dim=8, feature_dim=4, queue_size=8, dropout=0.0)


@pytest.mark.parametrize("kwargs, message", [
    ({"hidden_channels": 0}, "hidden_channels must be an integer >= 1"),
    ({"hidden_dim": -1}, "hidden_dim must be an integer >= 1"),
    ({"in_channels": 0}, "in_channels must be an integer >= 1"),
    ({"feature_dim": 0}, "feature_dim must be an integer >= 1"),        # built (G, N, 0) features
    ({"hidden_channels": 4.5}, "hidden_channels must be an integer"),
    ({"hidden_channels": True}, "hidden_channels must be an integer"),
    ({"dropout": float("nan")}, "dropout must be a probability in [0, 1)"),   # one path skipped it
    ({"dropout": 1.0}, "dropout must be a probability in [0, 1)"),
])
@pytest.mark.parametrize("make", [lambda **k: STGCN(**k), lambda **k: BatchedSTGCN(2, **k),
                                  lambda **k: StackedEncoders.build(2, **k)], ids=["STGCN", "BatchedSTGCN", "Stacked"])
def test_encoder_sizes_refused_at_construction(make, kwargs, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        make(**{"hidden_channels": 4, "hidden_dim": 8, "feature_dim": 4, **kwargs})


def test_batched_encoder_count_and_adjacency_checked():
    for G in (0, True, 2.0):
        with pytest.raises(ValueError, match="num_models must be an integer >= 1"):
            BatchedSTGCN(G, hidden_channels=4, hidden_dim=8)
    with pytest.raises(ValueError, match=r"must be \(K, V, V\)"):
        BatchedSTGCN(2, hidden_channels=4, hidden_dim=8, topology=torch.ones(25, 25))


@pytest.mark.parametrize("backend", ["skelfast", "reference"])
@pytest.mark.parametrize("kwargs, message", [
    ({"tau": -0.07}, "tau must be a finite number > 0"),       # the reference returned a plausible loss
    ({"tau": 0.0}, "tau must be a finite number > 0"),
    ({"tau": math.inf}, "tau must be a finite number > 0"),
    ({"topk": 0}, "topk must be an integer >= 1"),
    ({"topk": 100}, "mines more positives than the queue holds"),
    ({"queue_size": -8}, "queue_size must be an integer >= 1"),
    ({"momentum": 1.5}, r"momentum must be in \[0, 1\]"),
    ({"modalities": "joint"}, "got the string 'joint'"),
    ({"modalities": ()}, "one or more distinct names"),
])
def test_contrastive_settings_refused_at_construction(backend, kwargs, message):
    with pytest.raises(ValueError, match=message):
        build("crossclr3", backend, **{**TINY, **kwargs})


def test_build_names_a_bad_name_or_parity():
    with pytest.raises(ValueError, match=r"unknown model \['ikem6'\]"):
        build(["ikem6"])
    with pytest.raises(TypeError, match="parity must be a skelfast.reference.parity.Parity"):
        build("crossclr3", "reference", parity="official", **TINY)


@pytest.mark.parametrize("backend", ["skelfast", "reference"])
@pytest.mark.parametrize("name", ["crossclr3", "student6to3"])
def test_batch_that_does_not_divide_the_queue_changes_nothing(backend, name):
    """It was refused by the enqueue at the end of forward, after the BatchNorm statistics and the
    key encoders' momentum update had run."""
    torch.manual_seed(0)
    model = build(name, backend, **{**TINY, "queue_size": 8}).train()
    before = copy.deepcopy(model.state_dict())
    x = make_skeleton(N=3, T=4)
    with pytest.raises(ValueError, match="does not divide queue_size=8"):
        model(x, x)
    after = model.state_dict()
    assert before.keys() == after.keys()
    for k, v in after.items():
        assert torch.equal(before[k], v) if isinstance(v, torch.Tensor) else before[k] == v, k


def test_official_loading_refuses_a_string_of_prefixes(tmp_path):
    """ignore_weights='encoder_k' was read letter by letter: every key starting with e, n, c, o, d,
    r, _ or k was dropped, the query encoders included, and the load reported success."""
    model = build("crossclr3", "reference", **TINY)
    with pytest.raises(TypeError, match=r"use \['encoder_k'\]"):
        load_official_checkpoint({}, model, ignore_weights="encoder_k", strict=False)
    (tmp_path / "text.pt").write_text("not a checkpoint")
    (tmp_path / "empty.pt").write_bytes(b"")
    for bad in ("text.pt", "empty.pt"):      # torch's errors (a KeyError '101', a bare EOFError) named no file
        with pytest.raises(ValueError, match=f"{bad}: cannot read as a torch checkpoint"):
            read_state_dict(str(tmp_path / bad))


@pytest.mark.parametrize("kwargs, message", [
    ({"edges": ((0.5, 1), (1, 2))}, "edges must hold integer joint indices"),   # truncated to (0, 1) before
    ({"edges": ((0, 1, 2),)}, "an edge is a pair of joints"),
    ({"center": 0.5}, "center must hold integer joint indices"),
    ({"num_joints": 3.0}, "num_joints must be an integer >= 1"),
])
def test_topology_fields_are_integers(kwargs, message):
    base = dict(name="t", num_joints=3, edges=((0, 1), (1, 2)), center=0, normal=None, bone_parent=(0, 0, 1),
                axis_partner=(0, 0, 1))
    with pytest.raises(ValueError, match=message):
        Topology(**{**base, **kwargs})


@pytest.mark.parametrize("amplitude", [float("nan"), float("inf")])
def test_non_finite_shear_refused(amplitude):
    """NaN silently disabled the shear; inf gave non-finite views (batched) or NumPy's overflow in a
    DataLoader worker (per sample)."""
    import numpy as np
    from skelfast.data.augment import augment_sample, batched_augment
    with pytest.raises(ValueError, match="shear_amplitude must be finite"):
        batched_augment(torch.randn(2, 3, 10, 25, 2), None, amplitude)
    with pytest.raises(ValueError, match="shear_amplitude must be finite"):
        augment_sample(np.zeros((3, 10, 25, 2), np.float32), np.random.default_rng(0), amplitude)
