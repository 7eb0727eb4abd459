"""`prepare` / `verify` (method.md §1.2-§1.3): layout, ignore lists, splits, resume, bad input, CLI."""
import json
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest

from data_fixtures import body, skeleton_text
from skelfast.data import preparation as prep
from skelfast.data.preparation import PrepareError, load_manifest, plan_samples, prepare, verify
from skelfast.data.preprocess import preprocess_sample
from skelfast.data.skeleton_reader import SkeletonFormatError, read_skeleton

QUIET = dict(progress=False, log=lambda *a, **k: None)
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def ntu_folder(tmp_path, names, frames_of=lambda i: 3 + i):
    raw = tmp_path / "raw"
    raw.mkdir()
    for i, n in enumerate(names):
        T = frames_of(i)
        (raw / f"{n}.skeleton").write_text(skeleton_text([[body(100 * i + t)] for t in range(T)]))
    return raw


NTU60_NAMES = [
    "S001C001P001R001A001",   # xsub train (P1), xview val (C1)
    "S001C002P003R001A002",   # xsub val, xview train
    "S001C002P005R002A008",   # in the published NTU-60 missing-skeleton list -> skipped
    "S002C003P008R002A060",   # xsub train, xview train
    "S018C001P001R001A001",   # NTU-120-only setup -> not part of ntu60
]


def test_ntu60_layout_splits_labels_frames(tmp_path):
    raw = ntu_folder(tmp_path, NTU60_NAMES)
    out = tmp_path / "out"
    man = prepare(str(raw), str(out), dataset="ntu60", benchmark="xsub", **QUIET)
    assert man["ignored_samples"] == 1 and man["files_not_in_dataset"] == 1
    assert man["splits"]["train"]["count"] == 2 and man["splits"]["val"]["count"] == 1
    names, labels, frames = pickle.load(open(out / "train_label.pkl", "rb"))   # §1.2 3-tuple
    assert names == ["S001C001P001R001A001.skeleton", "S002C003P008R002A060.skeleton"]   # sorted order
    assert labels == [0, 59] and frames == [3, 6]                               # label = A-1, frame = numFrame
    data = np.load(out / "train_data.npy", mmap_mode="r")
    assert data.shape == (2, 3, 50, 25, 2) and data.dtype == np.float32
    np.testing.assert_array_equal(data[1], preprocess_sample(read_skeleton(str(raw / names[1]))))
    js = json.load(open(out / "train_label.json"))
    assert js == {"sample_name": names, "label": labels, "frame": frames}
    assert man["splits"]["train"]["class_counts"][0] == 1 and len(man["splits"]["train"]["class_counts"]) == 60
    assert {"skelfast", "numpy", "python"} <= set(man["versions"])
    assert verify(str(out), log=lambda *a: None)["dataset"] == "ntu60"
    xview = prepare(str(raw), str(tmp_path / "xview"), dataset="ntu60", benchmark="xview", **QUIET)
    assert (xview["splits"]["train"]["count"], xview["splits"]["val"]["count"]) == (2, 1)


def test_idempotent_and_force(tmp_path):
    raw = ntu_folder(tmp_path, NTU60_NAMES[:2])
    out = str(tmp_path / "out")
    m1 = prepare(str(raw), out, dataset="ntu60", benchmark="xview", **QUIET)
    msgs = []
    m2 = prepare(str(raw), out, dataset="ntu60", benchmark="xview", progress=False, log=msgs.append)
    assert m2 == m1 and "already prepared" in msgs[0]
    m3 = prepare(str(raw), out, dataset="ntu60", benchmark="xview", force=True, **QUIET)
    assert m3["splits"] == m1["splits"]


class Killed(Exception):
    pass


def die_at(monkeypatch, n):
    """Make prepare's n-th sample raise Killed (the run dies mid-way); returns the paths processed."""
    real, calls = prep._process_file, []

    def flaky(path):
        calls.append(path)
        if len(calls) == n:
            raise Killed
        return real(path)

    monkeypatch.setattr(prep, "_process_file", flaky)
    return calls


