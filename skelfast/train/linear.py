"""`python -m skelfast.train linear --checkpoint CKPT --view V`: linear evaluation (method.md §7).

Layer: training. Features are computed once (train/features.py) and a softmax regression is
trained on the cache, which is exact: the encoders are frozen, in eval mode and not augmented
(§7 'Cheap exact speed-up'). A multi-stream view averages the per-stream logits and one cross
entropy on the average trains the participating heads jointly (§7 'Fusion'). Heads start as the
official weights_init (N(0, 0.02), bias 0). SGD with the configured lr/momentum/wd, step decay at
the start of each 1-based epoch, test every `linear.eval_every` epochs and at the last; both the
last and the best top-1/top-5 are reported (§11 #11).
"""
from __future__ import annotations

import json
import os
from typing import Any, Dict, Mapping, Optional, Sequence

import torch
import torch.nn.functional as F

from .checkpoint import save_checkpoint
from .config import save_config
from .data import evaluation_data, open_split
from .features import (cached_features, calibrate_bn, check_views, eval_model_from_checkpoint,
                       resolve_evaluation, view_indices)
from .logging_utils import RunLogger, format_table, plot_table
from .loops import lr_at
from .session import start_session

__all__ = ["train_linear_heads", "topk_accuracy", "run_linear", "evaluate_checkpoint"]


def topk_accuracy(logits: torch.Tensor, labels: torch.Tensor, ks=(1, 5)) -> Dict[int, float]:
    """Top-k accuracy in % for each k (k clipped to the number of classes)."""
    out = {}
    for k in ks:
        kk = min(k, logits.shape[1])
        hit = (logits.topk(kk, dim=1).indices == labels[:, None]).any(1)
        out[k] = 100.0 * hit.float().mean().item()
    return out


def train_linear_heads(train: Mapping[str, torch.Tensor], test: Mapping[str, torch.Tensor], streams: Sequence[int],
                       num_class: int, optim: Mapping[str, Any], batch_size: int, eval_every: int, seed: int,
                       log=None, standardize: bool = False) -> Dict[str, Any]:
    """Softmax regression on cached features with the logit average of `streams` (method.md §7).

    train/test: {'feats': (S, N, H), 'labels': (N,)}. Returns the last top-1/top-5, the best top-1
    (§11 #11) with its epoch and that epoch's top-5 ('best_top5'), the per-eval curve (epoch-mean
    training loss) and the heads W (s, C, H), b (s, C) of the selected streams.
    """
    idx = list(streams)
    Xtr, ytr = train["feats"][idx].float(), train["labels"].long()
    Xte, yte = test["feats"][idx].float(), test["labels"].long()
    mu = sd = None
    if standardize:
        # z-score with training statistics (a common linear-probe variant, e.g. MAE's BN without
        # affine); folded into the returned heads, so the saved model needs no extra layer
        mu, sd = Xtr.mean(1, keepdim=True), Xtr.std(1, keepdim=True) + 1e-6
        Xtr, Xte = (Xtr - mu) / sd, (Xte - mu) / sd
    s, N, H = Xtr.shape
    g = torch.Generator().manual_seed(seed)
    W = (torch.randn(s, num_class, H, generator=g) * 0.02).requires_grad_()
    b = torch.zeros(s, num_class, requires_grad=True)
    opt = torch.optim.SGD([W, b], lr=optim["lr"], momentum=optim["momentum"], nesterov=optim["nesterov"],
                          weight_decay=optim["weight_decay"])

    def logits(X):
        # mean over streams of X_s W_s^T + b_s: the model's logit average (§7 'Fusion')
        return (torch.einsum("snh,sch->snc", X, W) + b[:, None]).mean(0)

    # official train loader: shuffle, drop_last (method.md §1.4); keep one short batch if N < batch
    bs = min(batch_size, N)
    steps = N // bs
    curve = []
    best = {"top1": -1.0, "top5": -1.0, "epoch": 0}
    epochs = optim["epochs"]
    for e in range(1, epochs + 1):
        for grp in opt.param_groups:
            grp["lr"] = lr_at(optim["lr"], e, optim["step"], optim["gamma"])
        order = torch.randperm(N, generator=g)
        loss_sum = 0.0
        for i in range(steps):
            j = order[i * bs:(i + 1) * bs]
            loss = F.cross_entropy(logits(Xtr[:, j]), ytr[j])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            loss_sum += loss.detach()
        loss = loss_sum / steps          # the epoch's mean training loss (curve and log)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"linear evaluation diverged (loss {loss.item()}) at epoch {e}; lower optim.lr")
        if e % eval_every == 0 or e == epochs:
            with torch.no_grad():
                acc = topk_accuracy(logits(Xte), yte)
            curve.append({"epoch": e, "loss": float(loss.detach()), "top1": acc[1], "top5": acc[5]})
            if acc[1] > best["top1"]:
                best = {"top1": acc[1], "top5": acc[5], "epoch": e}
            if log:
                log(f"  linear epoch {e}: loss {float(loss.detach()):.4f}, test top-1 {acc[1]:.2f}, top-5 {acc[5]:.2f}")
    last = curve[-1]
    Wf, bf = W.detach(), b.detach()
    if standardize:        # logits of (x - mu)/sd under W, b == logits of x under W/sd, b - W (mu/sd)
        Wf = Wf / sd
        bf = bf - torch.einsum("sch,sh->sc", Wf, mu[:, 0])
    return {"last_top1": last["top1"], "last_top5": last["top5"], "best_top1": best["top1"],
            "best_top5": best["top5"], "best_epoch": best["epoch"], "curve": curve,
            "W": Wf, "b": bf, "streams": idx}


