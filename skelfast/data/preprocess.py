"""Per-sample preprocessing to 50 frames (method.md §1.3, `NTUMotionProcessor` with
data_type='relative', t_length=50, y_rotation=True, sampling='resize').

Layer: data (pure NumPy, no OpenCV: the cv2 INTER_LINEAR resize is re-implemented from its formula).

Steps, in order: valid length L of joint 0 / person 0 on the raw data; centre every person on
joint 21 (index 20) per frame; resample the first L frames to T=50 with cv2-equivalent linear
interpolation (both persons use person 0's L); rotate every frame about the y axis (one sign
decision per person per sequence). The unused `{part}_motion.npy` of §1.3 step 1 is not produced.
"""
from __future__ import annotations

import numpy as np

__all__ = ["valid_length", "centre", "resize_time_linear", "linear_resample_weights", "rotate_y",
           "preprocess_sample", "CENTER_JOINT", "LEFT_SHOULDER", "RIGHT_SHOULDER", "NUM_FRAMES"]

NUM_FRAMES = 50
CENTER_JOINT = 20      # joint 21, spine at shoulders (method.md §1.3 step 3)
LEFT_SHOULDER = 4      # joint 5
RIGHT_SHOULDER = 8     # joint 9


def valid_length(x: np.ndarray) -> int:
    """method.md §1.3 step 2: number of frames where joint 0 of person 0 has |x|+|y|+|z| != 0.

    x: (3, F, V, M) raw (uncentred). The official code assumes these are the leading frames and
    then slices x[:, :L]; we reproduce that (a gap in the middle shifts the window).
    """
    return int(np.count_nonzero(np.abs(x[:, :, 0, 0]).sum(axis=0) != 0))


def centre(x: np.ndarray) -> np.ndarray:
    """method.md §1.3 step 3: x[:, t, v, m] - x[:, t, 20, m]; all-zero frames stay zero. (3,F,V,M)."""
    return x - x[:, :, CENTER_JOINT:CENTER_JOINT + 1, :]


def linear_resample_weights(length: int, out_length: int = NUM_FRAMES):
    """cv2.resize INTER_LINEAR weights along one axis (method.md §1.3 step 4).

    For output i: s = (i+0.5)*L/out - 0.5 clamped at 0; i0 = floor(s), w = s - i0; if i0 >= L-1
    then i0 = L-1, w = 0; out[i] = (1-w)*x[i0] + w*x[min(i0+1, L-1)].
    Returns (i0, i1, w): int64 (out,), int64 (out,), float64 (out,).
    """
    if length < 1:
        raise ValueError(f"cannot resample a sequence of length {length} (cv2 would crash; method.md §1.3)")
    i = np.arange(out_length, dtype=np.float64)
    s = np.maximum((i + 0.5) * (length / out_length) - 0.5, 0.0)
    i0 = np.floor(s).astype(np.int64)
    w = s - i0
    past = i0 >= length - 1
    i0[past] = length - 1
    w[past] = 0.0
    i1 = np.minimum(i0 + 1, length - 1)
    return i0, i1, w


def resize_time_linear(x: np.ndarray, out_length: int = NUM_FRAMES) -> np.ndarray:
    """Resample axis 1 of x (C, L, ...) to out_length frames, cv2 INTER_LINEAR semantics."""
    i0, i1, w = linear_resample_weights(x.shape[1], out_length)
    shape = (1, out_length) + (1,) * (x.ndim - 2)
    w = w.reshape(shape)
    return (1.0 - w) * x[:, i0] + w * x[:, i1]


def rotate_y(x: np.ndarray) -> np.ndarray:
    """method.md §1.3 step 5 (`parallel_skeleton`), per person and per frame. x: (3, T, V, M).

    u_t = x[:, t, 8] - x[:, t, 4] with u.y := 0; alpha_t = arccos(u.x / (|u| + 1e-4));
    S = sum_t u_t.z per person; theta_t = -alpha_t if S >= 0 else +alpha_t;
    x' = cos(theta) x - sin(theta) z,  y' = y,  z' = sin(theta) x + cos(theta) z.
    """
    u = x[:, :, RIGHT_SHOULDER, :] - x[:, :, LEFT_SHOULDER, :]          # (3, T, M)
    ux, uz = u[0], u[2]
    norm = np.sqrt(ux * ux + uz * uz)                                    # y component zeroed
    alpha = np.arccos(np.clip(ux / (norm + 1e-4), -1.0, 1.0))           # (T, M)
    sign = np.where(uz.sum(axis=0) >= 0, -1.0, 1.0)                     # (M,) one decision per person
    theta = alpha * sign[None, :]
    c = np.cos(theta)[:, None, :]                                        # (T, 1, M)
    s = np.sin(theta)[:, None, :]
    out = np.empty_like(x)
    out[0] = c * x[0] - s * x[2]
    out[1] = x[1]
    out[2] = s * x[0] + c * x[2]
    return out


def preprocess_sample(raw: np.ndarray, out_length: int = NUM_FRAMES, name: str = "<sample>") -> np.ndarray:
    """Full method.md §1.3 pipeline for one sample.

    raw: (3, F, V, M) as read by `read_skeleton` (any float dtype; it is first rounded to float32
    because the official pipeline stores the gendata array as float32). Returns (3, out_length, V, M)
    float32. Raises ValueError naming `name` if `raw` holds nan/inf (one bad value would spread to
    every frame through the per-person rotation sign of step 5) or if person 0 never appears (L = 0).
    """
    with np.errstate(over="ignore"):   # a value beyond float32 becomes inf and is reported just below
        x = np.asarray(raw, dtype=np.float32).astype(np.float64)
    bad = ~np.isfinite(x)
    if bad.any():
        c, t, v, m = (int(i[0]) for i in np.nonzero(bad))
        raise ValueError(f"{name}: non-finite value {x[c, t, v, m]} at coordinate {'xyz'[c] if c < 3 else c} "
                         f"of frame {t} joint {v} body {m}; the input must be finite (as float32)")
    L = valid_length(x)
    if L == 0:
        raise ValueError(f"{name}: body slot 0 is empty in every frame (valid length L = 0), cannot resample "
                         "(method.md §1.3 step 4)")
    x = centre(x)[:, :L]
    x = resize_time_linear(x, out_length)
    x = rotate_y(x)
    return x.astype(np.float32)
