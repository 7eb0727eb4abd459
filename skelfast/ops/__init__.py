"""Public op API: fused kernels behind torch.ops.skelfast.*, with autograd and fake kernels."""
from ._backend import available_backends, get_backend, set_backend
from .epilogue import dropout_add_relu
from .batch_norm_relu import batch_norm_relu
from .graph_conv import graph_conv
from .losses import context_loss, context_pair_losses, ikem_loss, info_nce, phase2_loss, relational_distill_loss
from .modalities import modalities

__all__ = ["modalities", "graph_conv", "dropout_add_relu", "batch_norm_relu", "info_nce", "context_loss",
           "context_pair_losses", "ikem_loss", "phase2_loss", "relational_distill_loss", "available_backends",
           "get_backend", "set_backend"]
