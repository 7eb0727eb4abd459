"""skelfast.nn: fast modules built on skelfast ops (batched multi-modality ST-GCN encoder)."""
from .batched_stgcn import BatchedLinear, BatchedSTGCN, BatchedSTGCNBlock

__all__ = ["BatchedSTGCN", "BatchedSTGCNBlock", "BatchedLinear"]
