"""Reader for NTU RGB+D raw `.skeleton` text files (method.md §1.1), vectorised and parallel.

Layer: data (pure NumPy, no torch).

Line-oriented like the official reader: the small header structure (numFrame, one numBody per
frame, one info line and numJoint per body) is walked in Python over the file's lines, and the
joint lines of every kept body are parsed in one call of NumPy's C text parser, converting only
the x, y, z columns. Body slots follow the official semantics (method.md §1.1): slots are the
bodies **in file order within each frame**, no bodyID tracking, bodies after `max_body` dropped,
frames with fewer bodies keep zeros. As in the official reader, a joint line needs at least its
x, y, z values; the other 9 columns are ignored.
"""
from __future__ import annotations

import io
import os
import warnings
from concurrent.futures import ProcessPoolExecutor
from typing import Iterable, List, Sequence, Tuple

import numpy as np

__all__ = ["SkeletonFormatError", "read_skeleton", "parse_skeleton_text", "read_skeletons", "parallel_map",
           "BODY_INFO_LEN", "JOINT_INFO_LEN"]

BODY_INFO_LEN = 10   # bodyID, clipedEdges, handLeft/Right confidence+state, isResticted, leanX, leanY, trackingState
JOINT_INFO_LEN = 12  # x, y, z, depthX, depthY, colorX, colorY, orientation WXYZ, trackingState


class SkeletonFormatError(ValueError):
    """A `.skeleton` file is truncated, malformed or empty; the message names the file."""


def _count(lines: List[str], i: int, path: str, what: str) -> int:
    """The non-negative integer on line i (0-based), or a SkeletonFormatError naming the file."""
    if i >= len(lines):
        raise SkeletonFormatError(f"{path}: truncated .skeleton file, expected {what} on line {i + 1} "
                                  f"but the file has {len(lines)} lines")
    try:
        v = int(lines[i])
    except ValueError:
        raise SkeletonFormatError(f"{path}: malformed .skeleton file, {what} on line {i + 1} is "
                                  f"{lines[i].strip()[:40]!r} (expected a non-negative integer)") from None
    if v < 0:
        raise SkeletonFormatError(f"{path}: malformed .skeleton file, {what} on line {i + 1} is negative ({v})")
    return v


def parse_skeleton_text(text: str, path: str = "<string>", max_body: int = 2,
                        num_joint: int = 25) -> np.ndarray:
    """Parse the contents of one `.skeleton` file.

    Returns `data` float64 of shape (3, numFrame, num_joint, max_body): camera-space x, y, z in
    metres, zeros where a body slot or joint is absent (method.md §1.1). `numFrame` is the header
    count, so `data.shape[1]` is the frame count the label pickle stores (method.md §1.2).

    Raises SkeletonFormatError (naming `path`) for a truncated or malformed file, trailing data,
    a non-finite (nan/inf) x, y or z of a kept joint (naming line, frame, body, joint), or a file
    with 0 frames.
    """
    lines = text.splitlines()
    num_frame = _count(lines, 0, path, "numFrame")
    if num_frame == 0:
        raise SkeletonFormatError(f"{path}: .skeleton file has 0 frames")
    i = 1
    n_lines = len(lines)
    # (frame, slot, first joint line, number of joints kept) for every body that lands in a slot
    frames: List[int] = []
    slots: List[int] = []
    starts: List[int] = []
    counts: List[int] = []
    info_lines: List[int] = []
    for t in range(num_frame):
        num_body = _count(lines, i, path, f"numBody of frame {t}")
        i += 1
        for m in range(num_body):
            info_lines.append(i)
            nj = _count(lines, i + 1, path, f"numJoint of frame {t} body {m}")   # after the body info line
            i += 2
            if i + nj > n_lines:
                raise SkeletonFormatError(f"{path}: truncated .skeleton file in frame {t} body {m}: "
                                          f"needs {i + nj} lines, has {n_lines}")
            if m < max_body and nj > 0:
                frames.append(t)
                slots.append(m)
                starts.append(i)
                counts.append(min(nj, num_joint))
            i += nj
    extra = [k for k in range(i, n_lines) if lines[k].strip()]
    if extra:
        raise SkeletonFormatError(f"{path}: malformed .skeleton file, {len(extra)} unexpected trailing line(s) "
                                  f"from line {extra[0] + 1} (header says {num_frame} frames)")
    if info_lines:   # the official reader parses every body info line as floats: check them the same way
        _parse_block(lines, info_lines, [1] * len(info_lines), path, "body info", None, BODY_INFO_LEN)
    data = np.zeros((3, num_frame, num_joint, max_body), dtype=np.float64)
    if not frames:
        return data
    xyz = _parse_block(lines, starts, counts, path, "joint", (0, 1, 2), 3)
    finite = np.isfinite(xyz).all(axis=1)
    if not finite.all():
        # NumPy's parser accepts nan/inf (and overflows like 1e999 to inf); one such value would
        # reach every frame of the sample through the per-sequence rotation sign (method.md §1.3)
        r = int(np.argmin(finite))
        k = int(np.searchsorted(np.cumsum(counts), r, side="right"))   # the body row r belongs to
        j = r - sum(counts[:k])
        raise SkeletonFormatError(f"{path}: malformed joint line in .skeleton file (line {starts[k] + j + 1}, "
                                  f"frame {frames[k]} body {slots[k]} joint {j}: non-finite x, y, z "
                                  f"{lines[starts[k] + j].split()[:3]})")
    cnt = np.asarray(counts)
    if (cnt == num_joint).all():   # the common case: a dense (bodies, joints, 3) block
        xyz = xyz.reshape(len(frames), num_joint, 3)
    else:
        dense = np.zeros((len(frames), num_joint, 3))
        dense[np.arange(num_joint)[None, :] < cnt[:, None]] = xyz
        xyz = dense
    data[:, np.asarray(frames), :, np.asarray(slots)] = xyz.transpose(0, 2, 1)   # (B, 3, V) assignment
    return data


def _parse_block(lines: List[str], starts: List[int], counts: List[int], path: str, what: str, usecols,
                 ncols: int) -> np.ndarray:
    """Parse lines[s:s+c] for all (s, c) with NumPy's C parser; returns (sum(counts), ncols) float64."""
    block = "\n".join(["\n".join(lines[s:s + c]) for s, c in zip(starts, counts)])
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            out = np.loadtxt(io.StringIO(block), dtype=np.float64, usecols=usecols, ndmin=2, comments=None)
    except (ValueError, UserWarning):
        raise SkeletonFormatError(f"{path}: malformed {what} line in .skeleton file "
                                  f"({_locate(lines, starts, counts, usecols, ncols)})") from None
    if out.shape != (sum(counts), ncols):   # e.g. a blank line among them: loadtxt skips it
        raise SkeletonFormatError(f"{path}: malformed {what} line in .skeleton file "
                                  f"({_locate(lines, starts, counts, usecols, ncols)})")
    return out


def _locate(lines: List[str], starts: List[int], counts: List[int], usecols, ncols: int) -> str:
    """Slow path after a parse error: find the first offending line (1-based) and say what is wrong."""
    need = ncols if usecols is None else max(usecols) + 1
    for s, c in zip(starts, counts):
        for k in range(s, s + c):
            words = lines[k].split()
            if len(words) < need or (usecols is None and len(words) != ncols):
                return f"line {k + 1} has {len(words)} values, expected {ncols if usecols is None else f'>= {need}'}"
            for w in words if usecols is None else [words[u] for u in usecols]:
                try:
                    float(w)
                except ValueError:
                    return f"line {k + 1}: {w[:40]!r} is not a number"
    return "unparseable values"


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
