"""Preprocessing of method.md §1.3: valid length, centring, cv2-linear resampling, y rotation."""
import numpy as np
import pytest

from skelfast.data.preprocess import (centre, linear_resample_weights, preprocess_sample, resize_time_linear,
                                      rotate_y, valid_length)


def ramp(L):
    """(1, L, 1, 1) sequence with x[t] = t^2 (non-linear, so wrong weights show)."""
    return (np.arange(L, dtype=np.float64) ** 2).reshape(1, L, 1, 1)


def test_resample_identity_at_50():
    np.testing.assert_allclose(resize_time_linear(ramp(50))[0, :, 0, 0], np.arange(50) ** 2)


def test_resample_downsample_by_two_hand_values():
    # L=100: s = (i+0.5)*2 - 0.5 = 2i + 0.5 -> mean of frames 2i and 2i+1
    out = resize_time_linear(ramp(100))[0, :, 0, 0]
    i = np.arange(50)
    np.testing.assert_allclose(out, 0.5 * ((2 * i) ** 2 + (2 * i + 1) ** 2))


def test_resample_upsample_hand_values():
    # L=25: s = (i+0.5)/2 - 0.5
    out = resize_time_linear(ramp(25))[0, :, 0, 0]
    assert out[0] == 0.0                                   # s = -0.25 clamped to 0
    assert out[1] == pytest.approx(0.75 * 0 + 0.25 * 1)    # s = 0.25
    assert out[2] == pytest.approx(0.25 * 0 + 0.75 * 1)    # s = 0.75
    assert out[48] == pytest.approx(0.25 * 23 ** 2 + 0.75 * 24 ** 2)   # s = 23.75
    assert out[49] == pytest.approx(24 ** 2)               # s = 24.25, i0 = L-1 -> w = 0


def test_resample_short_sequences():
    out3 = resize_time_linear(ramp(3))[0, :, 0, 0]         # s = (i+0.5)*0.06 - 0.5
    assert out3[0] == 0.0
    assert out3[25] == pytest.approx(0.97 * 1 + 0.03 * 4)  # s = 1.03
    assert out3[49] == 4.0                                 # s = 2.47 >= L-1
    np.testing.assert_array_equal(resize_time_linear(ramp(1) + 7)[0, :, 0, 0], np.full(50, 7.0))
    with pytest.raises(ValueError, match="length 0"):
        linear_resample_weights(0)


def test_resample_weights_are_in_range_and_monotone():
    for L in (1, 2, 7, 37, 49, 51, 123, 300):
        i0, i1, w = linear_resample_weights(L)
        assert ((0 <= i0) & (i0 <= i1) & (i1 < L)).all() and ((0 <= w) & (w < 1)).all()
        assert (np.diff(i0 + w) >= 0).all()                # monotone source position


def test_valid_length_and_leading_window():
    x = np.random.default_rng(0).normal(size=(3, 6, 25, 2))
    x[:, 2, 0, 0] = 0.0          # a gap in the middle of person 0's joint 0
    x[:, 5] = 0.0                # an empty trailing frame
    assert valid_length(x) == 4
    # §1.3: the code takes the first L frames (gap included, frame 4 dropped)
    expected = rotate_y(resize_time_linear(centre(x.astype(np.float32).astype(np.float64))[:, :4]))
    np.testing.assert_allclose(preprocess_sample(x), expected.astype(np.float32), rtol=1e-6, atol=1e-6)


def test_centring_on_joint_21_keeps_empty_frames_zero():
    x = np.random.default_rng(1).normal(size=(3, 4, 25, 2))
    x[:, 1, :, 1] = 0.0
    c = centre(x)
    assert not c[:, :, 20].any()
    assert not c[:, 1, :, 1].any()
    np.testing.assert_allclose(c[:, :, 3, 0], x[:, :, 3, 0] - x[:, :, 20, 0])


