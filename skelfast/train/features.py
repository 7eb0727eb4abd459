"""Frozen-encoder features: an evaluation model from a checkpoint, and cached pooled features.

Layer: training. method.md §7 'Cheap exact speed-up': the encoders are frozen, in eval mode, and
the inputs are not augmented, so the pooled 256-d features of every stream can be computed once
per split and reused by every linear head / view / k-NN query. Features are cached as
`features_<tag>_<split>.pt` in the run folder: {'feats': (S, Ns, H) float32, 'labels': (Ns,),
'key': what produced them}; a cache whose key differs (another checkpoint, backend, amp, device,
data) is recomputed, never reused.
"""
from __future__ import annotations

import hashlib
import os
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn as nn

from .checkpoint import CheckpointError, load_checkpoint
from .data import Split
from .loops import autocast
from .models import LINEAR_OF, build_linear, checkpoint_source, is_fused, load_encoders, source_streams
from ..reference.models import view_streams

__all__ = ["EVALUABLE_COMMANDS", "check_views", "eval_model_from_checkpoint", "stream_features", "extract_features",
           "cached_features", "feature_key", "view_indices", "calibrate_bn"]

# Checkpoints whose encoders linear evaluation, k-NN and the Embedder read: a fine-tuning run's are
# its fine-tuned backbones (the streams of its view).
EVALUABLE_COMMANDS = ("pretrain", "distill", "finetune")


def resolve_evaluation(section: Dict[str, Any], command: str, checkpoint: Optional[str], view: Optional[str],
                       random_init: Optional[bool]) -> Tuple[Dict[str, Any], str, bool]:
    """Command-line values over the config `section` (linear / knn) for checkpoint, view and
    random_init; loads the checkpoint and writes the resolved values back into the section, so the
    saved config says what ran. Returns (checkpoint dict, view, random_init)."""
    checkpoint = checkpoint or section["checkpoint"]
    view = section["view"] if view is None else view       # an empty --view is refused by check_views
    random_init = section["random_init"] if random_init is None else random_init
    if not checkpoint:
        raise ValueError(f"{command} needs --checkpoint CKPT (a pretrain, distill or finetune checkpoint or run "
                         f"folder)")
    ck = load_checkpoint(checkpoint, expect_commands=EVALUABLE_COMMANDS)
    section["checkpoint"], section["view"], section["random_init"] = ck["path"], view, random_init
    return ck, view, random_init


def eval_model_from_checkpoint(ck: Optional[Mapping[str, Any]], num_class: int, backend: str = "skelfast",
                               random_init: bool = False, model_cfg: Optional[Mapping[str, Any]] = None,
                               source_name: Optional[str] = None, train_backbone: bool = False,
                               view: Optional[str] = None) -> Tuple[nn.Module, str]:
    """(LinearEval model, source model name) for a pretraining, distillation or fine-tuning checkpoint.

    A fine-tuning checkpoint gives its fine-tuned backbones (the streams of its view; its trained
    heads are not loaded: they are num_class-specific and every caller sets its own).
    random_init=True keeps the freshly initialised encoders (the random-init baseline) but uses the
    checkpoint's architecture. model_cfg: the model section to build from instead of the checkpoint's
    (fine-tuning: the source's architecture with the fine-tuning run's dropout); without a checkpoint,
    source_name and model_cfg give the architecture. view: only that view's streams (build_linear).
    """
    held = None
    if ck is not None:
        source_name, held = checkpoint_source(ck)
        if source_name not in LINEAR_OF:
            raise CheckpointError(f"{ck.get('path', 'checkpoint')}: model {source_name!r} has no encoders to "
                                  f"evaluate; expected a pretrain, distill or finetune checkpoint "
                                  f"({sorted(LINEAR_OF)})")
        model_cfg = ck["config"]["model"] if model_cfg is None else model_cfg
    if source_name is None or model_cfg is None:
        raise ValueError("need a checkpoint, or source_name and model_cfg for a random-init model")
    model = build_linear(source_name, model_cfg, num_class, backend, train_backbone=train_backbone, view=view,
                         held=held)
    if ck is not None and not random_init:
        load_encoders(model, source_name, ck["model"], held)
    return model, source_name


