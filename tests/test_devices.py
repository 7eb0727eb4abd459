"""Every op refuses tensors on more than one device (skelfast/ops/_devices.py).

A call mixing meta and CPU tensors dispatches to the op's fake (Meta) kernel; before the check its
`new_empty` output came back as a CPU result of uninitialised memory (found by a fuzz of the public
API). The same check runs under FakeTensorMode (torch.compile)."""
import pytest
import torch

import skelfast  # noqa: F401  (registers torch.ops.skelfast)
from skelfast import ops
from skelfast.ops._devices import check_one_device

MSG = "all tensor arguments must be on one device"


def meta(t):
    return t.to("meta")


def _calls():
    x2, r2 = torch.randn(2, 4), torch.randn(2, 4)
    x4 = torch.randn(2, 6, 5, 7)
    w, b, A, E = torch.randn(6 * 3, 6, 1, 1), torch.randn(6 * 3), torch.rand(3, 7, 7), torch.rand(1, 3, 7, 7)
    q, lpos, Q = torch.randn(2, 3, 8), torch.randn(2, 3), torch.randn(2, 8, 16)
    xm, scale = torch.randn(2, 3, 5, 25, 1), torch.ones(2)
    C, rm, rv = 6, torch.zeros(6), torch.ones(6)
    sel, par = [0, 1], [0] * 25
    return {
        "dropout_add_relu": lambda m: torch.ops.skelfast.dropout_add_relu(x2, m(r2), 0.5, 0),
        "dropout_add_relu (public)": lambda m: ops.dropout_add_relu(x2, m(r2), 0.5),
        "batch_norm_relu": lambda m: torch.ops.skelfast.batch_norm_relu(
            x4, torch.ones(C), torch.zeros(C), rm, m(rv), None, 1e-5, 0.0, 0),
        "graph_conv": lambda m: torch.ops.skelfast.graph_conv(x4, w, b, m(A), E, 1),
        "graph_conv importance": lambda m: torch.ops.skelfast.graph_conv(x4, w, b, A, m(E), 1),
        "contrastive_lse": lambda m: torch.ops.skelfast.contrastive_lse(q, lpos, m(Q), None, None, None, [], [],
                                                                        0.07, 0),
        "modalities": lambda m: torch.ops.skelfast.modalities(xm, m(scale), sel, par, par, []),
    }


@pytest.mark.parametrize("name", list(_calls()))
def test_a_meta_tensor_among_cpu_tensors_is_refused(name):
    call = _calls()[name]
    call(lambda t: t)                              # all on CPU: runs
    with pytest.raises(RuntimeError, match=MSG):
        call(meta)


def test_all_meta_still_runs_the_fake_kernel():
    out = ops.dropout_add_relu(meta(torch.randn(2, 4)), meta(torch.randn(2, 4)), 0.5)
    assert out.device.type == "meta" and out.shape == (2, 4)


def test_message_names_the_arguments():
    with pytest.raises(RuntimeError, match=r"skelfast::op: .* got x on cpu, residual on meta"):
        check_one_device("op", x=torch.zeros(1), residual=torch.zeros(1, device="meta"), absent=None)


def test_public_ops_infer_shapes_on_meta_tensors():
    """All-meta inputs run the fake kernels through the public wrappers (they raised from autocast,
    which knows no meta device)."""
    m = lambda *s: torch.randn(*s, device="meta")  # noqa: E731
    assert ops.info_nce(m(6, 4, 8), m(6, 4, 8), m(6, 8, 16), 0.07).shape == (6,)
    out = ops.graph_conv(m(2, 6, 5, 7), m(18, 6, 1, 1), None, torch.rand(3, 7, 7, device="meta"))
    assert out.shape == (2, 6, 5, 7) and out.device.type == "meta"
