"""skelfast.reference.modalities vs values computed by hand (method.md §3.3, §3.4)."""
import math

import pytest
import torch

from skelfast import MODALITIES6, reference
from skelfast.topology import NTU25_CROSSCLR, NTU25_IKEM

NAMES = MODALITIES6
J, MO, B, AC, R, OM = range(6)


def tiny_skeleton(T=3):
    """NTU-25 input (1, 3, T, 25, 2): person 0 has a few placed joints, person 1 is absent.

    Joint 20 (spine at shoulders) is the origin; spine-middle 1 = (0,-1,0); right shoulder 8 =
    (1,0,0); left shoulder 4 = (-1, 0.1 t, 0); left elbow 5 = x4 + (cos(0.3t+0.5), sin(0.3t+0.5), 0);
    left wrist 6 = (0, 0, t^2) (for acceleration). All other joints stay at the origin.
    """
    x = torch.zeros(1, 3, T, 25, 2, dtype=torch.float64)
    for t in range(T):
        x[0, :, t, 1, 0] = torch.tensor([0.0, -1.0, 0.0])
        x[0, :, t, 8, 0] = torch.tensor([1.0, 0.0, 0.0])
        x[0, :, t, 4, 0] = torch.tensor([-1.0, 0.1 * t, 0.0])
        x[0, :, t, 5, 0] = x[0, :, t, 4, 0] + torch.tensor([math.cos(0.3 * t + 0.5), math.sin(0.3 * t + 0.5), 0.0])
        x[0, :, t, 6, 0] = torch.tensor([0.0, 0.0, float(t * t)])
    return x


def vec(y, mod, t, v, m=0):
    return y[0, mod, :, t, v, m]


def angle(a, b):
    """Angle between two vectors via acos (independent of the atan2 form in the code)."""
    return math.acos(max(-1.0, min(1.0, float(torch.dot(a, b) / (a.norm() * b.norm())))))


def test_every_modality_by_hand():
    x = tiny_skeleton(T=3)
    frames = torch.tensor([25])  # f = 50 / 25 = 2
    f = 2.0
    y = reference.modalities(x, frames)
    assert y.shape == (1, 6, 3, 3, 25, 2)

    # joint
    torch.testing.assert_close(vec(y, J, 1, 4), torch.tensor([-1.0, 0.1, 0.0], dtype=torch.float64))
    # motion: f (x[t+1] - x[t]); zero at the last frame
    torch.testing.assert_close(vec(y, MO, 0, 4), torch.tensor([0.0, f * 0.1, 0.0], dtype=torch.float64))
    assert torch.all(y[0, MO, :, 2] == 0)
    # acceleration: f^2 (x[t+2] - 2 x[t+1] + x[t]); wrist z = t^2 -> f^2 * 2; zero at T-2, T-1
    torch.testing.assert_close(vec(y, AC, 0, 6), torch.tensor([0.0, 0.0, f * f * 2.0], dtype=torch.float64))
    assert torch.all(y[0, AC, :, 1:] == 0)
    # bone: x[v] - x[P[v]]; P[5] = 4 (left elbow hangs from the left shoulder)
    torch.testing.assert_close(vec(y, B, 1, 5), torch.tensor([math.cos(0.8), math.sin(0.8), 0.0], dtype=torch.float64))
    # joint-21 normal: nrm((x1 - x8) x (x4 - x8)) at t = 0: (-1,-1,0) x (-2,0,0) = (0,0,-2) -> (0,0,-1)
    torch.testing.assert_close(vec(y, B, 0, 20), torch.tensor([0.0, 0.0, -1.0], dtype=torch.float64))
    # rotation axis R[4] = B[4] x B[A[4]=20] = (-1,0,0) x (0,0,-1) = (0,-1,0)
    torch.testing.assert_close(vec(y, R, 0, 4), torch.tensor([0.0, -1.0, 0.0], dtype=torch.float64))
    assert torch.all(y[0, R, :, :, 20] == 0)  # B[20] x B[20]
    # omega at v = 5 (partner A[5] = 4): f (theta[t+1] - theta[t]) nrm(R[t])
    b5 = [torch.tensor([math.cos(0.3 * t + 0.5), math.sin(0.3 * t + 0.5), 0.0], dtype=torch.float64) for t in range(3)]
    b4 = [torch.tensor([-1.0, 0.1 * t, 0.0], dtype=torch.float64) for t in range(3)]
    for t in range(2):
        axis = torch.linalg.cross(b5[t], b4[t])
        expected = f * (angle(b5[t + 1], b4[t + 1]) - angle(b5[t], b4[t])) * axis / axis.norm()
        torch.testing.assert_close(vec(y, OM, t, 5), expected)
    assert torch.all(y[0, OM, :, 2] == 0)


