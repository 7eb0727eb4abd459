"""Reader for NTU RGB+D raw `.skeleton` text files (method.md §1.1), vectorised and parallel.

Layer: data (pure NumPy, no torch).

The whole file is tokenised at once with NumPy; only the small header structure (one body count
per frame, one joint count per body) is walked in Python, and the joint blocks are gathered with
one fancy-indexing call. Body slots follow the official semantics (method.md §1.1): slots are the
bodies **in file order within each frame**, no bodyID tracking, bodies after `max_body` dropped,
frames with fewer bodies keep zeros.
"""
from __future__ import annotations

import os
import warnings
from concurrent.futures import ProcessPoolExecutor
from typing import Iterable, List, Sequence, Tuple

import numpy as np

__all__ = ["SkeletonFormatError", "read_skeleton", "parse_skeleton_text", "read_skeletons",
           "BODY_INFO_LEN", "JOINT_INFO_LEN"]

BODY_INFO_LEN = 10   # bodyID, clipedEdges, handLeft/Right confidence+state, isResticted, leanX, leanY, trackingState
JOINT_INFO_LEN = 12  # x, y, z, depthX, depthY, colorX, colorY, orientation WXYZ, trackingState


class SkeletonFormatError(ValueError):
    """A `.skeleton` file is truncated, malformed or empty; the message names the file."""


def _tokens(text: str, path: str) -> np.ndarray:
    # np.fromstring (text mode) is ~30% faster than split+float; it only warns on a bad token, so
    # the warning is promoted to an error and the slow path then names the offending token.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        try:
            return np.fromstring(text, dtype=np.float64, sep=" ")
        except (ValueError, DeprecationWarning):
            pass
    words = text.split()
    for k, w in enumerate(words):
        try:
            float(w)
        except ValueError:
            raise SkeletonFormatError(f"{path}: malformed .skeleton file, token #{k} {w[:40]!r} is not a number") from None
    return np.array(words, dtype=np.float64)


def _count(tok: np.ndarray, pos: int, path: str, what: str) -> int:
    if pos >= tok.size:
        raise SkeletonFormatError(f"{path}: truncated .skeleton file, expected {what} at token #{pos} "
                                  f"but the file ends after {tok.size} tokens")
    v = tok[pos]
    if not np.isfinite(v) or v < 0 or v != int(v):
        raise SkeletonFormatError(f"{path}: malformed .skeleton file, {what} at token #{pos} is {v!r} "
                                  "(expected a non-negative integer)")
    return int(v)


def _is_count(v: float) -> bool:
    return v >= 0 and v == int(v) if v == v and v != float("inf") else False


