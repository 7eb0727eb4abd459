"""Feeders of method.md §1.4 over a prepared synthetic folder (synthetic -> prepare -> feeder round trip)."""
import os
import pickle

import numpy as np
import pytest
import torch

from skelfast.data import EvalFeeder, PretrainFeeder, batched_two_views
from skelfast.data.augment import augment_sample


def test_round_trip_eval_feeder_returns_prepared_data(tiny_synthetic):
    out, _ = tiny_synthetic
    ds = EvalFeeder.from_prepared(out, "val")
    data = np.load(os.path.join(out, "val_data.npy"))
    names, labels, frames = pickle.load(open(os.path.join(out, "val_label.pkl"), "rb"))
    assert len(ds) == len(data) == len(labels) > 0
    x, y, f = ds[0]
    np.testing.assert_array_equal(x, data[0])                 # no augmentation in evaluation (§2 table)
    assert (y, f) == (labels[0], frames[0]) and 30 <= f <= 300
    assert x.dtype == np.float32 and x.shape == (3, 50, 25, 2)


def test_pretrain_feeder_two_independent_views(tiny_synthetic):
    out, _ = tiny_synthetic
    ds = PretrainFeeder.from_prepared(out, "train", seed=1)
    (v1, v2), y, f = ds[3]
    assert v1.shape == v2.shape == (3, 50, 25, 2) and v1.dtype == np.float32
    assert not np.allclose(v1, v2)
    # reproducible: same (seed, epoch, index) -> same views; the views follow augment_sample's stream
    (w1, w2), _, _ = ds[3]
    np.testing.assert_array_equal(v1, w1)
    rng = np.random.default_rng([1, 0, 3])
    np.testing.assert_array_equal(v1, augment_sample(np.asarray(ds.data[3]), rng))
    ds.set_epoch(1)
    assert not np.allclose(ds[3][0][0], v1)


def test_true_timeline_flag(tiny_synthetic):
    out, _ = tiny_synthetic
    frames = pickle.load(open(os.path.join(out, "train_label.pkl"), "rb"))[2]
    on = PretrainFeeder.from_prepared(out, "train", true_timeline=True)
    off = PretrainFeeder.from_prepared(out, "train", true_timeline=False)
    assert [on[i][2] for i in range(len(on))] == frames
    assert {off[i][2] for i in range(len(off))} == {50}        # time scale 50/F = 1 (§3.1)


def test_unaugmented_mode_with_device_batched_views(tiny_synthetic):
    out, _ = tiny_synthetic
    ds = PretrainFeeder.from_prepared(out, "train", augment=False)
    loader = torch.utils.data.DataLoader(ds, batch_size=4, shuffle=False)
    x, y, f = next(iter(loader))
    assert x.shape == (4, 3, 50, 25, 2) and y.dtype == torch.int64 and f.shape == (4,)
    torch.testing.assert_close(x, torch.from_numpy(np.array(ds.data[:4])))
    v1, v2 = batched_two_views(x, torch.Generator().manual_seed(0))
    assert v1.shape == x.shape and not torch.equal(v1, v2)


def test_dataloader_collates_views(tiny_synthetic):
    out, _ = tiny_synthetic
    loader = torch.utils.data.DataLoader(PretrainFeeder.from_prepared(out, "train"), batch_size=5, drop_last=True)
    (q, k), y, f = next(iter(loader))
    assert q.shape == k.shape == (5, 3, 50, 25, 2) and q.dtype == torch.float32


def test_label_data_count_mismatch_names_both_files(tiny_synthetic, tmp_path):
    out, _ = tiny_synthetic
    names, labels, frames = pickle.load(open(os.path.join(out, "val_label.pkl"), "rb"))
    bad = tmp_path / "val_label.pkl"
    bad.write_bytes(pickle.dumps((names[:-1], labels[:-1], frames[:-1])))
    with pytest.raises(ValueError, match=r"val_label.pkl has \d+ labels but .*val_data.npy has \d+ samples"):
        EvalFeeder(os.path.join(out, "val_data.npy"), str(bad))


