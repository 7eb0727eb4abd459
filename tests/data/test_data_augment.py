"""Augmentations of method.md §2: per-sample NumPy transforms and the batched torch op agree."""
import numpy as np
import pytest
import torch

from skelfast.data.augment import (apply_augment_params, augment_sample, batched_augment, batched_two_views,
                                   crop_padding, reflect_time_index, sample_augment_params, shear, shear_matrix,
                                   temporal_crop)


def seq(T=50, seed=0):
    return np.random.default_rng(seed).normal(size=(3, T, 25, 2)).astype(np.float32)


def spec_crop(x, start, p):
    """method.md §2, written out: output frame i is padded frame j = start + i."""
    T = x.shape[1]
    out = []
    for i in range(T):
        j = start + i
        src = p - 1 - j if j < p else (j - p if j < p + T else 2 * T + p - 1 - j)
        out.append(x[:, src])
    return np.stack(out, 1)


def test_padding_is_8_for_ratio_6():
    assert crop_padding(50, 6) == 8 and crop_padding(50, -1) == 0


@pytest.mark.parametrize("start", [0, 3, 8, 13, 16])
def test_temporal_crop_matches_spec(start):
    x = seq()
    np.testing.assert_array_equal(temporal_crop(x, 6, start=start), spec_crop(x, start, 8))


def test_temporal_crop_edges_repeat_edge_frame():
    x = seq()
    y0 = temporal_crop(x, 6, start=0)                      # padded frames 0..7 = x[7..0]
    np.testing.assert_array_equal(y0[:, 7], x[:, 0])
    np.testing.assert_array_equal(y0[:, 8], x[:, 0])       # symmetric: x[0] appears twice
    y16 = temporal_crop(x, 6, start=16)                    # last output frame j = 65 -> x[107 - 65] = x[42]
    np.testing.assert_array_equal(y16[:, 49], x[:, 42])
    np.testing.assert_array_equal(y16[:, 41], x[:, 49])    # j = 57 -> x[j - p] = x[49]
    np.testing.assert_array_equal(y16[:, 42], x[:, 49])    # j = 58 -> x[107 - 58] = x[49] (edge repeated)
    with pytest.raises(ValueError, match="outside"):
        temporal_crop(x, 6, start=17)


def test_crop_start_is_uniform_over_0_to_16():
    rng = np.random.default_rng(0)
    x = np.broadcast_to(np.arange(50, dtype=np.float32)[None, :, None, None], (3, 50, 25, 2)).copy()
    starts = set()
    for _ in range(400):
        y = temporal_crop(x, 6, rng)
        starts.add(int(y[0, 25, 0, 0]) - 17)                 # output frame 25 is x[start + 25 - p], p = 8
    assert starts == set(range(17))


def test_shear_matrix_layout():
    S = shear_matrix([0.1, 0.2, 0.3], [0.4, 0.5, 0.6])
    np.testing.assert_allclose(S, [[1, 0.1, 0.4], [0.2, 1, 0.5], [0.3, 0.6, 1]])
    x = seq()
    y = shear(x, 0.5, matrix=S)
    np.testing.assert_allclose(y[1], 0.2 * x[0] + x[1] + 0.5 * x[2], rtol=1e-5, atol=1e-6)


def test_shear_draw_order_a_then_b():
    # six uniform(-r, r) draws: a0, a1, a2 then b0, b1, b2
    d = np.random.default_rng(5).uniform(-0.5, 0.5, 6)
    x = seq()
    np.testing.assert_allclose(shear(x, 0.5, np.random.default_rng(5)), shear(x, 0.5, matrix=shear_matrix(d[:3], d[3:])))


