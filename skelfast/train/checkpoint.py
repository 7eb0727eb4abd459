"""Training checkpoints: atomic save, load with a model-kind check, RNG state capture/restore.

Layer: training. A checkpoint is one torch.save'd dict:

    format: 'skelfast-train/1'
    command: 'pretrain' | 'distill' | 'linear' | 'finetune'
    model_name: the skelfast.models.build name (ikem6, student6to3, linear6, ...)
    config: the resolved config (the run's config.yaml)
    model: state_dict (queues and their host-int pointers included as QueueBank extra state)
    optimizer: optimiser state_dict (momentum buffers) or None
    epoch: epochs completed; step: steps completed inside the epoch `epoch + 1` (0 at an epoch end)
    global_step, rng: {'torch', 'numpy', 'python'}, history: logged metrics so far

It is written to a temporary file in the same folder, fsync'd and renamed over the target with
os.replace, so a crash mid-write leaves the previous `last.pt` intact.
"""
from __future__ import annotations

import os
import pickle
import random
import re
from typing import Any, Dict, Iterable, Optional

import numpy as np
import torch

__all__ = ["FORMAT", "CheckpointError", "save_checkpoint", "load_checkpoint", "rng_state", "set_rng_state",
           "resolve_checkpoint"]

FORMAT = "skelfast-train/1"


class CheckpointError(ValueError):
    """A checkpoint that cannot be used for the requested command (wrong model, not a checkpoint)."""


def _numpy_rng_globals() -> list:
    """What NumPy's RNG state (np.random.get_state(): a uint32 array) pickles as, under the names of
    NumPy 2 and of NumPy 1 (a checkpoint names the module path of the NumPy that wrote it)."""
    try:
        from numpy._core.multiarray import _reconstruct
    except ImportError:                                     # NumPy 1.x
        from numpy.core.multiarray import _reconstruct
    allow = [_reconstruct, (_reconstruct, "numpy.core.multiarray._reconstruct"), np.ndarray, np.dtype]
    uint32 = getattr(getattr(np, "dtypes", None), "UInt32DType", None)    # NumPy >= 1.25
    return allow + ([uint32] if uint32 is not None else [])


def _load_restricted(path: str) -> Dict[str, Any]:
    """torch.load with weights_only=True, so that opening a checkpoint (Embedder.from_checkpoint,
    --resume, --teacher) cannot run code from the file. Besides tensors and plain Python values a
    checkpoint holds NumPy's RNG state, whose four NumPy globals are allowed here and nothing else."""
    with torch.serialization.safe_globals(_numpy_rng_globals()):
        return torch.load(path, map_location="cpu", weights_only=True)


def rng_state() -> Dict[str, Any]:
    """Global RNG states: torch CPU (dropout on CPU), NumPy, Python (and CUDA if present)."""
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path: str, payload: Dict[str, Any]) -> str:
    """Atomically write `payload` (plus the format tag) to `path`; returns path."""
    payload = dict(payload, format=FORMAT)
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    tmp = os.path.join(d, f".{os.path.basename(path)}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as fh:
            torch.save(payload, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)   # atomic on POSIX: readers see the old or the new file, never half
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def resolve_checkpoint(path: str) -> str:
    """A checkpoint file, or a run folder (-> its last.pt)."""
    if os.path.isdir(path):
        cand = os.path.join(path, "last.pt")
        if not os.path.exists(cand):
            raise CheckpointError(f"run folder {path!r} has no last.pt checkpoint")
        return cand
    if not os.path.exists(path):
        raise CheckpointError(f"checkpoint {path!r} does not exist")
    return path


def load_checkpoint(path: str, expect_models: Optional[Iterable[str]] = None,
                    expect_commands: Optional[Iterable[str]] = None) -> Dict[str, Any]:
    """Load a skelfast training checkpoint on CPU and check what it holds.

    Raises CheckpointError (before any training) if the file is not a skelfast checkpoint or holds a
    model outside `expect_models` / a command outside `expect_commands`.
    """
    path = resolve_checkpoint(path)
    try:
        ck = _load_restricted(path)
    except Exception as e:  # noqa: BLE001 - any unpickling failure is "not a checkpoint"
        found = re.search(r"GLOBAL ([\w.]+)", str(e)) if isinstance(e, pickle.UnpicklingError) else None
        if found:       # torch's own message would advise weights_only=False, i.e. running the file's code
            raise CheckpointError(f"{path}: holds {found.group(1)}, which no skelfast checkpoint holds; not loaded, "
                                  f"since unpickling it could run code from the file") from None
        raise CheckpointError(f"{path}: cannot read as a torch checkpoint, truncated or corrupt? "
                              f"({type(e).__name__}: {str(e)[:300]})") from None
    if not isinstance(ck, dict) or ck.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a skelfast training checkpoint (no format {FORMAT!r}); official "
                              f"CrosSCLR/IKEM weights load through skelfast.models.load_official_checkpoint")
    missing = [k for k in ("command", "model_name", "config", "model") if k not in ck]
    if missing:     # what every reader takes from it (a KeyError deep in the Embedder before)
        raise CheckpointError(f"{path}: a damaged skelfast checkpoint, it lacks {', '.join(missing)}")
    # The command first: a checkpoint of the wrong kind (a finetune run as a teacher) is named as such,
    # not by its model.
    if expect_commands is not None and ck["command"] not in tuple(expect_commands):
        raise CheckpointError(f"{path}: is a `{ck['command']}` checkpoint, expected one of {sorted(expect_commands)}")
    if expect_models is not None and ck["model_name"] not in tuple(expect_models):
        raise CheckpointError(f"{path}: holds model {ck['model_name']!r} (from `{ck['command']}`), but this needs "
                              f"one of {sorted(expect_models)}")
    ck["path"] = path
    return ck
