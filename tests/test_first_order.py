"""Double backward through the fused ops raises instead of returning a wrong second derivative.

The ops' backward kernels have no autograd formulas (skelfast/ops/_first_order.py). Before the
guard, create_graph=True went through and the second derivative silently treated the op's gradient
as a constant (a Hessian-vector product of 0, or one missing the op's share, with at most a
UserWarning). Each op here: a first-order gradient with create_graph=True still equals the plain
one, and differentiating it again raises an error that names the op. fp64, tiny shapes.
"""
import pytest
import torch
import torch.nn.functional as F

from skelfast import ops
from skelfast._extension import has_cpu_kernels
from skelfast.reference.graph import spatial_adjacency

pytestmark = pytest.mark.skipif(not (has_cpu_kernels() and hasattr(torch.ops.skelfast, "contrastive_lse")),
                                reason="skelfast._C not built")


def _gen():
    return torch.Generator().manual_seed(0)


def _graph_conv(x):
    g = _gen()
    A = spatial_adjacency("ntu25").double()
    w = torch.randn(2 * 3 * 4, 3, 1, 1, generator=g, dtype=torch.float64, requires_grad=True)
    return ops.graph_conv(x, w, None, A, None, 2)


def _batch_norm_relu(x):
    C = x.shape[1]
    w = torch.ones(C, dtype=torch.float64, requires_grad=True)
    return ops.batch_norm_relu(x, None, None, w, torch.zeros(C, dtype=torch.float64), True)


def _dropout_add_relu(x):
    return ops.dropout_add_relu(x, x.flip(0), p=0.3, training=True, generator=_gen())


def _unit(*shape, dim=-1, dtype=torch.float64):
    return F.normalize(torch.randn(*shape, generator=_gen(), dtype=torch.float64), dim=dim).to(dtype)


def _info_nce_fp32(x):
    q = F.normalize(x.flatten(1)[:, :16].reshape(2, -1, 16), dim=-1).float()
    return ops.info_nce(q, _unit(2, q.shape[1], 16, dtype=torch.float32), _unit(2, 16, 40, dim=1, dtype=torch.float32))


def _context_loss_fp64(x):
    q = F.normalize(x.flatten(1)[:, :16].reshape(2, -1, 16), dim=-1)
    return ops.context_loss(q, _unit(2, q.shape[1], 16), _unit(2, 16, 40, dim=1), topk=2)


def _modalities(x):
    return ops.modalities(x[:, :3, :, :, None].contiguous(), torch.tensor([30, 40, 50, 60]))


CASES = {"modalities": (_modalities, "skelfast::modalities"),
         "graph_conv": (_graph_conv, "skelfast::graph_conv"),
         "batch_norm_relu": (_batch_norm_relu, "skelfast::batch_norm_relu"),
         "dropout_add_relu": (_dropout_add_relu, "skelfast::dropout_add_relu"),
         "info_nce fp32 (gradient formed in the forward)": (_info_nce_fp32, "skelfast::contrastive_lse"),
         "context_loss fp64 (backward kernel)": (_context_loss_fp64, "skelfast::contrastive_lse")}


@pytest.mark.parametrize("case", list(CASES))
def test_first_order_create_graph_works_second_order_raises(case):
    fn, op = CASES[case]
    x0 = torch.randn(4, 6, 3, 25, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    w = torch.randn(fn(x0).shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    x = x0.clone().requires_grad_(True)
    (plain,) = torch.autograd.grad((fn(x) * w.to(fn(x).dtype)).sum(), x)
    x = x0.clone().requires_grad_(True)
    (g,) = torch.autograd.grad((fn(x) * w.to(fn(x).dtype)).sum(), x, create_graph=True)
    torch.testing.assert_close(g, plain)
    with pytest.raises(RuntimeError, match=f"{op} supports first-order gradients only"):
        torch.autograd.grad((g * torch.randn_like(g)).sum(), x)
