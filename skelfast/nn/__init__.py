"""skelfast.nn: fast modules built on skelfast ops (batched multi-modality ST-GCN encoder)."""
from .batched_stgcn import BatchedLinear, BatchedSTGCN, BatchedSTGCNBlock
from .stacked_encoders import StackedEncoders

__all__ = ["BatchedSTGCN", "BatchedSTGCNBlock", "BatchedLinear", "StackedEncoders"]
