"""Prepare NTU RGB+D (or synthetic NTU-format) `.skeleton` folders into memory-mappable arrays.

Layer: data (NumPy; process pool + tqdm).

Pipeline per sample: `read_skeleton` (method.md §1.1) -> split/label/frame count (§1.2) ->
`preprocess_sample` (§1.3: valid length, centring, cv2-linear resampling to 50 frames, y rotation).

Output folder layout (format version 1), for each split `train` and `val`:

  {split}_data.npy        float32 (Ns, 3, 50, 25, 2), C-contiguous .npy (np.load(mmap_mode='r'));
                          the "NTU*_frame50 / *_position.npy" array of method.md §1.3
  {split}_label.pkl       pickle of the 3-tuple (sample_name: list[str] with '.skeleton',
                          label: list[int] = action-1, frame: list[int] = header numFrame), §1.2;
                          what the official feeders load
  {split}_label.json      the same three lists as JSON {"sample_name", "label", "frame"} (no pickle needed)
  manifest.json           written LAST by atomic rename: dataset, benchmark, counts and class counts
                          per split, sha256 + bytes of every file above, versions, settings

A folder without `manifest.json` is incomplete. While running, `.prepare_state.json` records the
finished chunks (and their frame counts), so an interrupted run resumes where it stopped when
started again with the same inputs; a different input set restarts from scratch. "Same inputs"
means the same fingerprint: dataset, benchmark, format settings, the resolved --raw directory and
the (name, size, mtime) of every kept `.skeleton` file, so editing or touching a raw file, or
pointing --raw elsewhere, re-prepares the folder. A complete folder is re-prepared in its
`.prepare_staging/` subfolder (resumable there too) and replaced only when the new data is
complete; another dataset or benchmark needs `force`.
Samples are in `sorted(os.listdir(raw))` order (§1.2) in both the arrays and the label files.
"""
from __future__ import annotations

import hashlib
import json
import os
import pickle
import platform
import shutil
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

import numpy as np

from .ntu import (check_dataset_benchmark, in_dataset, is_training, label_of, load_ignore_list,
                  normalise_benchmark, parse_sample_name)
from .preprocess import NUM_FRAMES, preprocess_sample
from .skeleton_reader import read_skeleton

__all__ = ["PrepareError", "SamplePlan", "plan_samples", "prepare", "verify", "load_manifest",
           "MANIFEST", "FORMAT_VERSION", "SPLITS", "data_file", "label_file"]

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
STATE = ".prepare_state.json"
# Re-preparing a complete folder builds the new data here and moves it in only once it is complete,
# so a re-prepare that fails (a truncated raw file, a typo'd --raw) leaves the old dataset intact.
STAGING = ".prepare_staging"
# what verify and the training data loader read from a manifest
_MANIFEST_KEYS = ("format_version", "dataset", "benchmark", "num_classes", "splits")
_SPLIT_KEYS = ("count", "shape", "files")
_FILE_KEYS = ("data", "label_pkl", "label_json")
SPLITS = ("train", "val")
NUM_JOINTS, MAX_BODY = 25, 2
MAX_RAW_FRAMES = 300   # method.md §1.2: the gendata array has 300 frames; longer files are an error there


class PrepareError(RuntimeError):
    """Bad input to / inconsistent output of `prepare` or `verify`; the message names the file or option."""


def data_file(split: str) -> str:
    return f"{split}_data.npy"


def label_file(split: str, ext: str = "pkl") -> str:
    return f"{split}_label.{ext}"


@dataclass
class SamplePlan:
    """Which files go where. `names[split]` are file names (with '.skeleton'), in sorted order."""
    raw_dir: str
    dataset: str
    benchmark: str
    names: Dict[str, List[str]] = field(default_factory=dict)
    labels: Dict[str, List[int]] = field(default_factory=dict)
    num_classes: int = 0
    ignored: int = 0
    not_in_dataset: int = 0
    fingerprint: str = ""