def evaluate_checkpoint(cfg: Dict[str, Any], ck: Optional[Dict[str, Any]], views: Sequence[str], run_dir: str,
                        device: torch.device, data_root: str, random_init: bool = False,
                        source_name: Optional[str] = None, model_cfg: Optional[Mapping[str, Any]] = None,
                        tag: str = "model", log=print) -> Dict[str, Any]:
    """Linear evaluation of every view in `views` on one set of cached features (-> {view: results}, model)."""
    d = cfg["data"]
    train_split, test_split = open_split(data_root, d["train_split"]), open_split(data_root, d["test_split"])
    num_class = train_split.num_classes
    model, source = eval_model_from_checkpoint(ck, num_class, cfg["model"]["backend"], random_init,
                                               model_cfg, source_name)
    for v in views:
        view_indices(model, v)      # an unknown view fails before the features are computed
    if random_init:
        calibrate_bn(model, train_split, device, d["eval_batch_size"])
    amp = cfg["run"]["amp"]
    tr = cached_features(model, train_split, device, run_dir, tag, d["eval_batch_size"], amp, data_root, log)
    te = cached_features(model, test_split, device, run_dir, tag, d["eval_batch_size"], amp, data_root, log)
    results = {}
    for v in views:
        log(f"linear evaluation of {tag} ({source}), view {v!r}: {tr['feats'].shape[1]} train / "
            f"{te['feats'].shape[1]} test samples, {num_class} classes")
        res = train_linear_heads(tr, te, view_indices(model, v), num_class, cfg["optim"], d["batch_size"],
                                 cfg["linear"]["eval_every"], cfg["run"]["seed"], log, cfg["linear"]["standardize"])
        results[v] = res
    # write the heads of the first view into the model (the saved linear checkpoint)
    res = results[views[0]]
    model.set_heads_(res["streams"], res["W"], res["b"])
    return {"results": results, "model": model, "source": source, "num_class": num_class}


def run_linear(cfg: Dict[str, Any], checkpoint: Optional[str] = None, view: Optional[str] = None,
               random_init: Optional[bool] = None, run_dir: Optional[str] = None) -> Dict[str, Any]:
    """Linear evaluation of a pretrain / distill checkpoint; writes results.json, accuracy.png, linear.pt.

    view: one view, or several separated by commas ('joint,motion,all'): one run computes the
    features once and trains each view's heads on them (§7: per-modality numbers need one head per
    view). results.json holds the single view's results, or {'views': {view: results}, ...};
    linear.pt holds the heads of the first view."""
    lc = cfg["linear"]
    ck, view, random_init = resolve_evaluation(lc, "linear", checkpoint, view, random_init)
    views = [v.strip() for v in str(view).split(",")]
    if not all(views) or len(set(views)) != len(views):
        raise ValueError(f"--view {view!r}: expected one view or distinct views separated by commas")
    check_views(ck, views)
    data_note = evaluation_data(cfg, ck)
    sess = start_session(cfg, "linear", ck["model_name"], run_dir)
    logger = RunLogger(sess.run_dir, enabled=sess.info.is_main, tensorboard=cfg["run"]["tensorboard"])
    if data_note:
        logger.log(data_note)
    if not sess.info.is_main:   # nothing to share between ranks: features + heads are cheap
        return {}
    save_config(cfg, sess.run_dir)
    tag = "random" if random_init else "model"
    out = evaluate_checkpoint(cfg, ck, views, sess.run_dir, sess.device, sess.data_root, random_init,
                              tag=tag, log=logger.log)
    rows, per_view = [], {}
    for v in views:
        res = out["results"][v]
        for c in res["curve"]:
            logger.scalar(f"linear/top1_{v}", c["top1"], c["epoch"])
            logger.scalar(f"linear/top5_{v}", c["top5"], c["epoch"])
        # ck's model name: a fine-tuned checkpoint reads 'finetune:<source>', not its source's name
        rows.append({"model": f"{ck['model_name']}{' (random init)' if random_init else ''}", "view": v,
                     "last top-1": res["last_top1"], "best top-1": res["best_top1"], "last top-5": res["last_top5"],
                     "top-5 @ best": res["best_top5"]})
        per_view[v] = {k: val for k, val in res.items() if k not in ("W", "b")}
    cols = list(rows[0])
    logger.log("\n" + format_table(rows, cols))
    common = dict(checkpoint=ck["path"], source=out["source"], random_init=random_init)
    summary = dict(per_view[views[0]], view=views[0], **common) if len(views) == 1 else dict(views=per_view, **common)
    with open(os.path.join(sess.run_dir, "results.json"), "w") as fh:
        json.dump(summary, fh, indent=1)
    if cfg["run"]["plots"]:
        plot_table(rows, cols, os.path.join(sess.run_dir, "accuracy.png"), "linear evaluation (%)")
    save_checkpoint(os.path.join(sess.run_dir, "linear.pt"),
                    {"command": "linear", "model_name": f"linear:{out['source']}", "config": cfg,
                     "model": out["model"].state_dict(), "optimizer": None, "epoch": cfg["optim"]["epochs"],
                     "step": 0, "global_step": 0, "rng": None, "history": logger.history,
                     "meta": {"view": views[0], "source": out["source"]}})
    logger.close()
    return summary
