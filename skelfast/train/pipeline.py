"""`python -m skelfast.train` with no arguments: the whole method on the synthetic dataset.

Layer: training. Stages (each in its own sub-folder of one run folder):
  1. pretrain  ikem6, phase 1 then phase 2 (method.md §5)
  2. distill   student6to3 from the pretrained teacher (§6.1)
  3. linear    linear evaluation (§7, view 'all') of the 6-modality teacher, the 3-modality student
               and randomly initialised encoders of the same two architectures (the baselines; BN
               statistics from the training set, features.calibrate_bn), plus k-NN top-1 for each,
               printed as one table and saved as results.json / accuracy.png.
Stage settings are the top-level config with `pipeline.<stage>` overrides (configs/quick.yaml).
"""
from __future__ import annotations

import copy
import json
import os
import time
from typing import Any, Dict, List, Mapping

from .config import ConfigError, _expand_dotted, merge, save_config, validate
from .logging_utils import RunLogger, format_table, make_run_dir, plot_table

__all__ = ["run_pipeline", "stage_config", "check_overrides_reach_stages"]


def _dotted_keys(d: Mapping[str, Any], prefix: str = "") -> List[str]:
    out = []
    for k, v in d.items():
        if isinstance(v, Mapping):
            out += _dotted_keys(v, f"{prefix}{k}.")
        else:
            out.append(f"{prefix}{k}")
    return out


def check_overrides_reach_stages(cfg: Mapping[str, Any], keys: List[str]) -> None:
    """Refuse top-level overrides (`--epochs`, `--set optim.lr=...`) that a stage's `pipeline.<stage>`
    override would replace: they would be ignored without a word. Names the keys to set instead."""
    hidden = []
    for stage, over in (cfg.get("pipeline") or {}).items():
        stage_keys = set(_dotted_keys(_expand_dotted(over or {})))
        hidden += [f"pipeline.{stage}.{k}" for k in keys if k in stage_keys]
    if hidden:
        names = sorted(set(k.split(".", 2)[2] for k in hidden))
        raise ConfigError(f"pipeline: {', '.join(names)} {'is' if len(names) == 1 else 'are'} set per stage by the "
                          f"preset, which would override the top-level value; set the stage keys instead, "
                          f"e.g. --set {hidden[0]}=... (stage keys: {', '.join(hidden)})")


def stage_config(cfg: Dict[str, Any], stage: str, run_dir: str) -> Dict[str, Any]:
    over = _expand_dotted((cfg.get("pipeline") or {}).get(stage) or {})
    out = merge({k: v for k, v in cfg.items() if k != "pipeline"}, over)
    out["run"]["out_dir"], out["run"]["name"] = run_dir, stage
    validate(out, stage)      # pretrain / distill stages get the batch-vs-queue check
    return out