def test_interrupted_run_resumes_and_matches_fresh(tmp_path, monkeypatch):
    raw = ntu_folder(tmp_path, [f"S001C00{1 + i % 3}P00{1 + i % 9}R001A00{1 + i % 9}" for i in range(9)])
    fresh = tmp_path / "fresh"
    prepare(str(raw), str(fresh), dataset="synthetic", benchmark="xview", chunk_size=2, **QUIET)
    real, calls, fail_at = prep._process_file, [], [5]

    def flaky(path):
        calls.append(path)
        if len(calls) == fail_at[0]:
            raise Killed   # the run dies mid-way
        return real(path)

    out = tmp_path / "out"
    monkeypatch.setattr(prep, "_process_file", flaky)
    with pytest.raises(Killed):
        prepare(str(raw), str(out), dataset="synthetic", benchmark="xview", chunk_size=2, **QUIET)
    assert load_manifest(str(out)) is None                     # never looks complete
    with pytest.raises(PrepareError, match="interrupted run"):
        verify(str(out), log=lambda *a: None)
    calls.clear()
    fail_at[0] = None
    msgs = []
    prepare(str(raw), str(out), dataset="synthetic", benchmark="xview", chunk_size=2, progress=False, log=msgs.append)
    assert any("resuming, 4 of 9" in m for m in msgs) and len(calls) == 5
    for f in ("train_data.npy", "val_data.npy", "train_label.pkl", "val_label.json"):
        assert (out / f).read_bytes() == (fresh / f).read_bytes()
    assert not (out / ".prepare_state.json").exists()


def test_truncated_file_aborts_without_manifest(tmp_path):
    raw = ntu_folder(tmp_path, NTU60_NAMES[:2])
    bad = raw / "S001C001P002R001A003.skeleton"
    bad.write_text(skeleton_text([[body(1)], [body(2)]])[:-300])
    out = tmp_path / "out"
    with pytest.raises(SkeletonFormatError, match="S001C001P002R001A003.skeleton.*truncated"):
        prepare(str(raw), str(out), dataset="ntu60", benchmark="xsub", **QUIET)
    assert load_manifest(str(out)) is None


def _folder_bytes(out):
    return {f: (out / f).read_bytes() for f in sorted(os.listdir(out)) if not f.startswith(".")}


def test_failed_reprepare_keeps_the_old_folder(tmp_path):
    """A re-prepare of changed input builds the new data aside and replaces the old only when it is
    complete: a failure (here a new, truncated file) used to delete the manifest and overwrite the
    arrays first, losing a good prepared folder."""
    raw = ntu_folder(tmp_path, NTU60_NAMES[:2])
    out = tmp_path / "out"
    prepare(str(raw), str(out), dataset="ntu60", benchmark="xsub", **QUIET)
    before = _folder_bytes(out)
    (raw / "S001C001P002R001A003.skeleton").write_text("7\n1\n")   # a new, truncated file
    with pytest.raises(SkeletonFormatError):
        prepare(str(raw), str(out), dataset="ntu60", benchmark="xsub", **QUIET)
    assert _folder_bytes(out) == before                            # every file as it was
    verify(str(out), log=lambda *a: None)                          # still a complete folder ...
    with pytest.raises(PrepareError, match="stale"):               # ... of the old input
        verify(str(out), raw_dir=str(raw), log=lambda *a: None)
    (raw / "S001C001P002R001A003.skeleton").write_text(skeleton_text([[body(7)] for _ in range(4)]))
    msgs = []
    man = prepare(str(raw), str(out), dataset="ntu60", benchmark="xsub", progress=False, log=msgs.append)
    assert any("inputs changed" in m for m in msgs)
    assert man["splits"]["train"]["count"] + man["splits"]["val"]["count"] == 3
    assert sorted(os.listdir(out)) == sorted(before)               # no staging folder or state left
    verify(str(out), raw_dir=str(raw), log=lambda *a: None)


