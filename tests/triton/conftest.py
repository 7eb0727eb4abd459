"""Triton tests run on CPU tensors under the interpreter when no GPU is present (engineering.md §4).
TRITON_INTERPRET is read when @triton.jit decorates, so it is set before skelfast.triton imports."""
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