def parse_skeleton_text(text: str, path: str = "<string>", max_body: int = 2,
                        num_joint: int = 25) -> np.ndarray:
    """Parse the contents of one `.skeleton` file.

    Returns `data` float64 of shape (3, numFrame, num_joint, max_body): camera-space x, y, z in
    metres, zeros where a body slot or joint is absent (method.md §1.1). `numFrame` is the header
    count, so `data.shape[1]` is the frame count the label pickle stores (method.md §1.2).

    Raises SkeletonFormatError (naming `path`) for a truncated or malformed file, trailing data,
    or a file with 0 frames.
    """
    tok = _tokens(text, path)
    num_frame = _count(tok, 0, path, "numFrame")
    if num_frame == 0:
        raise SkeletonFormatError(f"{path}: .skeleton file has 0 frames")
    pos = 1
    n_tok = tok.size
    item = tok.item   # Python floats: much cheaper to compare than NumPy scalars in this loop
    # (frame, slot, start token, number of joints kept) for every body that lands in a slot
    frames: List[int] = []
    slots: List[int] = []
    starts: List[int] = []
    counts: List[int] = []
    for t in range(num_frame):
        if pos >= n_tok or not _is_count(item(pos)):
            _count(tok, pos, path, f"numBody of frame {t}")          # raises with the reason
        num_body = int(item(pos))
        pos += 1
        for m in range(num_body):
            pos += BODY_INFO_LEN
            if pos >= n_tok or not _is_count(item(pos)):
                _count(tok, pos, path, f"numJoint of frame {t} body {m}")
            nj = int(item(pos))
            pos += 1
            end = pos + nj * JOINT_INFO_LEN
            if end > n_tok:
                raise SkeletonFormatError(
                    f"{path}: truncated .skeleton file in frame {t} body {m}: needs {end} tokens, has {n_tok}")
            if m < max_body and nj > 0:
                frames.append(t)
                slots.append(m)
                starts.append(pos)
                counts.append(min(nj, num_joint))
            pos = end
    if pos != tok.size:
        raise SkeletonFormatError(f"{path}: malformed .skeleton file, {tok.size - pos} unexpected trailing "
                                  f"token(s) after frame {num_frame - 1} (header says {num_frame} frames)")
    data = np.zeros((3, num_frame, num_joint, max_body), dtype=np.float64)
    if not frames:
        return data
    f = np.asarray(frames)
    s = np.asarray(slots)
    st = np.asarray(starts)
    cnt = np.asarray(counts)
    j = np.arange(num_joint)
    # token index of (body b, joint j, coordinate c); joints beyond a body's count are masked out
    idx = st[:, None, None] + j[None, :, None] * JOINT_INFO_LEN + np.arange(3)[None, None, :]
    valid = j[None, :] < cnt[:, None]                           # (B, V)
    xyz = tok[np.where(valid[:, :, None], idx, 0)]              # (B, V, 3)
    xyz[~valid] = 0.0
    data[:, f, :, s] = xyz.transpose(0, 2, 1)                   # advanced indices first: (B, 3, V)
    return data


def read_skeleton(path: str, max_body: int = 2, num_joint: int = 25) -> np.ndarray:
    """Read one `.skeleton` file; shape (3, numFrame, num_joint, max_body) float64 (method.md §1.1)."""
    path = os.fspath(path)
    try:
        with open(path, "r", encoding="ascii", errors="strict") as fh:
            text = fh.read()
    except UnicodeDecodeError as exc:
        raise SkeletonFormatError(f"{path}: not a text .skeleton file ({exc.reason} at byte {exc.start})") from None
    return parse_skeleton_text(text, path, max_body=max_body, num_joint=num_joint)


def _read_one(args: Tuple[str, int, int]) -> np.ndarray:
    return read_skeleton(*args)


def read_skeletons(paths: Sequence[str], workers: int = 0, progress: bool = False, max_body: int = 2,
                   num_joint: int = 25, chunksize: int = 8) -> List[np.ndarray]:
    """Read many files, in order, over `workers` processes (0: in this process) with a tqdm bar.

    Returns a list of (3, F_i, num_joint, max_body) float64 arrays.
    """
    jobs = [(os.fspath(p), max_body, num_joint) for p in paths]
    return list(parallel_map(_read_one, jobs, workers=workers, progress=progress, desc="read .skeleton",
                             chunksize=chunksize))


def parallel_map(fn, jobs: Sequence, workers: int = 0, progress: bool = False, desc: str = "",
                 chunksize: int = 8) -> Iterable:
    """Ordered map of a picklable `fn` over `jobs` in a process pool (workers > 0) or inline."""
    from tqdm.auto import tqdm

    bar = tqdm(total=len(jobs), desc=desc, disable=not progress, unit="file")
    try:
        if workers and workers > 0 and len(jobs) > 1:
            with ProcessPoolExecutor(max_workers=workers) as pool:
                for out in pool.map(fn, jobs, chunksize=max(1, chunksize)):
                    bar.update(1)
                    yield out
        else:
            for job in jobs:
                out = fn(job)
                bar.update(1)
                yield out
    finally:
        bar.close()