def run_pipeline(cfg: Dict[str, Any]) -> Dict[str, Any]:
    import torch

    from .distill import run_distill
    from .features import eval_model_from_checkpoint
    from .knn import knn_accuracy
    from .linear import evaluate_checkpoint
    from .checkpoint import load_checkpoint
    from .data import open_split, resolve_data_root
    from .loops import resolve_device
    from .pretrain import run_pretrain

    t0 = time.perf_counter()
    r = cfg["run"]
    run_dir = make_run_dir(cfg, "pipeline")   # never into a folder that holds a run (as the sub-commands)
    save_config(cfg, run_dir)
    logger = RunLogger(run_dir, tensorboard=False)
    log = logger.log
    log(f"skelfast pipeline -> {run_dir}")

    pre_cfg = stage_config(cfg, "pretrain", run_dir)
    log(f"[1/3] pretrain {pre_cfg['model']['name']} ({pre_cfg['optim']['epochs']} epochs, phase 2 after epoch "
        f"{pre_cfg['pretrain']['cross_epoch']})")
    pre = run_pretrain(pre_cfg)
    if pre.get("interrupted"):
        return pre
    dis_cfg = stage_config(cfg, "distill", run_dir)
    log(f"[2/3] distill {dis_cfg['model']['name']} ({dis_cfg['optim']['epochs']} epochs)")
    dis = run_distill(dis_cfg, teacher=pre["checkpoint"])
    if dis.get("interrupted"):
        return dis

    lin_cfg = stage_config(cfg, "linear", run_dir)
    lin_dir = os.path.join(run_dir, "linear")
    os.makedirs(lin_dir, exist_ok=True)
    save_config(lin_cfg, lin_dir)
    log("[3/3] linear evaluation (cached frozen features) and k-NN")
    if lin_cfg["run"]["num_threads"]:
        torch.set_num_threads(int(lin_cfg["run"]["num_threads"]))
    device = resolve_device(lin_cfg["run"]["device"])
    root = resolve_data_root(lin_cfg)
    tck = load_checkpoint(pre["checkpoint"])
    sck = load_checkpoint(dis["checkpoint"])
    rows = []
    d = lin_cfg["data"]
    # each trained model next to a random-init encoder of its own architecture (same streams,
    # same feature size), so the gap measures what training added
    entries = [("6-modality teacher (ikem6)", tck, False, "teacher"),
               ("random-init 6-modality encoder", tck, True, "random"),
               ("3-modality student (student6to3)", sck, False, "student"),
               ("random-init 3-modality encoder", sck, True, "random_student")]
    tr_split, te_split = open_split(root, d["train_split"]), open_split(root, d["test_split"])
    for label, ck, rnd, tag in entries:
        torch.manual_seed(lin_cfg["run"]["seed"])   # the random-init baseline is seeded too
        out = evaluate_checkpoint(lin_cfg, ck, ["all"], lin_dir, device, root, random_init=rnd, tag=tag,
                                  log=lambda m: None)
        res = out["results"]["all"]
        from .features import cached_features
        # same batch / amp / data as evaluate_checkpoint, so these hit the cache it just wrote
        amp = lin_cfg["run"]["amp"]
        tr = cached_features(out["model"], tr_split, device, lin_dir, tag, d["eval_batch_size"], amp, root, log)
        te = cached_features(out["model"], te_split, device, lin_dir, tag, d["eval_batch_size"], amp, root, log)
        kn = knn_accuracy(tr, te, res["streams"], out["num_class"], lin_cfg["knn"]["k"], lin_cfg["knn"]["temperature"])
        rows.append({"model": label, "linear top-1 (last)": res["last_top1"], "linear top-1 (best)": res["best_top1"],
                     "top-5 (last)": res["last_top5"], "k-NN top-1": kn["top1"]})
    num_class = tr_split.num_classes
    cols = list(rows[0])
    secs = time.perf_counter() - t0
    table = format_table(rows, cols)
    log(f"\nsynthetic {num_class}-class {lin_cfg['data']['benchmark']} ({len(tr_split)} train / {len(te_split)} test, "
        f"chance {100.0 / num_class:.1f}%), view 'all':\n{table}\n\ntotal wall time {secs / 60:.1f} min; "
        f"run folder {run_dir}")
    summary = {"rows": rows, "chance": 100.0 / num_class, "seconds": secs, "run_dir": run_dir,
               "pretrain_checkpoint": pre["checkpoint"], "distill_checkpoint": dis["checkpoint"]}
    with open(os.path.join(run_dir, "results.json"), "w") as fh:
        json.dump(summary, fh, indent=1)
    if r["plots"]:
        plot_table(rows, cols, os.path.join(run_dir, "accuracy.png"), f"linear evaluation (%), chance {100 / num_class:.0f}%")
        for stage in ("pretrain", "distill"):
            src = os.path.join(run_dir, stage, "loss.png")
            if os.path.exists(src):
                log(f"loss curves: {src}")
    logger.close()
    return summary
