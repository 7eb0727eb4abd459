"""Synthetic NTU-format dataset: real `.skeleton` files, NTU names/splits, determinism, learnability."""
import os
import pickle

import numpy as np
import pytest

from skelfast.data import synthetic
from skelfast.data.ntu import parse_sample_name
from skelfast.data.preparation import load_manifest, plan_samples
from skelfast.data.skeleton_reader import read_skeleton


@pytest.fixture(scope="module")
def small_raw(tmp_path_factory):
    raw = tmp_path_factory.mktemp("raw")
    paths = synthetic.generate(str(raw), num_classes=10, samples_per_class=9, seed=7)
    return str(raw), paths


def test_files_have_ntu_names_and_cover_every_benchmark(small_raw):
    raw, paths = small_raw
    assert len(paths) == 90
    samples = [parse_sample_name(os.path.basename(p)) for p in paths]
    assert {s.action for s in samples} == set(range(1, 11)) and {s.camera for s in samples} == {1, 2, 3}
    assert len({s.setup for s in samples}) > 1 and len({s.performer for s in samples}) > 5
    for bench in ("xsub", "xview", "xset"):
        plan = plan_samples(raw, "synthetic", bench)
        assert plan.names["train"] and plan.names["val"], bench
        assert plan.num_classes == 10


def test_lengths_bodies_and_reader(small_raw):
    _, paths = small_raw
    lengths, two_body = [], {}
    for p in paths:
        x = read_skeleton(p)
        lengths.append(x.shape[1])
        cls = parse_sample_name(os.path.basename(p)).action - 1
        two_body.setdefault(cls, []).append(np.abs(x[..., 1]).sum() > 0)
        assert np.abs(x[2, :, :, 0][x[2, :, :, 0] != 0]).min() > 1.0   # people stand > 1 m from the camera
    assert min(lengths) >= 30 and max(lengths) <= 300 and np.std(lengths) > 20
    assert all(two_body[8])                                   # class 8 is the two-person handshake
    assert np.mean([np.mean(v) for c, v in two_body.items() if c != 8]) < 0.5


def test_generation_is_deterministic(tmp_path):
    a = synthetic.generate(str(tmp_path / "a"), num_classes=3, samples_per_class=2, seed=11)
    b = synthetic.generate(str(tmp_path / "b"), num_classes=3, samples_per_class=2, seed=11)
    c = synthetic.generate(str(tmp_path / "c"), num_classes=3, samples_per_class=2, seed=12)
    assert [open(p).read() for p in a] == [open(p).read() for p in b]
    assert [open(p).read() for p in a] != [open(p).read() for p in c]
    assert synthetic.class_names(3) == ["wave right hand", "raise both arms", "bend forward"]
    with pytest.raises(ValueError, match="num_classes"):
        synthetic.generate(str(tmp_path / "d"), num_classes=1)
    assert synthetic.generate(str(tmp_path / "a"), num_classes=3, samples_per_class=2, seed=11) == a   # rerun: same set
    with pytest.raises(ValueError, match=r"already contains \d+ other .skeleton"):
        synthetic.generate(str(tmp_path / "a"), num_classes=3, samples_per_class=2, seed=99)


@pytest.mark.parametrize("kwargs, message", [
    ({"noise": float("nan")}, "noise must be a finite number >= 0"),     # wrote 'nan' coordinates
    ({"noise": float("inf")}, "noise must be a finite number >= 0"),
    ({"noise": -1.0}, "noise must be a finite number >= 0"),             # NumPy's 'scale < 0'
    ({"seed": -1}, "seed must be >= 0"),                                 # NumPy's 'expected non-negative integer'
])
def test_bad_settings_refused_before_writing(tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        synthetic.generate(str(tmp_path / "s"), num_classes=2, samples_per_class=2, **kwargs)
    assert not (tmp_path / "s").exists()


def test_stale_files_found_in_any_case(tmp_path):
    """prepare reads X.SKELETON too, so a stale upper-case file would join the dataset."""
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "S009C001P001R001A009.SKELETON").write_text("1\n0\n")
    with pytest.raises(ValueError, match=r"already contains 1 other .skeleton"):
        synthetic.generate(str(tmp_path / "s"), num_classes=2, samples_per_class=2)


def test_ensure_prepared_is_idempotent(tiny_synthetic):
    out, raw = tiny_synthetic
    root = os.path.dirname(os.path.dirname(out))
    stamp = os.path.getmtime(os.path.join(out, "manifest.json"))
    again = synthetic.ensure_prepared(root, num_classes=6, samples_per_class=8, seed=3, benchmark="xsub")
    assert again == out and os.path.getmtime(os.path.join(out, "manifest.json")) == stamp
    man = load_manifest(out)
    assert man["dataset"] == "synthetic" and man["num_classes"] == 6
    assert sum(s["count"] for s in man["splits"].values()) == 48


def test_prepared_synthetic_shoulders_face_plus_x(tiny_synthetic):
    # after the §1.3 y rotation the shoulder line lies along +x in (almost) every frame of person 0
    out, _ = tiny_synthetic
    x = np.load(os.path.join(out, "train_data.npy"))
    u = x[:, :, :, 8, 0] - x[:, :, :, 4, 0]                   # (N, 3, T)
    on_x = (u[:, 0] > 0) & (np.abs(u[:, 2]) < 0.05 * np.abs(u[:, 0]) + 1e-3)
    assert on_x.mean() > 0.9


def _ridge_probe(xt, yt, xv, yv, lam=100.0):
    """Linear probe: ridge regression on standardised flattened joints to centred one-hot targets,
    solved in the dual (n x n) form. Deterministic and fast (no iterative training)."""
    xt = xt.reshape(len(xt), -1).astype(np.float64)
    xv = xv.reshape(len(xv), -1).astype(np.float64)
    mu, sd = xt.mean(0), xt.std(0) + 1e-3
    xt, xv = (xt - mu) / sd, (xv - mu) / sd
    C = int(max(yt.max(), yv.max())) + 1
    a = np.linalg.solve(xt @ xt.T + lam * np.eye(len(xt)), np.eye(C)[yt] - 1.0 / C)
    return float(((xv @ (xt.T @ a)).argmax(1) == yv).mean())


def test_default_preset_is_learnable_but_not_trivial(tmp_path):
    # the default preset (10 classes): a linear probe on raw prepared joints must be well above
    # chance (10%) and clearly below 100% on the xsub val split (measured: 0.75-0.81 for seeds 0-5)
    out = synthetic.ensure_prepared(str(tmp_path), num_classes=10, samples_per_class=30, seed=0, workers=2)

    def load(split):
        labels = pickle.load(open(os.path.join(out, f"{split}_label.pkl"), "rb"))[1]
        return np.load(os.path.join(out, f"{split}_data.npy")), np.asarray(labels)

    (xt, yt), (xv, yv) = load("train"), load("val")
    acc = _ridge_probe(xt, yt, xv, yv)
    assert 0.4 < acc < 0.92, acc
    assert _ridge_probe(xt, yt, xt, yt) > acc          # sanity: the probe fits its own training data better


def test_ensure_prepared_rejects_unknown_benchmark_before_generating(tmp_path):
    with pytest.raises(ValueError, match="--benchmark 'xfoo'"):
        synthetic.ensure_prepared(str(tmp_path), num_classes=2, samples_per_class=1, benchmark="xfoo")
    assert os.listdir(tmp_path) == []
