"""`python -m skelfast.train knn --checkpoint CKPT`: k-NN evaluation of frozen features.

Layer: training. The pooled features of the view's streams (computed once, train/features.py) are
L2-normalised per stream and concatenated (then renormalised); each test sample takes the k most
cosine-similar training samples and votes with weights exp(sim / temperature) (the weighted k-NN
of instance-discrimination papers). No training, so it is a cheap first look at a checkpoint.
"""
from __future__ import annotations

import json
import os
from typing import Any, Dict, Mapping, Optional, Sequence

import torch
import torch.nn.functional as F

from .config import save_config
from .data import evaluation_data, open_split
from .features import (cached_features, calibrate_bn, check_views, eval_model_from_checkpoint,
                       resolve_evaluation, view_indices)
from .linear import topk_accuracy
from .logging_utils import RunLogger, format_table
from .session import start_session

__all__ = ["knn_scores", "knn_accuracy", "run_knn", "fused_features"]


def fused_features(feats: torch.Tensor, streams: Sequence[int]) -> torch.Tensor:
    """(S, N, H) -> (N, s*H): per-stream unit features of `streams`, concatenated and renormalised."""
    f = F.normalize(feats[list(streams)].float(), dim=-1)
    return F.normalize(f.transpose(0, 1).reshape(f.shape[1], -1), dim=-1)


def knn_scores(train_f: torch.Tensor, train_y: torch.Tensor, test_f: torch.Tensor, num_class: int, k: int = 20,
               temperature: float = 0.07, chunk: int = 1024) -> torch.Tensor:
    """Class scores (Nte, C) of a weighted k-NN vote; features are unit vectors (N, D)."""
    k = min(k, train_f.shape[0])
    out = []
    for lo in range(0, test_f.shape[0], chunk):
        sim = test_f[lo:lo + chunk] @ train_f.T                       # cosine similarities
        w, j = sim.topk(k, dim=1)
        votes = torch.zeros(sim.shape[0], num_class)
        votes.scatter_add_(1, train_y[j], (w / temperature).exp())
        out.append(votes)
    return torch.cat(out)


def knn_accuracy(train: Mapping[str, torch.Tensor], test: Mapping[str, torch.Tensor], streams: Sequence[int],
                 num_class: int, k: int, temperature: float) -> Dict[str, float]:
    scores = knn_scores(fused_features(train["feats"], streams), train["labels"].long(),
                        fused_features(test["feats"], streams), num_class, k, temperature)
    acc = topk_accuracy(scores, test["labels"].long())
    return {"top1": acc[1], "top5": acc[5]}


def run_knn(cfg: Dict[str, Any], checkpoint: Optional[str] = None, view: Optional[str] = None,
            random_init: Optional[bool] = None, run_dir: Optional[str] = None) -> Dict[str, Any]:
    kc = cfg["knn"]
    ck, view, random_init = resolve_evaluation(kc, "knn", checkpoint, view, random_init)
    check_views(ck, [view])
    data_note = evaluation_data(cfg, ck)
    sess = start_session(cfg, "knn", ck["model_name"], run_dir)
    if not sess.info.is_main:
        return {}
    logger = RunLogger(sess.run_dir, tensorboard=False)
    if data_note:
        logger.log(data_note)
    save_config(cfg, sess.run_dir)
    d = cfg["data"]
    tr_split, te_split = open_split(sess.data_root, d["train_split"]), open_split(sess.data_root, d["test_split"])
    model, source = eval_model_from_checkpoint(ck, tr_split.num_classes, cfg["model"]["backend"], random_init)
    streams = view_indices(model, view)
    if random_init:
        calibrate_bn(model, tr_split, sess.device, d["eval_batch_size"])
    tag = "random" if random_init else "model"
    amp = cfg["run"]["amp"]
    tr = cached_features(model, tr_split, sess.device, sess.run_dir, tag, d["eval_batch_size"], amp, sess.data_root,
                         logger.log)
    te = cached_features(model, te_split, sess.device, sess.run_dir, tag, d["eval_batch_size"], amp, sess.data_root,
                         logger.log)
    k = min(kc["k"], len(tr_split))
    if k < kc["k"]:   # the table reports the k that voted
        logger.log(f"knn.k={kc['k']} exceeds the {len(tr_split)} training samples; every one votes (k={k})")
    acc = knn_accuracy(tr, te, streams, tr_split.num_classes, k, kc["temperature"])
    row = {"model": ck["model_name"] + (" (random init)" if random_init else ""), "view": view, "k": k,
           "top-1": acc["top1"], "top-5": acc["top5"]}
    logger.log("\n" + format_table([row], list(row)))
    res = dict(acc, checkpoint=ck["path"], view=view, k=k, source=source, random_init=random_init)
    with open(os.path.join(sess.run_dir, "results.json"), "w") as fh:
        json.dump(res, fh, indent=1)
    logger.close()
    return res