def _stem(name: str) -> str:
    """A sample name without its .skeleton extension (any case)."""
    return name[:-len(".skeleton")] if name.lower().endswith(".skeleton") else name


def plan_samples(raw_dir: str, dataset: str, benchmark: str, ignore: Optional[Sequence[str]] = None) -> SamplePlan:
    """List `raw_dir`, drop ignore-listed samples and files outside `dataset`, split by `benchmark` (§1.2).

    `ignore` defaults to the published missing-skeleton list of `dataset`.
    """
    spec = check_dataset_benchmark(dataset, benchmark)
    benchmark = normalise_benchmark(benchmark)
    raw_dir = os.fspath(raw_dir)
    if not os.path.isdir(raw_dir):
        raise PrepareError(f"--raw {raw_dir!r} is not a directory")
    # the extension in any case (a copy through a case-insensitive file system may upper-case it);
    # hidden files are not samples (macOS '._S001...skeleton' resource forks beside the real ones)
    files = sorted(f for f in os.listdir(raw_dir) if f.lower().endswith(".skeleton") and not f.startswith("."))
    if not files:
        raise PrepareError(f"--raw {raw_dir!r} contains no .skeleton files (expected the NTU RGB+D "
                           "'nturgb+d_skeletons' folder or a skelfast synthetic folder)")
    seen: Dict[str, str] = {}
    for f in files:   # X.skeleton and X.SKELETON side by side (case-sensitive file system): one sample twice
        other = seen.setdefault(_stem(f), f)
        if other != f:
            raise PrepareError(f"--raw {raw_dir!r} holds sample {_stem(f)} twice ({other} and {f}); keep one")
    # compared by stem: ignore entries are sample names, with or without the .skeleton extension
    ignore_set = {_stem(n.strip()) for n in (load_ignore_list(dataset) if ignore is None else ignore)}
    plan = SamplePlan(raw_dir, dataset, benchmark, {s: [] for s in SPLITS}, {s: [] for s in SPLITS})
    max_action = 0
    stats = []   # (name, bytes, mtime_ns) of every kept file: the input part of the fingerprint
    kept: Dict[tuple, str] = {}     # parsed sample -> its file: 'copy of X.skeleton' beside X is X twice
    for f in files:
        if _stem(f) in ignore_set:
            plan.ignored += 1
            continue
        try:
            sample = parse_sample_name(f)
        except ValueError as exc:
            raise PrepareError(f"{os.path.join(raw_dir, f)}: {exc}") from None
        if not in_dataset(sample, dataset):
            plan.not_in_dataset += 1
            continue
        other = kept.setdefault(tuple(sample), f)
        if other != f:
            raise PrepareError(f"--raw {raw_dir!r}: {other} and {f} name the same sample {_stem(other)} "
                               f"(setup, camera, performer, replication, action); keep one")
        split = "train" if is_training(sample, dataset, benchmark) else "val"
        plan.names[split].append(f)
        plan.labels[split].append(label_of(sample))
        max_action = max(max_action, sample.action)
        st = os.stat(os.path.join(raw_dir, f))
        stats.append((f, st.st_size, st.st_mtime_ns))
    if not stats:
        raise PrepareError(f"--raw {raw_dir!r}: none of its {len(files)} .skeleton files belongs to "
                           f"--dataset {dataset} after removing {plan.ignored} ignore-listed samples")
    plan.num_classes = spec.num_classes or max_action
    # Key of the prepared folder (and of resumable chunks). Hashing the contents of ~56k files would
    # cost about as much as preparing them, so a file counts as changed when its size or mtime
    # changes (make's rule); the resolved --raw path is included because another folder with the
    # same names, sizes and (copied) mtimes is different input.
    h = hashlib.sha256(json.dumps([FORMAT_VERSION, dataset, benchmark, NUM_FRAMES, os.path.realpath(raw_dir),
                                   stats]).encode())
    plan.fingerprint = h.hexdigest()
    return plan


