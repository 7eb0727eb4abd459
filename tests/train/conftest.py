"""Fixtures for tests/train: a tiny prepared synthetic dataset (once per session) and a tiny config.

Everything runs on one intra-op thread: the CI box has 2 shared cores, and oversubscribed OpenMP
threads slow these small models down by an order of magnitude.
"""
import os

import pytest
import torch

from skelfast.data import synthetic

from train_fixtures import tiny_sets

torch.set_num_threads(1)


@pytest.fixture(scope="session")
def synth_cache(tmp_path_factory):
    """Cache dir holding a prepared synthetic xsub dataset (4 classes x 10 samples)."""
    root = tmp_path_factory.mktemp("sfdata")
    synthetic.ensure_prepared(os.path.join(str(root), "synthetic"), num_classes=4, samples_per_class=10, seed=0,
                              benchmark="xsub")
    return str(root)


@pytest.fixture
def tiny(synth_cache, tmp_path):
    def make(**extra):
        return tiny_sets(synth_cache, tmp_path / "runs", **extra)
    return make