@pytest.mark.parametrize("field, value, message", [
    (1, -1, "labels must be integers >= 0"), (1, 0.9, "labels must be integers >= 0"),
    (2, 0, "frame counts must be integers >= 1"), (2, 30.7, "frame counts must be integers >= 1"),
    (2, "30", "frame counts must be integers >= 1"),
])
def test_hand_made_label_values_are_checked(tiny_synthetic, tmp_path, field, value, message):
    """They were accepted: 30.7 truncated to 30, "30" parsed, a frame count of 0 failed later in the
    modalities op, a label of -1 indexed the last class."""
    out, _ = tiny_synthetic
    parts = [list(p) for p in pickle.load(open(os.path.join(out, "val_label.pkl"), "rb"))]
    parts[field][0] = value
    bad = tmp_path / "val_label.pkl"
    bad.write_bytes(pickle.dumps(tuple(parts)))
    with pytest.raises(ValueError, match=f"val_label.pkl: {message}"):
        EvalFeeder(os.path.join(out, "val_data.npy"), str(bad))


def test_crossclr_two_tuple_labels_need_true_timeline_off(tiny_synthetic, tmp_path):
    out, _ = tiny_synthetic
    names, labels, _ = pickle.load(open(os.path.join(out, "val_label.pkl"), "rb"))
    two = tmp_path / "val_label.pkl"
    two.write_bytes(pickle.dumps((names, labels)))
    data = os.path.join(out, "val_data.npy")
    with pytest.raises(ValueError, match="no frame counts"):
        EvalFeeder(data, str(two))
    assert EvalFeeder(data, str(two), true_timeline=False)[0][2] == 50


def test_json_labels_equal_pickle(tiny_synthetic):
    out, _ = tiny_synthetic
    a = EvalFeeder(os.path.join(out, "val_data.npy"), os.path.join(out, "val_label.pkl"))
    b = EvalFeeder(os.path.join(out, "val_data.npy"), os.path.join(out, "val_label.json"))
    assert a.sample_name == b.sample_name and a.label == b.label and (a.frame == b.frame).all()


def test_augmentation_does_not_depend_on_dataloader_workers(tiny_synthetic):
    out, _ = tiny_synthetic
    ds = PretrainFeeder.from_prepared(out, "train", seed=5)
    ds.set_epoch(2)
    batches = []
    for workers in (0, 2):
        loader = torch.utils.data.DataLoader(ds, batch_size=6, num_workers=workers)
        (q, k), _, _ = next(iter(loader))
        batches.append((q, k))
    assert torch.equal(batches[0][0], batches[1][0]) and torch.equal(batches[0][1], batches[1][1])


def test_feeders_reject_a_crop_ratio_giving_p_above_T(tiny_synthetic):
    out, _ = tiny_synthetic
    with pytest.raises(ValueError, match="temporal_padding_ratio = 0.8 gives temporal padding p = .* = 62 > T = 50"):
        PretrainFeeder.from_prepared(out, "train", temporal_padding_ratio=0.8)
    with pytest.raises(ValueError, match="temporal_padding_ratio = 0.7"):
        EvalFeeder.from_prepared(out, "val", temporal_padding_ratio=0.7)


def test_set_epoch_reaches_persistent_workers(tiny_synthetic):
    # persistent workers keep their copy of the dataset across epochs; the epoch must still reach them
    out, _ = tiny_synthetic
    ds = PretrainFeeder.from_prepared(out, "train", seed=2)
    loader = torch.utils.data.DataLoader(ds, batch_size=8, num_workers=1, persistent_workers=True)
    for epoch in (0, 1, 2):
        ds.set_epoch(epoch)
        got = [q for (q, k), _, _ in loader]                   # a whole epoch through the same worker
        expect = [ds[i][0][0] for i in range(len(ds))]         # in-process views of this epoch
        np.testing.assert_array_equal(torch.cat(got).numpy(), np.stack(expect))
    del loader


def test_feeder_pickles_and_copies_with_its_epoch(tiny_synthetic):
    import copy

    out, _ = tiny_synthetic
    ds = PretrainFeeder.from_prepared(out, "train", seed=2)
    ds.set_epoch(3)
    for other in (pickle.loads(pickle.dumps(ds)), copy.deepcopy(ds)):
        assert other.epoch == 3
        np.testing.assert_array_equal(other[1][0][0], ds[1][0][0])
        other.set_epoch(4)                                     # a copy is independent of the original
        assert ds.epoch == 3 and other.epoch == 4