def _process_file(path: str):
    raw = read_skeleton(path, max_body=MAX_BODY, num_joint=NUM_JOINTS)
    if raw.shape[1] > MAX_RAW_FRAMES:
        raise PrepareError(f"{path}: {raw.shape[1]} frames, more than the {MAX_RAW_FRAMES} the NTU "
                           "pipeline allows (method.md §1.2)")
    return preprocess_sample(raw, NUM_FRAMES, name=path), raw.shape[1]


def _atomic_write(path: str, data: bytes) -> None:
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def _sha256(path: str, block: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(block), b""):
            h.update(chunk)
    return h.hexdigest()


def _versions() -> dict:
    import skelfast

    out = {"skelfast": skelfast.__version__, "numpy": np.__version__, "python": platform.python_version()}
    try:
        import torch
        out["torch"] = torch.__version__
    except ImportError:  # pragma: no cover
        pass
    return out


def load_manifest(out_dir: str) -> Optional[dict]:
    """The manifest of a prepared folder, or None if the folder is incomplete / not prepared.
    Raises PrepareError naming the file if it is unreadable or lacks what readers use."""
    path = os.path.join(os.fspath(out_dir), MANIFEST)
    if not os.path.exists(path):
        return None
    damaged = "; re-run prepare with --force to rebuild the folder"
    try:
        with open(path, "r") as fh:
            man = json.load(fh)
    except (OSError, ValueError) as exc:
        raise PrepareError(f"{path}: unreadable ({type(exc).__name__}: {exc}){damaged}") from None
    if not isinstance(man, dict):
        raise PrepareError(f"{path}: not a prepared-folder manifest (a JSON {type(man).__name__}){damaged}")
    missing = [k for k in _MANIFEST_KEYS if k not in man]
    splits = man.get("splits")
    if not missing and isinstance(splits, dict):
        for s, info in splits.items():
            files = info.get("files") if isinstance(info, dict) else None
            missing += [f"splits.{s}.{k}" for k in _SPLIT_KEYS if not isinstance(info, dict) or k not in info]
            missing += [f"splits.{s}.files.{k}" for k in _FILE_KEYS
                        if not isinstance(files, dict) or not isinstance(files.get(k), dict)
                        or not all(x in files[k] for x in ("path", "bytes", "sha256"))]
    elif not missing:
        missing = ["splits (a mapping)"]
    if missing:
        raise PrepareError(f"{path}: damaged, lacks {', '.join(missing)}{damaged}")
    return man


def _load_state(path: str, fingerprint: str, chunk_size: int) -> Optional[dict]:
    """The state of an interrupted run with these inputs and chunks, or None (none, another run's,
    or a damaged file: then the run starts from scratch)."""
    try:
        with open(path) as fh:
            prev = json.load(fh)
    except (OSError, ValueError):
        return None
    if not (isinstance(prev, dict) and prev.get("fingerprint") == fingerprint
            and prev.get("chunk_size") == chunk_size and isinstance(prev.get("done"), dict)
            and all(isinstance(prev["done"].get(s), dict) for s in SPLITS)):
        return None
    return prev


