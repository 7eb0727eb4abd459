"""tests/reference: run the tiny reference models single-threaded.

The models here are tiny, so intra-op threads buy nothing, and on a busy 2-core box OpenMP
oversubscription made one 30-step training test 20x slower (2.5 s -> 54 s).
"""
import pytest
import torch


@pytest.fixture(autouse=True)
def _single_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
