"""Pretraining augmentations of method.md §2: temporal crop with reflect padding, then shear.

Layer: data. Two implementations with identical maths:

* per-sample CPU transforms on NumPy arrays (C, T, V, M) — `temporal_crop`, `shear`,
  `augment_sample` — used by the feeders' worker processes;
* one batched op on tensors (B, C, T, V, M) already on any device — `batched_augment` — a row
  gather over time (index_select) plus one batched 3x3 matmul, with per-sample random parameters drawn from a
  `torch.Generator`, so a GPU training step does not wait on CPU workers.

`apply_augment_params` takes explicit per-sample parameters (crop starts, shear matrices) so
both paths can be compared exactly. An augmentation runs only if its parameter is > 0 (§2).
The outputs are float32 (the official shear returns float64 and the processor casts to float32
on the GPU, method.md §1.4; computing in float32 directly differs by rounding only).
camera_view and motion_scale (§2) are off in every config and not implemented.
"""
from __future__ import annotations

import math
from typing import Optional, Tuple

import numpy as np
import torch

__all__ = ["check_shear", "crop_padding", "reflect_time_index", "temporal_crop", "shear_matrix", "shear",
           "augment_sample", "sample_augment_params", "apply_augment_params", "batched_augment", "batched_two_views"]


def crop_padding(T: int, ratio: float, name: str = "crop_ratio") -> int:
    """p = T // ratio (method.md §2; 50 // 6 = 8), or 0 if the crop is disabled (ratio <= 0).

    Raises ValueError naming `name` for a NaN ratio or one that gives p > T (0.5 < ratio < 1 for
    T = 50): the reflect padding of §2 mirrors each end once, so it needs p <= T, and beyond that the
    flat-row gather of `apply_augment_params` would read frames of neighbouring channels/samples.
    """
    if ratio != ratio:
        raise ValueError(f"{name} is NaN; use a ratio >= 1 for the temporal crop or <= 0 to disable it")
    p = int(T // ratio) if ratio > 0 else 0
    if p > T:
        raise ValueError(f"{name} = {ratio!r} gives temporal padding p = T // {name} = {p} > T = {T}; the reflect "
                         f"padding (method.md §2) needs p <= T: use a ratio >= 1, or <= 0 to disable the crop")
    return p


def reflect_time_index(start, T: int, p: int):
    """Source frame of output frame i = 0..T-1 for crop `start` (method.md §2):
    j = start + i; x[p-1-j] if j < p; x[j-p] if p <= j < p+T; x[2T+p-1-j] if j >= p+T.
    `start` may be an int, a NumPy array (B,) or a tensor (B,); the result has shape (..., T)."""
    if isinstance(start, torch.Tensor):
        j = start[..., None] + torch.arange(T, device=start.device)
        return torch.where(j < p, p - 1 - j, torch.where(j < p + T, j - p, 2 * T + p - 1 - j))
    j = np.asarray(start)[..., None] + np.arange(T)
    return np.where(j < p, p - 1 - j, np.where(j < p + T, j - p, 2 * T + p - 1 - j))


def temporal_crop(x: np.ndarray, ratio: float, rng: Optional[np.random.Generator] = None,
                  start: Optional[int] = None) -> np.ndarray:
    """method.md §2 `temperal_crop`: symmetric reflect-pad p = T//ratio frames on both ends, take T
    frames from `start` ~ U{0..2p}. x: (C, T, V, M) -> (C, T, V, M)."""
    T = x.shape[1]
    p = crop_padding(T, ratio)
    if p == 0:
        return x
    if start is None:
        start = int((rng or np.random.default_rng()).integers(0, 2 * p + 1))
    if not 0 <= start <= 2 * p:
        raise ValueError(f"crop start {start} outside [0, {2 * p}]")
    padded = np.pad(x, ((0, 0), (p, p), (0, 0), (0, 0)), mode="symmetric")   # edge frame repeated
    return padded[:, start:start + T]


def shear_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """S = [[1, a0, b0], [a1, 1, b1], [a2, b2, 1]] (method.md §2). a, b: (..., 3) -> (..., 3, 3)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    one = np.ones_like(a[..., 0])
    rows = [a[..., 0], b[..., 0], a[..., 1], b[..., 1], a[..., 2], b[..., 2]]
    return np.stack([one, rows[0], rows[1], rows[2], one, rows[3], rows[4], rows[5], one], -1).reshape(a.shape[:-1] + (3, 3))


def shear(x: np.ndarray, r: float, rng: Optional[np.random.Generator] = None,
          matrix: Optional[np.ndarray] = None) -> np.ndarray:
    """method.md §2 `shear`: x'_i = sum_c S[i, c] x_c with a0,a1,a2,b0,b1,b2 ~ U(-r, r) drawn in that order.
    x: (3, T, V, M) -> float32 (3, T, V, M)."""
    if matrix is None:
        if r <= 0:
            return x
        d = (rng or np.random.default_rng()).uniform(-r, r, 6)
        matrix = shear_matrix(d[:3], d[3:])
    return np.einsum("ic,ctvm->itvm", np.asarray(matrix, dtype=np.float32), x.astype(np.float32, copy=False))


def check_shear(amplitude: float, name: str = "shear_amplitude") -> float:
    """The shear amplitude r of §2 (<= 0 disables the shear); raises ValueError naming `name` for
    NaN (which silently disabled it) or inf (non-finite views, or NumPy's overflow in a worker)."""
    if not math.isfinite(amplitude):
        raise ValueError(f"{name} must be finite (<= 0 disables the shear), got {amplitude!r}")
    return amplitude


def augment_sample(x: np.ndarray, rng: np.random.Generator, shear_amplitude: float = 0.5,
                   crop_ratio: float = 6) -> np.ndarray:
    """`_aug` of method.md §2: temporal crop (if crop_ratio > 0), then shear (if shear_amplitude > 0).
    x: (3, T, V, M) -> float32 (3, T, V, M)."""
    if crop_padding(x.shape[1], crop_ratio) > 0:   # also rejects a bad ratio (NaN, p > T)
        x = temporal_crop(x, crop_ratio, rng)
    if check_shear(shear_amplitude) > 0:
        x = shear(x, shear_amplitude, rng)
    return np.ascontiguousarray(x, dtype=np.float32)


# ---------------------------------------------------------------- batched torch op

def sample_augment_params(batch: int, T: int, generator: Optional[torch.Generator] = None,
                          shear_amplitude: float = 0.5, crop_ratio: float = 6,
                          device: Optional[torch.device] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """Per-sample parameters: crop starts int64 (B,) ~ U{0..2p} and shear matrices float32 (B, 3, 3).

    Drawn on the generator's device (CPU if None) and moved to `device`. Disabled augmentations
    give start = p = 0 and identity matrices.
    """
    gdev = generator.device if generator is not None else torch.device("cpu")
    p = crop_padding(T, crop_ratio)
    starts = torch.randint(0, 2 * p + 1, (batch,), generator=generator, device=gdev)
    if check_shear(shear_amplitude) > 0:
        d = (torch.rand(batch, 6, generator=generator, device=gdev) * 2 - 1) * shear_amplitude
        one = torch.ones(batch, device=gdev)
        mats = torch.stack([one, d[:, 0], d[:, 3], d[:, 1], one, d[:, 4], d[:, 2], d[:, 5], one], 1).view(batch, 3, 3)
    else:
        mats = torch.eye(3, device=gdev).expand(batch, 3, 3).clone()
    if device is not None:
        starts = starts.to(device, non_blocking=True)
        mats = mats.to(device, non_blocking=True)
    return starts, mats


def apply_augment_params(x: torch.Tensor, starts: torch.Tensor, matrices: torch.Tensor,
                         crop_ratio: float = 6, source: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Crop (row gather over time with reflect indices) then shear (one batched 3x3 matmul).

    x: (B, 3, T, V, M) on any device; starts: int (N,); matrices: (N, 3, 3); source: int (N,), the
    sample of x that output n augments (default arange(B), N = B). Returns (N, 3, T, V, M) in x's
    dtype with out[n] = S_n · crop(x[source[n]], starts[n]) — the per-sample maths of method.md §2.
    """
    if x.dim() != 5 or x.shape[1] != 3:
        raise ValueError(f"x must be (B, 3, T, V, M), got {tuple(x.shape)}")
    B, C, T, V, M = x.shape
    src = torch.arange(B, device=x.device) if source is None else source.to(x.device, torch.int64)
    N = src.shape[0]
    if starts.shape != (N,) or matrices.shape != (N, 3, 3):
        raise ValueError(f"expected starts ({N},) and matrices ({N}, 3, 3), got {tuple(starts.shape)} and "
                         f"{tuple(matrices.shape)}")
    p = crop_padding(T, crop_ratio)
    if p > 0:
        # a start outside [0, 2p] gives source frames outside [0, T): the flat-row gather below
        # would read a neighbouring channel or sample without an error
        ok = ((starts >= 0) & (starts <= 2 * p)).all()
        if starts.device.type == "cpu":
            if not bool(ok):
                bad = starts[(starts < 0) | (starts > 2 * p)]
                raise ValueError(f"crop starts must lie in [0, {2 * p}] (T={T}, crop_ratio={crop_ratio}), "
                                 f"got {bad[:5].tolist()}")
        else:   # no host sync on the training path: an assertion on the device
            torch._assert_async(ok, f"crop starts must lie in [0, {2 * p}]")
    idx = (reflect_time_index(starts.to(x.device, torch.int64), T, p) if p > 0
           else torch.arange(T, device=x.device).expand(N, T))                        # (N, T)
    # crop = one row gather over the (B*C*T, V*M) view: whole V*M rows are copied, ~15x faster on
    # CPU than an element-wise torch.gather with an expanded index; `source` avoids copying x per view
    base = (src[:, None, None] * C + torch.arange(C, device=x.device)[None, :, None]) * T
    rows = (base + idx[:, None, :]).reshape(-1)                                        # (N*C*T,)
    y = x.reshape(B * C * T, V * M).index_select(0, rows)
    out = torch.bmm(matrices.to(device=x.device, dtype=x.dtype), y.view(N, C, T * V * M))
    return out.view(N, C, T, V, M)


def batched_augment(x: torch.Tensor, generator: Optional[torch.Generator] = None, shear: float = 0.5,
                    crop_ratio: float = 6, views: int = 1) -> torch.Tensor:
    """`views` independent augmented copies of a batch x (B, 3, T, V, M), per-sample random crop +
    shear (method.md §2). Returns (views*B, 3, T, V, M), view-major (rows v*B .. v*B+B-1 are view v).

    Runs on x's device with one gather and one batched matmul; random parameters come from
    `generator` (seeded => reproducible).
    """
    B, T = x.shape[0], x.shape[2]
    starts, mats = sample_augment_params(views * B, T, generator, shear, crop_ratio, device=x.device)
    if crop_ratio <= 0 and shear <= 0:
        return x.repeat(views, 1, 1, 1, 1)
    return apply_augment_params(x, starts, mats, crop_ratio, source=torch.arange(B, device=x.device).repeat(views))


def batched_two_views(x: torch.Tensor, generator: Optional[torch.Generator] = None, shear: float = 0.5,
                      crop_ratio: float = 6) -> Tuple[torch.Tensor, torch.Tensor]:
    """Two independent augmentations of every sample (Feeder_dual, method.md §1.4) in one op call.
    x: (B, 3, T, V, M) -> two (B, 3, T, V, M)."""
    both = batched_augment(x, generator, shear, crop_ratio, views=2)
    return both[: x.shape[0]], both[x.shape[0]:]