def test_interrupted_reprepare_resumes_in_staging(tmp_path, monkeypatch):
    """An interrupted re-prepare leaves the old folder complete and resumes its new data."""
    raw = ntu_folder(tmp_path, [f"S001C00{1 + i % 3}P00{1 + i % 9}R001A00{1 + i % 9}" for i in range(6)])
    out = tmp_path / "out"
    prepare(str(raw), str(out), dataset="synthetic", benchmark="xview", chunk_size=2, **QUIET)
    before = _folder_bytes(out)
    (raw / "S002C001P001R001A001.skeleton").write_text(skeleton_text([[body(9)] for _ in range(5)]))
    die_at(monkeypatch, 3)
    with pytest.raises(Killed):
        prepare(str(raw), str(out), dataset="synthetic", benchmark="xview", chunk_size=2, **QUIET)
    assert _folder_bytes(out) == before
    monkeypatch.undo()
    msgs = []
    man = prepare(str(raw), str(out), dataset="synthetic", benchmark="xview", chunk_size=2, progress=False,
                  log=msgs.append)
    assert any("resuming, 2 of 7" in m for m in msgs)
    fresh = prepare(str(raw), str(tmp_path / "fresh"), dataset="synthetic", benchmark="xview", **QUIET)
    assert man["splits"] == fresh["splits"]


def test_another_benchmark_in_a_prepared_folder_needs_force(tmp_path):
    raw = ntu_folder(tmp_path, NTU60_NAMES[:2])
    out = str(tmp_path / "out")
    prepare(str(raw), out, dataset="ntu60", benchmark="xsub", **QUIET)
    with pytest.raises(PrepareError, match="holds prepared ntu60 xsub data; preparing ntu60 xview there"):
        prepare(str(raw), out, dataset="ntu60", benchmark="xview", **QUIET)
    assert load_manifest(out)["benchmark"] == "xsub"
    assert prepare(str(raw), out, dataset="ntu60", benchmark="xview", force=True, **QUIET)["benchmark"] == "xview"


@pytest.mark.parametrize("content, message", [
    ('{"format_version": 1, "data', "unreadable"),
    ("[]", "a JSON list"),
    ('{"format_version": 1}', "lacks dataset, benchmark, num_classes, splits"),
])
def test_damaged_manifest_is_named_and_force_rebuilds(tmp_path, content, message):
    """A damaged manifest.json gave a JSON error naming no file, or an AttributeError / KeyError
    traceback, and --force could not get past it."""
    raw = ntu_folder(tmp_path, NTU60_NAMES[:2])
    out = tmp_path / "out"
    prepare(str(raw), str(out), dataset="ntu60", benchmark="xsub", **QUIET)
    (out / "manifest.json").write_text(content)
    for call in (lambda: verify(str(out), log=lambda *a: None),
                 lambda: prepare(str(raw), str(out), dataset="ntu60", benchmark="xsub", **QUIET)):
        with pytest.raises(PrepareError, match=f"manifest.json: .*{message}.*--force"):
            call()
    prepare(str(raw), str(out), dataset="ntu60", benchmark="xsub", force=True, **QUIET)
    verify(str(out), log=lambda *a: None)


def test_damaged_state_file_restarts(tmp_path):
    raw = ntu_folder(tmp_path, NTU60_NAMES[:2])
    out = tmp_path / "out"
    out.mkdir()
    (out / ".prepare_state.json").write_text("[1, 2]")      # valid JSON, not a state: AttributeError before
    msgs = []
    prepare(str(raw), str(out), dataset="ntu60", benchmark="xsub", progress=False, log=msgs.append)
    assert any("starting from scratch" in m for m in msgs)
    verify(str(out), log=lambda *a: None)


def test_two_names_of_one_sample_refused(tmp_path):
    raw = ntu_folder(tmp_path, NTU60_NAMES[:2])
    (raw / "copy of S001C001P001R001A001.skeleton").write_bytes((raw / "S001C001P001R001A001.skeleton").read_bytes())
    with pytest.raises(PrepareError, match="name the same sample"):
        prepare(str(raw), str(tmp_path / "out"), dataset="ntu60", benchmark="xsub", **QUIET)