def test_batched_op_equals_per_sample_with_same_params():
    B, p = 7, 8
    xs = np.stack([seq(seed=s) for s in range(B)])
    g = torch.Generator().manual_seed(0)
    starts, mats = sample_augment_params(B, 50, g, 0.5, 6)
    assert starts.min() >= 0 and starts.max() <= 2 * p and mats.shape == (B, 3, 3)
    got = apply_augment_params(torch.from_numpy(xs), starts, mats, 6).numpy()
    for b in range(B):
        ref = shear(temporal_crop(xs[b], 6, start=int(starts[b])), 0.5, matrix=mats[b].numpy())
        np.testing.assert_allclose(got[b], ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("bad", [-1, 17])
def test_batched_op_rejects_crop_starts_out_of_range(bad):
    """A start outside [0, 2p] would make the flat-row gather read a neighbouring channel's frames."""
    x = torch.from_numpy(np.stack([seq(seed=s) for s in range(3)]))
    starts, mats = sample_augment_params(3, 50, torch.Generator().manual_seed(0), 0.5, 6)
    starts[1] = bad
    with pytest.raises(ValueError, match=r"crop starts must lie in \[0, 16\].*" + str(bad)):
        apply_augment_params(x, starts, mats, 6)
    starts[1] = 16   # the edges are valid
    starts[2] = 0
    apply_augment_params(x, starts, mats, 6)


def test_reflect_index_numpy_and_torch_agree():
    starts = np.arange(17)
    np.testing.assert_array_equal(reflect_time_index(torch.from_numpy(starts), 50, 8).numpy(),
                                  reflect_time_index(starts, 50, 8))


def test_batched_augment_is_seeded_and_per_sample():
    x = torch.from_numpy(np.stack([seq(seed=s) for s in range(6)]))
    a = batched_augment(x, torch.Generator().manual_seed(3))
    b = batched_augment(x, torch.Generator().manual_seed(3))
    c = batched_augment(x, torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and not torch.equal(a, c)
    v1, v2 = batched_two_views(x, torch.Generator().manual_seed(3))
    assert v1.shape == x.shape and not torch.allclose(v1, v2)   # independent views of the same sample


def test_batched_disabled_is_identity_and_keeps_dtype():
    x = torch.randn(4, 3, 50, 25, 2, dtype=torch.float64)
    y = batched_augment(x, torch.Generator().manual_seed(0), shear=-1, crop_ratio=-1)
    assert torch.equal(x, y)
    z = batched_augment(x, torch.Generator().manual_seed(0))
    assert z.dtype == torch.float64


def test_augment_sample_order_crop_then_shear():
    x = seq()
    rng_a, rng_b = np.random.default_rng(9), np.random.default_rng(9)
    y = augment_sample(x, rng_a)
    start = int(rng_b.integers(0, 17))
    d = rng_b.uniform(-0.5, 0.5, 6)
    ref = shear(temporal_crop(x, 6, start=start), 0.5, matrix=shear_matrix(d[:3], d[3:]))
    np.testing.assert_allclose(y, ref, rtol=1e-6)
    assert y.dtype == np.float32 and y.flags.c_contiguous


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_batched_op_on_cuda_matches_cpu():
    x = torch.randn(8, 3, 50, 25, 2)
    starts, mats = sample_augment_params(8, 50, torch.Generator().manual_seed(0))
    cpu = apply_augment_params(x, starts, mats)
    gpu = apply_augment_params(x.cuda(), starts.cuda(), mats.cuda()).cpu()
    torch.testing.assert_close(gpu, cpu)


def test_two_views_equal_per_sample_with_the_drawn_params():
    # batched_two_views = one op over 2B outputs whose source sample is b for rows b and B+b
    x = torch.from_numpy(np.stack([seq(seed=s) for s in range(5)]))
    v1, v2 = batched_two_views(x, torch.Generator().manual_seed(8))
    starts, mats = sample_augment_params(10, 50, torch.Generator().manual_seed(8))
    for n, v in enumerate(torch.cat([v1, v2])):
        ref = shear(temporal_crop(x[n % 5].numpy(), 6, start=int(starts[n])), 0.5, matrix=mats[n].numpy())
        np.testing.assert_allclose(v.numpy(), ref, rtol=1e-5, atol=1e-5)


def test_shear_only_and_crop_only():
    x = torch.from_numpy(np.stack([seq(seed=s) for s in range(3)]))
    starts, mats = sample_augment_params(3, 50, torch.Generator().manual_seed(1), shear_amplitude=-1)
    assert torch.equal(mats, torch.eye(3).expand(3, 3, 3))
    crop_only = apply_augment_params(x, starts, mats, 6)
    for b in range(3):
        np.testing.assert_allclose(crop_only[b].numpy(), temporal_crop(x[b].numpy(), 6, start=int(starts[b])))
    starts, mats = sample_augment_params(3, 50, torch.Generator().manual_seed(1), crop_ratio=-1)
    assert (starts == 0).all()
    shear_only = apply_augment_params(x, starts, mats, -1)
    for b in range(3):
        np.testing.assert_allclose(shear_only[b].numpy(), shear(x[b].numpy(), 0.5, matrix=mats[b].numpy()),
                                   rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("ratio", [0.9, 0.6, 0.51, float("nan")])
def test_crop_ratio_giving_p_above_T_is_rejected_in_every_path(ratio):
    # 0.5 < ratio < 1 gives p = T // ratio > T: the reflect indices of §2 are only valid for p <= T and the
    # flat-row gather would read frames of the neighbouring channel/sample instead of failing
    msg = "crop_ratio = .* > T = 50" if ratio == ratio else "crop_ratio is NaN"
    x = torch.from_numpy(np.stack([seq(seed=s) for s in range(2)]))
    with pytest.raises(ValueError, match=msg):
        temporal_crop(x[0].numpy(), ratio, start=0)
    with pytest.raises(ValueError, match=msg):
        augment_sample(x[0].numpy(), np.random.default_rng(0), crop_ratio=ratio)
    with pytest.raises(ValueError, match=msg):
        apply_augment_params(x, torch.zeros(2, dtype=torch.int64), torch.eye(3).repeat(2, 1, 1), ratio)
    with pytest.raises(ValueError, match=msg):
        sample_augment_params(2, 50, crop_ratio=ratio)
    with pytest.raises(ValueError, match=msg):
        batched_two_views(x, torch.Generator().manual_seed(0), crop_ratio=ratio)


def test_largest_valid_padding_p_equals_T_agrees_between_paths():
    # ratio 0.99: p = 50 // 0.99 = 50 = T, the edge of the valid range; torch gather == np.pad symmetric
    x = np.stack([seq(seed=s) for s in range(2)])
    assert crop_padding(50, 0.99) == 50 and crop_padding(50, 1) == 50
    starts = torch.tensor([0, 100])
    got = apply_augment_params(torch.from_numpy(x), starts, torch.eye(3).repeat(2, 1, 1), 0.99).numpy()
    for b in range(2):
        np.testing.assert_array_equal(got[b], temporal_crop(x[b], 0.99, start=int(starts[b])))
        np.testing.assert_array_equal(got[b], spec_crop(x[b], int(starts[b]), 50))
