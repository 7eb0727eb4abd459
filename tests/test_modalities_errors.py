"""Bad input to modalities raises a ValueError/TypeError that names the problem (issue: foundation)."""
import numpy as np
import pytest
import torch

from skelfast import ops, reference
from skelfast.topology import Topology

from _common import make_skeleton, raises_kernel_error

IMPLS = [ops.modalities, reference.modalities]


@pytest.mark.parametrize("fn", IMPLS)
@pytest.mark.parametrize("make, kwargs, exc, match", [
    (lambda: torch.randn(2, 3, 5, 25), {}, ValueError, "rank 4"),
    (lambda: torch.randn(2, 2, 5, 25, 2), {}, ValueError, "C=3"),
    (lambda: torch.randn(2, 3, 5, 17, 2), {}, ValueError, "V=17"),
    (lambda: torch.randn(2, 3, 0, 25, 2), {}, ValueError, "at least one frame"),
    (lambda: torch.ones(2, 3, 5, 25, 2, dtype=torch.int64), {}, TypeError, "floating"),
    (lambda: torch.randn(2, 3, 5, 25, 2), {"frames": torch.tensor([30, 40, 50])}, ValueError, r"frames must have shape \(N,\)"),
    (lambda: torch.randn(2, 3, 5, 25, 2), {"frames": torch.tensor([30, 0])}, ValueError, "> 0"),
    (lambda: torch.randn(2, 3, 5, 25, 2), {"frames": torch.tensor([30.0, -2.0])}, ValueError, "> 0"),
    (lambda: torch.randn(2, 3, 5, 25, 2), {"frames": torch.tensor([True, True])}, TypeError, "frame counts"),
    (lambda: torch.randn(2, 3, 5, 25, 2), {"names": ("joint", "velocity")}, ValueError, "unknown modality name 'velocity'"),
    (lambda: torch.randn(2, 3, 5, 25, 2), {"names": ()}, ValueError, "at least one modality"),
    (lambda: torch.randn(2, 3, 5, 25, 2), {"names": None}, TypeError, "names must be a modality name"),
    (lambda: torch.randn(2, 3, 5, 25, 2), {"topology": "kinect"}, ValueError, "unknown topology 'kinect'"),
    (lambda: [[1.0]], {}, TypeError, "torch.Tensor"),
    (lambda: torch.randn(2, 3, 5, 25, 2), {"scale_base": float("inf")}, ValueError, "finite and > 0"),
], ids=["rank", "channels", "joints", "no-frames", "int-dtype", "frames-len", "frames-zero", "frames-neg",
        "frames-bool", "bad-name", "no-names", "names-none", "bad-topology", "not-tensor", "scale-base-inf"])
def test_bad_input(fn, make, kwargs, exc, match):
    with pytest.raises(exc, match=match):
        fn(make(), **kwargs)


def test_duplicate_names_rejected_by_fused_op():
    with pytest.raises(ValueError, match="twice"):
        ops.modalities(make_skeleton(N=1), names=("joint", "joint"))
    with pytest.raises(ValueError, match="twice"):   # the oracle has the op's signature and checks
        reference.modalities(make_skeleton(N=1), None, ("joint", "joint"))


def test_topology_tables_validated():
    with pytest.raises(ValueError, match="bone_parent has 3 entries"):
        Topology("t", 4, (0, 0, 1), (0, 0, 1, 2), (), 0)
    with pytest.raises(ValueError, match="out-of-range"):
        Topology("t", 3, (0, 0, 5), (0, 0, 1), (), 0)
    # a non-integer index is refused, not truncated to a joint (int(0.5) == 0)
    with pytest.raises(ValueError, match="bone_parent must hold integer joint indices, got 0.5"):
        Topology("t", 3, (0, 0.5, 1), (0, 0, 1), (), 0)
    with pytest.raises(ValueError, match="axis_partner must hold integer joint indices"):
        Topology.from_tables((0, 0, 1), (0, 1.0, 1))
    t = Topology.from_tables(np.arange(3), [np.int64(0), 0, 1])   # numpy integers are indices
    assert t.bone_parent == (0, 1, 2) and all(type(j) is int for j in t.axis_partner)


def test_op_level_checks_on_raw_schema():
    """The registered op checks its tables too (callers may bypass the Python wrapper)."""
    x = make_skeleton(N=1)
    with raises_kernel_error("topology index out of range"):
        torch.ops.skelfast.modalities(x, None, [0], [99] * 25, [0] * 25, [])
    with raises_kernel_error("listed twice"):
        torch.ops.skelfast.modalities(x, None, [0, 0], [0] * 25, [0] * 25, [])