def prepare(raw_dir: str, out_dir: str, dataset: str = "ntu60", benchmark: str = "xsub", workers: int = 0,
            chunk_size: int = 256, progress: bool = True, force: bool = False,
            ignore: Optional[Sequence[str]] = None, log=print) -> dict:
    """Prepare `raw_dir` into `out_dir` (layout in the module docstring); returns the manifest.

    Idempotent: if `out_dir` already holds a manifest for the same inputs, nothing is redone unless
    `force`. Resumable: an interrupted run continues from its last finished chunk. Errors name the
    offending file or option; on error a new folder is left without a manifest (i.e. incomplete),
    and a complete one keeps its data and manifest (the new data is built in STAGING).
    """
    if chunk_size < 1:
        raise PrepareError(f"--chunk-size must be >= 1, got {chunk_size}")
    if workers < 0:
        raise PrepareError(f"--workers must be >= 0 (0: no worker processes), got {workers}")
    plan = plan_samples(raw_dir, dataset, benchmark, ignore)
    empty = [s for s in SPLITS if not plan.names[s]]
    if empty:
        log(f"warning: the {plan.benchmark} rule puts none of the {sum(map(len, plan.names.values()))} samples "
            f"in split {' and '.join(empty)}: training or evaluating on it will be refused")
    out_dir = os.fspath(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    man_path = os.path.join(out_dir, MANIFEST)
    try:
        old = load_manifest(out_dir)
    except PrepareError:
        if not force:
            raise
        log(f"{out_dir}: its damaged {MANIFEST} is replaced (--force)")
        os.remove(man_path)
        old = None
    if old is not None:
        if old.get("fingerprint") == plan.fingerprint and not force:
            log(f"{out_dir}: already prepared ({dataset} {plan.benchmark}); use --force to redo")
            return old
        was, now = f"{old['dataset']} {old['benchmark']}", f"{dataset} {plan.benchmark}"
        if was != now and not force:
            raise PrepareError(f"{out_dir} holds prepared {was} data; preparing {now} there would replace it: "
                               f"choose another --out, or add --force to replace it")
        if not force:
            log(f"{out_dir}: inputs changed since it was prepared (--raw {os.path.realpath(plan.raw_dir)!r}, "
                f"or a .skeleton file's size or modification time, or the settings); preparing again (the "
                f"current data stays until the new data is complete)")
    work = out_dir if old is None else os.path.join(out_dir, STAGING)
    os.makedirs(work, exist_ok=True)

    state_path = os.path.join(work, STATE)
    # finished chunks are only reusable for the same inputs cut into the same chunks
    state = None if force else _load_state(state_path, plan.fingerprint, chunk_size)
    if state is None:
        if os.path.exists(state_path) and not force:
            log(f"{out_dir}: the interrupted run there had other inputs or --chunk-size; starting from scratch")
        state = {"fingerprint": plan.fingerprint, "chunk_size": chunk_size, "done": {s: {} for s in SPLITS}}
    resuming = any(state["done"][s] for s in SPLITS)

    arrays = {}
    for split in SPLITS:
        shape = (len(plan.names[split]), 3, NUM_FRAMES, NUM_JOINTS, MAX_BODY)
        path = os.path.join(work, data_file(split))
        arr = None
        if resuming and os.path.exists(path):
            try:
                arr = np.lib.format.open_memmap(path, mode="r+")
                if arr.shape != shape or arr.dtype != np.float32:
                    arr = None
            except (OSError, ValueError):
                arr = None
        if arr is None:
            state["done"][split] = {}
            arr = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=shape)
        arrays[split] = arr
    _atomic_write(state_path, json.dumps(state).encode())

    todo = []  # (split, chunk index, start, stop)
    for split in SPLITS:
        n = len(plan.names[split])
        for c, start in enumerate(range(0, n, chunk_size)):
            if str(c) not in state["done"][split]:
                todo.append((split, c, start, min(start + chunk_size, n)))
    total = sum(b - a for _, _, a, b in todo)
    n_all = sum(len(v) for v in plan.names.values())
    if resuming:
        log(f"{out_dir}: resuming, {n_all - total} of {n_all} samples already done")

    from tqdm.auto import tqdm

    t0 = time.perf_counter()
    pool = ProcessPoolExecutor(max_workers=workers) if workers and workers > 0 else None
    bar = tqdm(total=total, desc=f"prepare {dataset} {plan.benchmark}", unit="file", disable=not progress)
    try:
        for split, c, a, b in todo:
            paths = [os.path.join(plan.raw_dir, f) for f in plan.names[split][a:b]]
            results = pool.map(_process_file, paths, chunksize=8) if pool else map(_process_file, paths)
            frames = []
            for k, (x, nf) in enumerate(results):
                arrays[split][a + k] = x
                frames.append(int(nf))
                bar.update(1)
            arrays[split].flush()
            state["done"][split][str(c)] = frames
            _atomic_write(state_path, json.dumps(state).encode())
    finally:
        bar.close()
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    for arr in arrays.values():
        arr.flush()
    del arrays

    splits = {}
    for split in SPLITS:
        names, labels = plan.names[split], plan.labels[split]
        done = state["done"][split]
        frames = [f for c in sorted(done, key=int) for f in done[c]]
        if len(frames) != len(names):
            raise PrepareError(f"{state_path}: internal error, {len(frames)} frame counts for {len(names)} samples")
        pkl = os.path.join(work, label_file(split, "pkl"))
        js = os.path.join(work, label_file(split, "json"))
        _atomic_write(pkl, pickle.dumps((list(names), list(labels), frames), protocol=4))
        _atomic_write(js, json.dumps({"sample_name": names, "label": labels, "frame": frames}).encode())
        files = {}
        for key, fname in (("data", data_file(split)), ("label_pkl", label_file(split, "pkl")),
                           ("label_json", label_file(split, "json"))):
            p = os.path.join(work, fname)
            files[key] = {"path": fname, "bytes": os.path.getsize(p), "sha256": _sha256(p)}
        splits[split] = {
            "count": len(names),
            "shape": [len(names), 3, NUM_FRAMES, NUM_JOINTS, MAX_BODY],
            "dtype": "float32",
            "class_counts": np.bincount(np.asarray(labels, dtype=np.int64), minlength=plan.num_classes).tolist(),
            "files": files,
        }
    manifest = {
        "format_version": FORMAT_VERSION,
        "dataset": dataset,
        "benchmark": plan.benchmark,
        "num_classes": plan.num_classes,
        "num_frames": NUM_FRAMES,
        "num_joints": NUM_JOINTS,
        "max_body": MAX_BODY,
        "preprocessing": "method.md §1.3: relative (joint 21), cv2-linear resize to 50, y rotation",
        "raw_dir": os.path.abspath(plan.raw_dir),
        "ignored_samples": plan.ignored,
        "files_not_in_dataset": plan.not_in_dataset,
        "fingerprint": plan.fingerprint,
        "splits": splits,
        "versions": _versions(),
        "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "seconds": round(time.perf_counter() - t0, 3),
    }
    if work != out_dir:
        # the new data is complete: only now does the old dataset go (the folder looks incomplete,
        # without a manifest, for the few renames in between)
        os.remove(man_path)
        for info in splits.values():
            for f in info["files"].values():
                os.replace(os.path.join(work, f["path"]), os.path.join(out_dir, f["path"]))
    _atomic_write(man_path, (json.dumps(manifest, indent=1) + "\n").encode())
    os.remove(state_path)
    shutil.rmtree(os.path.join(out_dir, STAGING), ignore_errors=True)   # this run's, or a left-over one
    log(f"{out_dir}: prepared {dataset} {plan.benchmark}: " +
        ", ".join(f"{s} {splits[s]['count']}" for s in SPLITS) + f" ({plan.ignored} ignore-listed, "
        f"{plan.not_in_dataset} file(s) outside {dataset} left out)")
    return manifest


