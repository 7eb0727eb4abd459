"""Fixtures for tests/data: hand-written `.skeleton` text (method.md §1.1) and a tiny prepared
synthetic dataset shared by the round-trip and feeder tests."""
import os

import pytest

from skelfast.data import synthetic
from data_fixtures import skeleton_text


@pytest.fixture
def write_skeleton(tmp_path):
    def _write(name, frames, **kw):
        path = tmp_path / name
        path.write_text(skeleton_text(frames, **kw))
        return str(path)
    return _write


@pytest.fixture(scope="session")
def tiny_synthetic(tmp_path_factory):
    """A prepared synthetic xsub folder: 6 classes x 8 samples (method.md §1.2 layout)."""
    root = tmp_path_factory.mktemp("synth")
    out = synthetic.ensure_prepared(str(root), num_classes=6, samples_per_class=8, seed=3, benchmark="xsub")
    return out, os.path.join(os.path.dirname(out), "raw")
