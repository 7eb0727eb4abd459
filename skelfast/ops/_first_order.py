"""First-order-only backward formulas for the custom ops.

The ops' backward kernels (modalities_backward, graph_conv_backward, batch_norm_relu_backward,
dropout_add_relu_backward, contrastive_lse_backward) have no autograd formulas of their own, and
the losses' query gradient formed in the forward is a constant. Left alone, a second backward (create_graph=True, e.g. a
Hessian-vector product or an input-gradient penalty) would treat them as constants and return a
silently wrong (partly zero) second derivative. `first_order(op)` wraps a backward registered with
torch.library.register_autograd: it runs the formula under no_grad and, when a graph is being
created, routes its gradients through a node that raises if they are differentiated again. A
first-order create_graph=True (other terms of a loss needing second derivatives) still works.
"""
from __future__ import annotations

import functools

import torch

__all__ = ["first_order"]


def first_order(op: str):
    """Decorator for the backward of custom op `op` (name used in the error message)."""
    message = (f"{op} supports first-order gradients only: double backward through it is not implemented "
               "(SKELFAST_BACKEND=torch runs the differentiable PyTorch composite)").encode()

    def decorate(backward):
        @functools.wraps(backward)
        def wrapper(ctx, *grads):
            with torch.no_grad():
                out = backward(ctx, *grads)
            if not torch.is_grad_enabled():
                return out
            # The error node must lie on the path to whatever a second backward differentiates for,
            # so its inputs include the saved tensors (and incoming grads) that belong to the graph.
            anchors = [t for t in (*ctx.saved_tensors, *grads) if isinstance(t, torch.Tensor) and t.requires_grad]
            if not anchors:
                return out
            single = not isinstance(out, tuple)
            outs = (out,) if single else out
            err = torch._C._functions.DelayedError(message, len(outs) + len(anchors))
            marked = [None if t is None else t.detach().requires_grad_() for t in outs]
            res = tuple(err(*marked, *anchors)[:len(outs)])
            return res[0] if single else res
        return wrapper
    return decorate