@pytest.mark.parametrize("setup, message", [
    ("missing", "is not a directory"),
    ("empty", "contains no .skeleton files"),
    ("wrong", "contains no .skeleton files"),
    ("badname", "not an NTU sample name"),
    ("only_ignored", "none of its 1 .skeleton files"),
])
def test_bad_raw_folders_name_the_option(tmp_path, setup, message):
    raw = tmp_path / "raw"
    if setup != "missing":
        raw.mkdir()
    if setup == "wrong":
        (raw / "video.avi").write_bytes(b"\0")
    if setup == "badname":
        (raw / "clip_01.skeleton").write_text(skeleton_text([[body(0)]]))
    if setup == "only_ignored":
        (raw / "S001C002P005R002A008.skeleton").write_text(skeleton_text([[body(0)]]))
    with pytest.raises(PrepareError, match=message) as err:
        prepare(str(raw), str(tmp_path / "out"), dataset="ntu60", benchmark="xsub", **QUIET)
    assert "raw" in str(err.value)


def test_unknown_benchmark(tmp_path):
    raw = ntu_folder(tmp_path, NTU60_NAMES[:1])
    with pytest.raises(ValueError, match="--benchmark 'cross'"):
        plan_samples(str(raw), "ntu60", "cross")
    with pytest.raises(ValueError, match="not defined for --dataset ntu120"):
        plan_samples(str(raw), "ntu120", "xview")


def test_verify_detects_corruption_and_count_mismatch(tmp_path):
    raw = ntu_folder(tmp_path, NTU60_NAMES[:4])
    out = tmp_path / "out"
    prepare(str(raw), str(out), dataset="ntu60", benchmark="xsub", **QUIET)
    arr = np.load(out / "train_data.npy", mmap_mode="r+")
    arr[0, 0, 0, 0, 0] += 1.0
    arr.flush()
    del arr
    with pytest.raises(PrepareError, match="train_data.npy: sha256 mismatch"):
        verify(str(out), log=lambda *a: None)
    prepare(str(raw), str(out), dataset="ntu60", benchmark="xsub", force=True, **QUIET)
    # a label file with one sample too many, manifest updated to match it: the count check must fire
    names, labels, frames = pickle.load(open(out / "val_label.pkl", "rb"))
    (out / "val_label.pkl").write_bytes(pickle.dumps((names * 2, labels * 2, frames * 2)))
    man = json.load(open(out / "manifest.json"))
    man["splits"]["val"]["files"]["label_pkl"]["bytes"] = os.path.getsize(out / "val_label.pkl")
    (out / "manifest.json").write_text(json.dumps(man))
    with pytest.raises(PrepareError, match="val_label.pkl: 2 names / 2 labels / 2 frame counts, but .*val_data.npy has 1"):
        verify(str(out), checksums=False, log=lambda *a: None)
    with pytest.raises(PrepareError, match="no manifest.json"):
        verify(str(raw), log=lambda *a: None)


