"""Public op API: fused kernels behind torch.ops.skelfast.*, with autograd and fake kernels."""
from ._backend import available_backends, get_backend, set_backend
from .modalities import modalities
from .graph_conv import graph_conv  # noqa: E402  (issue 4)

__all__ = ["modalities", "available_backends", "get_backend", "set_backend"]