def test_absent_person_is_exact_zero_and_finite():
    y = reference.modalities(tiny_skeleton(), torch.tensor([40]))
    assert torch.all(y[..., 1] == 0)
    assert torch.isfinite(y).all()


def test_time_scale_none_means_one():
    x = tiny_skeleton()
    torch.testing.assert_close(reference.modalities(x, None), reference.modalities(x, torch.tensor([50])))


@pytest.mark.parametrize("T", [1, 2])
def test_short_sequences(T):
    x = tiny_skeleton(T)
    y = reference.modalities(x, torch.tensor([25]))
    assert y.shape[3] == T
    assert torch.all(y[0, [MO, AC, OM]][:, :, T - 1] == 0)
    assert torch.all(y[0, AC] == 0)  # acceleration needs t + 2 < T
    if T == 2:
        torch.testing.assert_close(vec(y, MO, 0, 4), torch.tensor([0.0, 0.2, 0.0], dtype=torch.float64))
    # frame-local modalities do not depend on T
    torch.testing.assert_close(y[0, [J, B, R], :, 0], reference.modalities(tiny_skeleton(3), torch.tensor([25]))[0, [J, B, R], :, 0])


def test_three_modality_variant():
    """method.md §3.4: list P3, no normal (B[20] = 0); hand tip 22 hangs from thumb 23."""
    x = tiny_skeleton()
    x[0, :, :, 21, 0] = torch.tensor([0.5, 0.5, 0.5]).view(3, 1)  # tip of left hand
    x[0, :, :, 22, 0] = torch.tensor([0.25, 0.0, 0.0]).view(3, 1)  # left thumb
    y = reference.modalities(x, None, ("joint", "motion", "bone"), topology="ntu25_crossclr")
    assert y.shape[1] == 3
    assert torch.all(y[0, 2, :, :, 20] == 0)
    torch.testing.assert_close(y[0, 2, :, 0, 21, 0], torch.tensor([0.25, 0.5, 0.5], dtype=torch.float64))
    # IKEM's list hangs tip 22 from the hand (joint 8, index 7, at the origin here)
    y6 = reference.modalities(x, None, ("bone",))
    torch.testing.assert_close(y6[0, 0, :, 0, 21, 0], torch.tensor([0.5, 0.5, 0.5], dtype=torch.float64))


def test_topology_tables_match_method_md():
    """method.md §3.2 lists, 0-based."""
    assert list(NTU25_IKEM.bone_parent) == [1, 20, 20, 2, 20, 4, 5, 6, 20, 8, 9, 10, 0, 12, 13, 14, 0, 16, 17, 18, 20, 7, 7, 11, 11]
    assert list(NTU25_IKEM.axis_partner) == [1, 20, 20, 2, 20, 4, 5, 6, 20, 8, 9, 10, 0, 12, 13, 14, 0, 16, 17, 18, 20, 7, 21, 11, 23]
    assert list(NTU25_CROSSCLR.bone_parent) == [1, 20, 20, 2, 20, 4, 5, 6, 20, 8, 9, 10, 0, 12, 13, 14, 0, 16, 17, 18, 20, 22, 7, 24, 11]


def test_selection_order_and_subset():
    x = tiny_skeleton()
    full = reference.modalities(x, torch.tensor([30]))
    sub = reference.modalities(x, torch.tensor([30]), ("omega", "joint"))
    torch.testing.assert_close(sub[:, 0], full[:, OM])
    torch.testing.assert_close(sub[:, 1], full[:, J])


def test_scale_is_float_not_truncated():
    """method.md §11 #6: 50 / F must never be integer division (F = 300 -> 1/6, not 0)."""
    x = tiny_skeleton()
    y = reference.modalities(x, torch.tensor([300]), ("motion",))
    torch.testing.assert_close(y[0, 0, :, 0, 4, 0], torch.tensor([0.0, 0.1 / 6, 0.0], dtype=torch.float64))