def _shoulders(angles, r=0.35):
    """(3, T, 25, 2) with person 0's right-minus-left shoulder u_t = r (cos a, 0.1, sin a)."""
    T = len(angles)
    x = np.zeros((3, T, 25, 2))
    rng = np.random.default_rng(2)
    x[:, :, :, 0] = rng.normal(size=(3, T, 25))
    u = r * np.stack([np.cos(angles), np.full(T, 0.1), np.sin(angles)])
    x[:, :, 8, 0] = x[:, :, 4, 0] + u
    return x


def test_rotation_puts_shoulder_line_on_plus_x_when_signs_agree():
    angles = np.linspace(0.4, 2.7, 50)                     # u.z > 0 in every frame, so S > 0
    x = _shoulders(angles)
    y = rotate_y(x)
    u = y[:, :, 8, 0] - y[:, :, 4, 0]
    np.testing.assert_allclose(u[2], 0.0, atol=2e-3)
    assert (u[0] > 0).all()
    np.testing.assert_allclose(u[0], 0.35, rtol=1e-2)
    np.testing.assert_array_equal(y[1], x[1])             # y untouched
    # a rotation about y preserves every joint's xz radius
    np.testing.assert_allclose(np.hypot(y[0], y[2]), np.hypot(x[0], x[2]), rtol=1e-9, atol=1e-12)


def test_rotation_sign_rule_one_decision_per_sequence():
    # most frames have u.z > 0 (S > 0, theta = -alpha); frame 0 has u.z < 0 and lands at 2*alpha
    angles = np.full(50, 0.8)
    angles[0] = -0.6
    y = rotate_y(_shoulders(angles))
    u = y[:, :, 8, 0] - y[:, :, 4, 0]
    np.testing.assert_allclose(u[2, 1:], 0.0, atol=2e-3)
    assert (u[0, 1:] > 0).all()                          # onto +x, not -x
    got = np.arctan2(-u[2, 0], u[0, 0])
    assert got == pytest.approx(2 * 0.6, abs=2e-3)
    # flipping every z flips S: now theta = +alpha and the frames map to +x again
    y2 = rotate_y(_shoulders(-angles))
    u2 = y2[:, :, 8, 0] - y2[:, :, 4, 0]
    np.testing.assert_allclose(u2[2, 1:], 0.0, atol=2e-3)
    assert (u2[0, 1:] > 0).all()


def test_rotation_leaves_absent_person_zero():
    x = _shoulders(np.full(10, 0.5))
    assert not rotate_y(x)[..., 1].any()


def test_preprocess_sample_shapes_and_errors():
    raw = np.random.default_rng(3).normal(size=(3, 73, 25, 2))
    out = preprocess_sample(raw)
    assert out.shape == (3, 50, 25, 2) and out.dtype == np.float32
    assert np.abs(out[:, :, 20]).max() < 1e-6            # joint 21 is the origin after centring (rotation fixes it)
    with pytest.raises(ValueError, match="S001C001P001R001A001.skeleton.*L = 0"):
        preprocess_sample(np.zeros((3, 5, 25, 2)), name="S001C001P001R001A001.skeleton")


def test_both_persons_use_person_0_valid_length():
    # §1.3 step 4: person 1 is resampled over person 0's L even if it is present for longer
    x = np.random.default_rng(4).normal(size=(3, 40, 25, 2))
    x[:, 20:, :, 0] = 0.0                     # person 0 leaves after 20 frames, person 1 stays
    out = preprocess_sample(x)
    expected = rotate_y(resize_time_linear(centre(x.astype(np.float32).astype(np.float64))[:, :20]))
    np.testing.assert_allclose(out[..., 1], expected[..., 1].astype(np.float32), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("bad", [np.nan, np.inf, 1e39])   # 1e39 overflows the float32 rounding
def test_preprocess_sample_rejects_non_finite_input(bad):
    raw = np.zeros((3, 10, 25, 2))
    raw[:, :, 0, 0] = 1.0
    raw[2, 7, 8, 0] = bad       # one value; through the rotation sign it would reach every frame (§1.3 step 5)
    with pytest.raises(ValueError, match="S001: non-finite value .* coordinate z of frame 7 joint 8 body 0"):
        preprocess_sample(raw, name="S001")
