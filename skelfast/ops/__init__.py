"""Public op API: fused kernels behind torch.ops.skelfast.*, with autograd and fake kernels."""
from ._backend import available_backends, get_backend, set_backend
from .modalities import modalities

__all__ = ["modalities", "available_backends", "get_backend", "set_backend"]