def test_cli_entry_point_help():
    env = dict(os.environ, SKELFAST_QUIET_IMPORT="1", PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    r = subprocess.run([sys.executable, "-m", "skelfast.data", "--help"], capture_output=True, text=True, env=env,
                       cwd=REPO, timeout=120)
    assert r.returncode == 0
    assert "prepare" in r.stdout and "synth" in r.stdout and "--verify" in r.stdout and "synthetic" in r.stdout


def test_cli_synth_prepare_verify(tmp_path, capsys):
    from skelfast.data.__main__ import main

    raw, out = str(tmp_path / "raw"), str(tmp_path / "out")
    assert main(["synth", "--out", raw, "--num-classes", "3", "--samples-per-class", "4", "--workers", "0",
                 "--no-progress"]) == 0
    assert len([f for f in os.listdir(raw) if f.endswith(".skeleton")]) == 12
    assert main(["prepare", "--dataset", "synthetic", "--benchmark", "xview", "--raw", raw, "--out", out,
                 "--workers", "2", "--no-progress"]) == 0
    assert json.load(open(os.path.join(out, "manifest.json")))["num_classes"] == 3
    capsys.readouterr()
    assert main(["prepare", "--verify", "--out", out]) == 0 and "OK" in capsys.readouterr().out
    assert main(["prepare", "--dataset", "ntu60", "--benchmark", "xset", "--raw", raw, "--out", out]) == 2
    assert "not defined for --dataset ntu60" in capsys.readouterr().err
    assert main(["prepare", "--out", out]) == 2 and "--raw" in capsys.readouterr().err
    # --verify with --dataset / --benchmark checks them (they were ignored: a wrong pair said OK)
    assert main(["prepare", "--verify", "--out", out, "--dataset", "ntu120"]) == 2
    assert "holds synthetic data, not --dataset ntu120" in capsys.readouterr().err
    assert main(["prepare", "--verify", "--out", out, "--benchmark", "xsub"]) == 2
    assert "holds the xview split, not --benchmark xsub" in capsys.readouterr().err
    assert main(["prepare", "--verify", "--out", out, "--dataset", "synthetic", "--benchmark", "xview"]) == 0
    for cmd in (["synth", "--out", raw], ["prepare", "--raw", raw, "--out", out]):
        assert main([*cmd, "--workers", "-1"]) == 2 and "--workers must be >= 0" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["prepare", "--benchmark", "bogus", "--raw", raw, "--out", out])   # argparse names --benchmark
    assert "--benchmark" in capsys.readouterr().err


def test_empty_split_is_valid(tmp_path):
    # one camera-2 file: xview train has it, val is empty but still a well-formed (0, 3, 50, 25, 2) array
    raw = ntu_folder(tmp_path, ["S001C002P001R001A001"])
    out = tmp_path / "out"
    msgs = []
    man = prepare(str(raw), str(out), dataset="ntu60", benchmark="xview", progress=False, log=msgs.append)
    assert (man["splits"]["train"]["count"], man["splits"]["val"]["count"]) == (1, 0)
    assert any("warning: the xview rule puts none of the 1 samples in split val" in m for m in msgs)
    assert np.load(out / "val_data.npy", mmap_mode="r").shape == (0, 3, 50, 25, 2)
    verify(str(out), log=lambda *a: None)


def test_verify_with_raw_detects_a_stale_folder(tmp_path):
    """verify(raw_dir=...) compares the raw folder's fingerprint with the manifest's: a touched,
    added or removed .skeleton file makes the prepared folder stale."""
    raw = ntu_folder(tmp_path, NTU60_NAMES[:3])
    out = tmp_path / "out"
    prepare(str(raw), str(out), dataset="ntu60", benchmark="xsub", **QUIET)
    verify(str(out), raw_dir=str(raw), log=lambda *a: None)   # fresh: passes
    victim = raw / sorted(os.listdir(raw))[0]
    st = os.stat(victim)
    os.utime(victim, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))   # touched
    with pytest.raises(PrepareError, match="is stale for --raw"):
        verify(str(out), raw_dir=str(raw), log=lambda *a: None)
    verify(str(out), log=lambda *a: None)   # without --raw only the folder itself is checked
    from skelfast.data.__main__ import main
    assert main(["prepare", "--verify", "--out", str(out), "--raw", str(raw)]) == 2


def test_verify_names_a_damaged_label_file(tmp_path):
    raw = ntu_folder(tmp_path, NTU60_NAMES[:2])
    out = tmp_path / "out"
    prepare(str(raw), str(out), dataset="ntu60", benchmark="xsub", **QUIET)
    (out / "train_label.pkl").write_bytes(b"not a pickle")
    with pytest.raises(PrepareError, match="train_label.pkl: 12 bytes, manifest says"):
        verify(str(out), checksums=False, log=lambda *a: None)
    man = json.load(open(out / "manifest.json"))
    man["splits"]["train"]["files"]["label_pkl"]["bytes"] = 12     # same size: the parse must catch it
    (out / "manifest.json").write_text(json.dumps(man))
    with pytest.raises(PrepareError, match="train_label.pkl: unreadable label file"):
        verify(str(out), checksums=False, log=lambda *a: None)