def _load_label_file(path: str):
    if path.endswith(".json"):
        with open(path) as fh:
            d = json.load(fh)
        return d["sample_name"], d["label"], d["frame"]
    with open(path, "rb") as fh:
        return pickle.load(fh)


def verify(out_dir: str, checksums: bool = True, log=print, raw_dir: Optional[str] = None,
           ignore: Optional[Sequence[str]] = None) -> dict:
    """Re-check a prepared folder: manifest present, checksums, shapes, label/data counts, label
    range, frame counts, finiteness. With `raw_dir` (and the `ignore` list prepare used, default
    the published one), also that the folder is up to date with those .skeleton files: the same
    fingerprint (names, sizes, mtimes, resolved path) as when it was prepared. Returns the
    manifest; raises PrepareError naming the file."""
    out_dir = os.fspath(out_dir)
    if not os.path.isdir(out_dir):
        raise PrepareError(f"--out {out_dir!r} is not a directory")
    man = load_manifest(out_dir)
    if man is None:
        hint = " (an interrupted run: re-run prepare to resume)" if os.path.exists(os.path.join(out_dir, STATE)) else ""
        raise PrepareError(f"{out_dir}: no {MANIFEST}, the folder is not a complete prepared dataset{hint}")
    if man.get("format_version") != FORMAT_VERSION:
        raise PrepareError(f"{os.path.join(out_dir, MANIFEST)}: format_version {man.get('format_version')} "
                           f"unsupported (expected {FORMAT_VERSION})")
    if raw_dir is not None:
        plan = plan_samples(raw_dir, man["dataset"], man["benchmark"], ignore)
        if plan.fingerprint != man.get("fingerprint"):
            raise PrepareError(f"{out_dir} is stale for --raw {raw_dir}: it was prepared from {man.get('raw_dir')} "
                               f"and the kept .skeleton files differ from that input (added, removed, or changed in "
                               f"size or modification time, or another folder); re-run prepare")
    for split, info in man["splits"].items():
        for key, f in info["files"].items():
            p = os.path.join(out_dir, f["path"])
            if not os.path.exists(p):
                raise PrepareError(f"{p}: missing (listed in {MANIFEST})")
            if os.path.getsize(p) != f["bytes"]:
                raise PrepareError(f"{p}: {os.path.getsize(p)} bytes, manifest says {f['bytes']}")
            if checksums and _sha256(p) != f["sha256"]:
                raise PrepareError(f"{p}: sha256 mismatch with {MANIFEST}")
        dpath = os.path.join(out_dir, info["files"]["data"]["path"])
        try:
            data = np.load(dpath, mmap_mode="r")
        except (ValueError, OSError) as exc:
            raise PrepareError(f"{dpath}: not a readable .npy array ({exc})") from None
        if list(data.shape) != info["shape"] or data.dtype != np.float32:
            raise PrepareError(f"{dpath}: shape {data.shape} {data.dtype}, manifest says {info['shape']} float32")
        tuples = {}
        for key in ("label_pkl", "label_json"):
            lpath = os.path.join(out_dir, info["files"][key]["path"])
            try:
                names, labels, frames = _load_label_file(lpath)
            except Exception as exc:   # any unpickling / JSON error means a damaged file
                raise PrepareError(f"{lpath}: unreadable label file ({type(exc).__name__}: {exc})") from None
            if not (len(names) == len(labels) == len(frames) == data.shape[0]):
                raise PrepareError(f"{lpath}: {len(names)} names / {len(labels)} labels / {len(frames)} frame "
                                   f"counts, but {dpath} has {data.shape[0]} samples")
            tuples[key] = (list(names), list(labels), list(frames))
            lab = np.asarray(labels, dtype=np.int64)
            if lab.size and (lab.min() < 0 or lab.max() >= man["num_classes"]):
                raise PrepareError(f"{lpath}: labels outside [0, {man['num_classes']})")
            if any(f < 1 for f in frames):
                raise PrepareError(f"{lpath}: frame counts must be >= 1")
        if tuples["label_pkl"] != tuples["label_json"]:
            raise PrepareError(f"{out_dir}: {label_file(split, 'pkl')} and {label_file(split, 'json')} disagree")
        for a in range(0, data.shape[0], 1024):
            if not np.isfinite(data[a:a + 1024]).all():
                raise PrepareError(f"{dpath}: non-finite values in samples {a}..{min(a + 1024, data.shape[0]) - 1}")
    log(f"{out_dir}: OK ({man['dataset']} {man['benchmark']}: " +
        ", ".join(f"{s} {i['count']}" for s, i in man["splits"].items()) + ")")
    return man