def view_indices(model: nn.Module, view: str) -> Tuple[int, ...]:
    """Stream indices of `view` (method.md §7 'Views'); raises ValueError with the accepted views."""
    return tuple(model.view_streams(view))


@torch.no_grad()
def stream_features(model: nn.Module, x: torch.Tensor, frames: torch.Tensor) -> torch.Tensor:
    """Pooled backbone features of every stream of a LinearEval: x (N, 3, T, V, M) -> (S, N, H)
    (S = 1 for the fused student). The skelfast backend's encoders are one batched network, so the
    streams run at once (6 streams, official sizes, a 128-sample batch on the 2-core CPU: 4.6-5.1 s
    stream by stream, 2.8 s batched); the reference backend runs them one after another."""
    xs = model.encoder_inputs(x, frames)                              # (S, N, C, T, V, M)
    if model.per_stream:
        return torch.stack([enc.backbone(xi).float() for enc, xi in zip(model.encoders, xs)])
    return model.encoders.backbone(xs).float()


def check_views(ck: Mapping[str, Any], views: Sequence[str]) -> None:
    """Raise ValueError for a view the checkpoint's encoders cannot give (method.md §7 'Views'), before
    anything is built or a run folder is made (a late error would leave the folder behind)."""
    source, held = checkpoint_source(ck)
    if source not in LINEAR_OF:
        return                                   # eval_model_from_checkpoint names the problem
    streams = source_streams(source) if held is None else held
    for v in views:
        if not str(v).strip():
            raise ValueError("--view is empty; give a view (joint, ..., 3views, all)")
        view_streams(streams, is_fused(source), v)


@torch.no_grad()
def extract_features(model: nn.Module, split: Split, device: torch.device, batch_size: int = 128,
                     amp: str = "none", progress=None) -> Dict[str, torch.Tensor]:
    """Features of every sample of `split` in order: {'feats': (S, Ns, H), 'labels': (Ns,)} (CPU)."""
    model.eval().to(device)
    feats = []
    n = len(split)
    for lo in range(0, n, batch_size):
        idx = np.arange(lo, min(lo + batch_size, n))
        x, _, f = split.batch(idx, device)
        with autocast(device, amp):
            feats.append(stream_features(model, x, f).cpu())
        if progress is not None:
            progress.update(len(idx))
    return {"feats": torch.cat(feats, 1), "labels": torch.from_numpy(split.labels.copy())}


# Samples whose data enter feature_key when the split has no manifest checksum.
DATA_SAMPLES_HASHED = 64


def _tensor_bytes(t: torch.Tensor) -> bytes:
    return t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