def edit_same_size(path, later_ns=10**9):
    """Change one digit of the first joint's x (same byte count) and move mtime `later_ns` on, as a
    later edit would (set explicitly so a coarse filesystem clock cannot make the test flaky)."""
    st = os.stat(path)
    lines = open(path).read().split("\n")
    x = lines[4].split()[0]                               # line 5: frame 0, body 0, joint 0
    lines[4] = lines[4].replace(x, x[:-1] + ("1" if x[-1] != "1" else "2"), 1)
    open(path, "w").write("\n".join(lines))
    assert os.path.getsize(path) == st.st_size
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + later_ns))


def test_same_size_edit_re_prepares(tmp_path):
    raw = ntu_folder(tmp_path, NTU60_NAMES[:2])
    out = tmp_path / "out"
    prepare(str(raw), str(out), dataset="ntu60", benchmark="xsub", **QUIET)
    stale = np.load(out / "train_data.npy")
    edit_same_size(str(raw / "S001C001P001R001A001.skeleton"))
    msgs = []
    prepare(str(raw), str(out), dataset="ntu60", benchmark="xsub", progress=False, log=msgs.append)
    fresh = prepare(str(raw), str(tmp_path / "fresh"), dataset="ntu60", benchmark="xsub", **QUIET)
    new = np.load(out / "train_data.npy")
    assert not np.array_equal(new, stale)
    np.testing.assert_array_equal(new, np.load(tmp_path / "fresh" / "train_data.npy"))
    assert "inputs changed" in msgs[0]
    assert verify(str(out), log=lambda *a: None)["fingerprint"] == fresh["fingerprint"]


def test_other_raw_folder_with_same_names_sizes_and_mtimes_re_prepares(tmp_path):
    import shutil

    raw = ntu_folder(tmp_path, NTU60_NAMES[:2])
    out = tmp_path / "out"
    prepare(str(raw), str(out), dataset="ntu60", benchmark="xsub", **QUIET)
    stale = np.load(out / "train_data.npy")
    other = tmp_path / "other"
    shutil.copytree(raw, other)                           # copy2: mtimes preserved
    edit_same_size(str(other / "S001C001P001R001A001.skeleton"), later_ns=0)
    for f in os.listdir(raw):
        assert os.stat(raw / f).st_mtime_ns == os.stat(other / f).st_mtime_ns
    prepare(str(other), str(out), dataset="ntu60", benchmark="xsub", **QUIET)
    new = np.load(out / "train_data.npy")
    assert not np.array_equal(new, stale)
    np.testing.assert_array_equal(new[0], preprocess_sample(read_skeleton(str(other / "S001C001P001R001A001.skeleton"))))


def test_resume_does_not_reuse_chunks_of_an_edited_file(tmp_path, monkeypatch):
    raw = ntu_folder(tmp_path, [f"S001C00{1 + i % 3}P00{1 + i % 9}R001A00{1 + i % 9}" for i in range(6)])
    out = tmp_path / "out"
    calls = die_at(monkeypatch, 5)
    with pytest.raises(Killed):   # chunks of 2: the first two chunks are finished
        prepare(str(raw), str(out), dataset="synthetic", benchmark="xview", chunk_size=2, **QUIET)
    edit_same_size(calls[0])      # a file of a finished chunk changes before the resume
    monkeypatch.undo()
    msgs = []
    prepare(str(raw), str(out), dataset="synthetic", benchmark="xview", chunk_size=2, progress=False, log=msgs.append)
    assert not any("resuming" in m for m in msgs)
    prepare(str(raw), str(tmp_path / "fresh"), dataset="synthetic", benchmark="xview", chunk_size=2, **QUIET)
    for f in ("train_data.npy", "val_data.npy"):
        assert (out / f).read_bytes() == (tmp_path / "fresh" / f).read_bytes()


