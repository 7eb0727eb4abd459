"""Pin float32 arithmetic on CUDA to IEEE fp32 (no TF32) for oracle comparisons and fair timings.

Why: PyTorch's defaults differ per library. cuBLAS matmuls run in full fp32, but cuDNN convolutions
use TF32 (10-bit mantissa, relative error ~1e-3, performance.md §6). The eager reference's ST-GCN
is built from nn.Conv2d, so on a GPU its fp32 results carry TF32 rounding that skelfast's fp32 graph
convolution (cuBLAS, no TF32) does not (on the lent H100 the graph_conv weight gradient at
Cin=Cout=16, T=13 differed by 1.4e-2 from the reference, against an fp32 tolerance of 3e-5). Tests
pin both units to IEEE so that the fp32 oracle is an fp32 oracle (engineering.md §7: "pin TF32
flags in references"); the benchmarks do too, so every fp32 provider computes the same
arithmetic (bf16 rows measure the tensor cores). CPU arithmetic is unaffected.
"""
from __future__ import annotations

import torch

__all__ = ["pin_ieee_fp32", "fp32_precision_summary"]


def pin_ieee_fp32() -> None:
    """Full fp32 for cuBLAS matmuls and cuDNN convolutions (process-wide).

    Through the legacy flags on purpose: after any use of the newer per-unit `fp32_precision`
    API, reading `torch.backends.cudnn.allow_tf32` raises ("a mix of the legacy and new APIs",
    torch 2.13), and inductor and user code still read it."""
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False


def fp32_precision_summary() -> str:
    """'matmul=<mode> conv=<mode>' (for benchmark logs). Reading the legacy flags raises once the
    per-unit API (fp32_precision) has been used in the process; a log line must not end a run."""
    try:
        return (f"matmul={'tf32' if torch.backends.cuda.matmul.allow_tf32 else 'ieee'} "
                f"conv={'tf32' if torch.backends.cudnn.allow_tf32 else 'ieee'}")
    except RuntimeError as exc:
        return f"unknown ({str(exc).splitlines()[0][:80]})"