def feature_key(model: nn.Module, split: Split, device: torch.device, amp: str,
                data_root: Optional[str] = None) -> Dict[str, Any]:
    """What determines the cached features: a hash of every encoder weight and buffer (the linear
    heads excluded: they do not change the features and are set after extraction), the model class
    and its time-scale flag (not in the state dict), the encoders' class (the backend), device type,
    amp, and the split's identity: labels, frame counts and the data's content (the manifest's
    sha256 of the data file, else a hash of up to DATA_SAMPLES_HASHED evenly spaced samples), so a
    folder prepared again in place by other preprocessing code does not reuse stale features.
    Hashing the weights rather than the checkpoint path also catches a checkpoint rewritten in place
    and the random-init baseline (seeded weights, BN statistics calibrated on the data)."""
    h = hashlib.sha1()
    for k, v in sorted(model.state_dict().items()):
        if "fc" in k.split("."):
            continue
        if isinstance(v, torch.Tensor):
            h.update(f"{k}:{v.dtype}:{tuple(v.shape)}".encode())
            h.update(_tensor_bytes(v))
    d = hashlib.sha1()
    for a in (split.labels, split.frames):
        a = np.ascontiguousarray(a)
        d.update(f"{a.dtype}:{a.shape}".encode())
        d.update(a.tobytes())
    d.update(f"data:{split.data.dtype}:{tuple(split.data.shape)}".encode())
    if split.data_sha256:
        d.update(split.data_sha256.encode())
    elif len(split):
        # reading a whole NTU split (GBs) would cost about as much as extracting its features
        rows = np.unique(np.linspace(0, len(split) - 1, min(len(split), DATA_SAMPLES_HASHED)).round().astype(np.int64))
        d.update(np.ascontiguousarray(split.data[rows]).tobytes())
    enc = getattr(model, "encoders", None)   # the backend: batched (skelfast) or a list of encoders (reference)
    return {"encoders_sha1": h.hexdigest(), "model_class": f"{type(model).__module__}.{type(model).__qualname__}",
            "encoders_class": None if enc is None else f"{type(enc).__module__}.{type(enc).__qualname__}",
            "true_timeline": getattr(model, "true_timeline", None), "device": device.type, "amp": amp,
            "data_root": os.path.abspath(data_root) if data_root else None, "split": split.name,
            "num_samples": len(split), "num_classes": int(split.num_classes), "split_sha1": d.hexdigest()}


def cached_features(model: nn.Module, split: Split, device: torch.device, cache_dir: Optional[str],
                    tag: str, batch_size: int = 128, amp: str = "none", data_root: Optional[str] = None,
                    log=print) -> Dict[str, torch.Tensor]:
    """extract_features with an on-disk cache `cache_dir/features_<tag>_<split>.pt` (None = no cache).

    The cache stores feature_key(); a file produced by anything else (another checkpoint in a reused
    run folder, another backend / amp / device / dataset, or a file from before keys were stored) is
    recomputed and overwritten, with a log line saying why."""
    path = os.path.join(cache_dir, f"features_{tag}_{split.name}.pt") if cache_dir else None
    key = feature_key(model, split, device, amp, data_root) if path else None
    if path and os.path.exists(path):
        try:
            old = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - an unreadable cache is recomputed, not fatal
            old = None
            log(f"feature cache {path} is unreadable ({type(e).__name__}); recomputing")
        if isinstance(old, dict) and old.get("key") == key:
            return {"feats": old["feats"], "labels": old["labels"]}
        if old is not None:
            okey = old.get("key") if isinstance(old, dict) else None
            diff = sorted(k for k in key if not isinstance(okey, dict) or okey.get(k) != key[k])
            log(f"feature cache {path} was computed by another model/setting (differs in {diff}); recomputing")
    out = extract_features(model, split, device, batch_size, amp)
    if path:
        os.makedirs(cache_dir, exist_ok=True)
        tmp = path + ".tmp"
        torch.save(dict(out, key=key), tmp)
        os.replace(tmp, path)
    return out


@torch.no_grad()
def calibrate_bn(model: nn.Module, split: Split, device: torch.device, batch_size: int = 128) -> None:
    """Estimate every BatchNorm's running mean/variance on `split` (cumulative average, no gradient).

    Used for the random-init baseline only: a freshly initialised ST-GCN (weights N(0, 0.02), §4.2)
    run in eval mode with the initial running statistics (mean 0, var 1) shrinks activations by
    about 10x per block, so its pooled features are ~1e-9 and carry nothing but rounding noise. With
    statistics from the training data the random encoder is a meaningful baseline.
    """
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None                 # cumulative moving average over the whole split
    model.to(device)
    model.encoders.train()                # BN on batch statistics, but no dropout: eval-mode features have none
    for m in model.encoders.modules():
        if isinstance(m, nn.Dropout):
            m.eval()
    n = len(split)
    for lo in range(0, n, batch_size):
        idx = np.arange(lo, min(lo + batch_size, n))
        x, _, f = split.batch(idx, device)
        stream_features(model, x, f)
    for m in bns:
        m.momentum = 0.1
    model.eval()