def test_non_finite_joint_aborts_without_manifest(tmp_path):
    raw = ntu_folder(tmp_path, NTU60_NAMES[:2])
    p = raw / "S001C001P001R001A001.skeleton"
    lines = p.read_text().split("\n")
    lines[4] = "nan " + lines[4].split(" ", 1)[1]                    # x of frame 0, joint 0
    p.write_text("\n".join(lines))
    out = tmp_path / "out"
    with pytest.raises(SkeletonFormatError, match=r"S001C001P001R001A001.skeleton: .*line 5, frame 0 .*non-finite"):
        prepare(str(raw), str(out), dataset="ntu60", benchmark="xsub", **QUIET)
    assert load_manifest(str(out)) is None


def test_ignore_entries_with_extension_and_upper_case_files(tmp_path):
    """Ignore entries are sample names with or without '.skeleton'; files whose extension a copy
    upper-cased are still read (both used to be dropped or kept silently)."""
    raw = ntu_folder(tmp_path, NTU60_NAMES[:2] + NTU60_NAMES[3:4])
    os.rename(raw / f"{NTU60_NAMES[3]}.skeleton", raw / f"{NTU60_NAMES[3]}.SKELETON")
    plan = plan_samples(str(raw), "ntu60", "xsub", ignore=[f"{NTU60_NAMES[1]}.skeleton"])
    assert plan.ignored == 1
    assert plan.names["train"] == [f"{NTU60_NAMES[0]}.skeleton", f"{NTU60_NAMES[3]}.SKELETON"]
    assert plan.names["val"] == []
    assert plan_samples(str(raw), "ntu60", "xsub", ignore=[NTU60_NAMES[1]]).fingerprint == plan.fingerprint


def test_hidden_files_are_skipped_and_case_duplicates_refused(tmp_path):
    """macOS resource forks ('._<name>.skeleton') are not samples; X.skeleton beside X.SKELETON
    would be one sample twice (a case-sensitive file system) and is refused naming both."""
    raw = ntu_folder(tmp_path, NTU60_NAMES[:2])
    (raw / f"._{NTU60_NAMES[0]}.skeleton").write_bytes(b"\x00\x05\x16\x07 binary resource fork")
    plan = plan_samples(str(raw), "ntu60", "xsub")
    assert sum(len(v) for v in plan.names.values()) == 2
    (raw / f"{NTU60_NAMES[1]}.SKELETON").write_text((raw / f"{NTU60_NAMES[1]}.skeleton").read_text())
    with pytest.raises(PrepareError, match=rf"{NTU60_NAMES[1]} twice \({NTU60_NAMES[1]}.SKELETON and "
                                           rf"{NTU60_NAMES[1]}.skeleton\)"):
        plan_samples(str(raw), "ntu60", "xsub")


def test_cli_reports_os_errors_and_damaged_label_files(tmp_path, capsys):
    """A folder named like a sample (an OSError in the reader) ends in `error: ...` and exit 2, not a
    traceback; a damaged label file raises ValueError naming the file (json and pickle)."""
    from skelfast.data.__main__ import main
    from skelfast.data.feeders import load_labels
    raw = ntu_folder(tmp_path, NTU60_NAMES[:2])
    os.mkdir(raw / f"{NTU60_NAMES[3]}.skeleton")
    assert main(["prepare", "--dataset", "ntu60", "--benchmark", "xsub", "--raw", str(raw),
                 "--out", str(tmp_path / "out"), "--workers", "0", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and NTU60_NAMES[3] in err and "Traceback" not in err
    for name, content in (("bad_label.json", b'{"sample_name": ['), ("bad_label.pkl", b"\x80\x04truncated")):
        (tmp_path / name).write_bytes(content)
        with pytest.raises(ValueError, match=rf"{name}: unreadable label file"):
            load_labels(str(tmp_path / name))
