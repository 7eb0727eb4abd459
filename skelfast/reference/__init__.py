"""Plain eager PyTorch implementation of the method (method.md): the oracle and the baseline."""
from .modalities import modalities, nrm

__all__ = ["modalities", "nrm"]
