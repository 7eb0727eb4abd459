"""Fixtures for tests/train: a tiny prepared synthetic dataset (once per session) and a tiny config.

Everything runs on one intra-op thread: the CI box has 2 shared cores, and oversubscribed OpenMP
threads slow these small models down by an order of magnitude.
"""
import os

import pytest
import torch

from skelfast.data import synthetic

torch.set_num_threads(1)


@pytest.fixture(scope="session")
def synth_cache(tmp_path_factory):
    """Cache dir holding a prepared synthetic xsub dataset (4 classes x 10 samples)."""
    root = tmp_path_factory.mktemp("sfdata")
    synthetic.ensure_prepared(os.path.join(str(root), "synthetic"), num_classes=4, samples_per_class=10, seed=0,
                              benchmark="xsub")
    return str(root)


def tiny_sets(synth_cache, out_dir, **extra):
    """--set items for a seconds-long run: 4-channel encoders, 16-d features, queue 32, batch 8."""
    s = {"data.synthetic.num_classes": 4, "data.synthetic.samples_per_class": 10,
         "data.synthetic.cache_dir": synth_cache, "data.batch_size": 8, "data.eval_batch_size": 64,
         "model.hidden_channels": 4, "model.hidden_dim": 16, "model.feature_dim": 16, "model.queue_size": 32,
         "model.dropout": 0.0, "run.out_dir": str(out_dir), "run.num_threads": 1, "run.progress": False,
         "run.tensorboard": True, "run.plots": True}
    s.update(extra)
    return [f"{k}={v}" for k, v in s.items()]


@pytest.fixture
def tiny(synth_cache, tmp_path):
    def make(**extra):
        return tiny_sets(synth_cache, tmp_path / "runs", **extra)
    return make
