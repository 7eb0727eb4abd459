"""A converged tiny run: linear accuracy of pretrained features beats random-init features clearly.

Small enough for CI on the 2-core box (~1 minute for three seeds): 3-modality model (crossclr3) with 4-channel
encoders on a 6-class synthetic set, then the linear protocol of train/linear.py (standardised
cached features) on the pretrained encoders and on a random-init encoder of the same architecture
(BN statistics from the training set, train/features.py calibrate_bn).
"""
import os

import torch

from skelfast.data import synthetic
from skelfast.train.checkpoint import load_checkpoint
from skelfast.train.config import load_config
from skelfast.train.data import resolve_data_root
from skelfast.train.linear import evaluate_checkpoint
from skelfast.train.pretrain import run_pretrain


# Run-to-run spread at this size is large (68 test samples, 1.5 points each). With the official tau =
# 0.07 the margin swung from -10.3 to +26.5 points over seeds 0-3 and lr 0.03-0.3 (MoCo on a 32-key
# queue is unstable; a change of summation order in graph_conv alone moved seed 0 from +8.8 to
# +2.9). With MoCo v2's tau = 0.2: +5.9 to +17.6 over seeds 0-5 (skelfast backend) and +8.8 to
# +22.1 over seeds 0-3 (reference backend). The fused batch_norm_relu op (rounding only: its
# phase-1 losses match the previous run to 4 digits) gave +4.4, +17.6, +8.8, +13.2, +17.6, +4.4
# over seeds 0-5, so one seed cannot carry a 5-point bar: the test asserts every seed's margin is
# positive and their mean is at least 5 points.
SEEDS = (0, 1, 2)


def pretrain_and_probe(tmp_path_factory, seed: int):
    """(linear top-1 of the pretrained encoders, of random-init encoders) for one seed."""
    cache = str(tmp_path_factory.mktemp("conv"))
    sets = {"data.synthetic.num_classes": 6, "data.synthetic.samples_per_class": 24, "data.synthetic.cache_dir": cache,
            "data.batch_size": 16, "data.eval_batch_size": 128, "model.hidden_channels": 4, "model.hidden_dim": 32,
            "model.feature_dim": 32, "model.queue_size": 32, "model.momentum": 0.9, "model.dropout": 0.0,
            "model.tau": 0.2,
            "parity.independent_key_init": False, "optim.lr": 0.3, "optim.epochs": 12, "optim.step": [10],
            "pretrain.cross_epoch": 8, "run.out_dir": str(tmp_path_factory.mktemp("runs")), "run.name": "pre",
            "run.seed": seed, "run.num_threads": 1, "run.progress": False, "run.tensorboard": False,
            "run.plots": False}
    cfg = load_config("crossclr3", [f"{k}={v}" for k, v in sets.items()])
    res = run_pretrain(cfg)
    ck = load_checkpoint(res["checkpoint"])
    losses = [h["value"] for h in ck["history"] if h["tag"] == "train/loss"]
    assert len(losses) == 12 * (ck["global_step"] // 12) and all(l == l for l in losses)   # finite, every step logged

    lin = load_config("linear", [f"{k}={v}" for k, v in sets.items()] +
                      ["linear.standardize=true", "optim.lr=0.3", "data.batch_size=16", "linear.eval_every=10"])
    root = resolve_data_root(lin)
    accs = {}
    for tag, rnd in (("model", False), ("random", True)):
        torch.manual_seed(0)
        out = evaluate_checkpoint(lin, ck, ["all"], os.path.join(res["run_dir"], "lin"), torch.device("cpu"), root,
                                  random_init=rnd, tag=tag, log=lambda m: None)
        accs[tag] = out["results"]["all"]["last_top1"]
    return accs["model"], accs["random"]


def test_pretraining_beats_random_init(tmp_path_factory):
    chance = 100.0 / 6
    margins = []
    for seed in SEEDS:
        model, random = pretrain_and_probe(tmp_path_factory, seed)
        print(f"seed {seed}: linear top-1 (last), trained {model:.1f} vs random init {random:.1f}")
        assert random > chance, (seed, model, random)
        assert model > random, (seed, model, random)
        margins.append(model - random)
    assert sum(margins) / len(margins) >= 5.0, margins
