"""Graph (method.md §4.1), ST-GCN encoder (§4.2) and parameter counts (§4.3) of skelfast.reference."""
import pytest
import torch
import torch.nn as nn

from skelfast.reference import build
from skelfast.reference.graph import hop_distance, spatial_adjacency
from skelfast.reference.stgcn import STGCN, graph_conv_reference
from skelfast.topology import COCO17, NTU25_IKEM

from _ref_helpers import skeleton


def nparams(module, trainable_only=False):
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


# ---------------------------------------------------------------- graph, method.md §4.1
def test_ntu_adjacency_shape_dtype_and_entry_counts():
    A = spatial_adjacency("ntu25")
    assert A.shape == (3, 25, 25) and A.dtype == torch.float32
    # §4.1: A[0] 25 self-loops, A[1] 40 entries (root + close), A[2] 8 entries (further).
    assert [(A[k] > 0).sum().item() for k in range(3)] == [25, 40, 8]


def test_ntu_adjacency_A2_entries_exactly_as_listed():
    A = spatial_adjacency()
    expected = {(20, 1): 1 / 3, (20, 2): 1 / 3, (20, 4): 1 / 3, (20, 8): 1 / 3,
                (1, 0): 1 / 4, (2, 3): 1 / 2, (4, 5): 1 / 3, (8, 9): 1 / 3}  # (row j, column i), method.md §4.1
    got = {tuple(ix): A[2][tuple(ix)].item() for ix in torch.nonzero(A[2]).tolist()}
    assert set(got) == set(expected)
    for ix, v in expected.items():
        assert got[ix] == pytest.approx(v, abs=1e-7)


def test_ntu_adjacency_column_sums_and_degrees():
    A = spatial_adjacency()
    torch.testing.assert_close(A.sum(0).sum(0), torch.ones(25))  # §4.1: sum_k A[k] columns sum to 1
    deg = [4, 3, 3, 2, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 2, 3, 3, 3, 2, 5, 2, 3, 2, 3]  # §4.1, 0-based
    torch.testing.assert_close(torch.diagonal(A[0]), 1.0 / torch.tensor(deg, dtype=torch.float32))
    # A[0] is exactly the self-loop part; the union of A[1] and A[2] supports is the 24 undirected edges.
    assert torch.count_nonzero(A[0] - torch.diag(torch.diagonal(A[0]))) == 0
    support = ((A[1] + A[2]) > 0)
    assert torch.equal(support, support.T) and support.sum().item() == 48


def test_hop_distance_is_capped_at_max_hop():
    hop = hop_distance(25, NTU25_IKEM.edges, 1)
    dc = hop[:, 20]
    assert dc[20] == 0 and sorted(torch.nonzero(dc == 1).flatten().tolist()) == [1, 2, 4, 8]
    assert torch.isinf(dc).sum() == 20  # §4.1: every other joint is 'infinitely' far from the centre


def test_coco_adjacency_from_its_edges():
    A = spatial_adjacency("coco17")
    assert A.shape == (3, 17, 17)
    torch.testing.assert_close(A.sum(0).sum(0), torch.ones(17))
    support = (A.sum(0) > 0) & ~torch.eye(17, dtype=torch.bool)
    edges = {tuple(sorted(e)) for e in COCO17.edges}
    assert {tuple(sorted(ix)) for ix in torch.nonzero(support).tolist()} == edges


# ---------------------------------------------------------------- spatial unit
def test_graph_conv_reference_matches_explicit_sum():
    g = torch.Generator().manual_seed(1)
    B, Cin, Cout, T, V = 2, 3, 5, 4, 25
    x = torch.randn(B, Cin, T, V, generator=g, dtype=torch.float64)
    W = torch.randn(3 * Cout, Cin, 1, 1, generator=g, dtype=torch.float64)
    b = torch.randn(3 * Cout, generator=g, dtype=torch.float64)
    A = spatial_adjacency().double()
    E = torch.rand(3, V, V, generator=g, dtype=torch.float64)
    out = graph_conv_reference(x, W, b, A, E)
    # out[b,c,t,w] = sum_k sum_v (W_k x + b_k)[c,t,v] A[k,v,w] E[k,v,w]  (method.md §4.1 aggregation)
    y = torch.einsum("oi,bitv->botv", W[:, :, 0, 0], x) + b[None, :, None, None]
    ref = torch.zeros(B, Cout, T, V, dtype=torch.float64)
    for k in range(3):
        ref += y[:, k * Cout:(k + 1) * Cout] @ (A[k] * E[k])
    torch.testing.assert_close(out, ref)
    torch.testing.assert_close(graph_conv_reference(x, W[:, :, 0, 0], b, A, None),
                               graph_conv_reference(x, W, b, A, torch.ones_like(A)))


# ---------------------------------------------------------------- encoder, method.md §4.2-§4.3
def test_parameter_counts_full_size_encoder():
    enc = STGCN(hidden_channels=16, hidden_dim=256, head="mlp", feature_dim=128)
    assert nparams(enc) == 920_068
    assert len(list(enc.parameters())) == 108 and len(list(enc.buffers())) == 73  # §4.3
    backbone = STGCN(hidden_channels=16, hidden_dim=256, head=None)
    assert nparams(backbone) == 821_380
    assert nparams(backbone.data_bn) == 150 and nparams(backbone.edge_importance) == 18_750
    per_block = [nparams(b) for b in backbone.st_gcn_networks]
    assert per_block == [2576, 3200, 3200, 3200, 11616, 12544, 12544, 45760, 49664, 658176]  # §4.2 table
    lin = STGCN(head="linear", num_class=60)
    assert nparams(lin) == 836_800 and nparams(lin.fc) == 15_420


def test_parameter_counts_full_size_models():
    # method.md §4.3, read from the instantiated official model.
    m6 = build("ikem6")
    assert nparams(m6) == 15_768_624 and nparams(m6, trainable_only=True) == 10_248_216
    assert nparams(m6.ikem_heads[0]) == 787_968
    assert m6.queues.queue.shape == (6, 128, 32768)
    m3 = build("crossclr3")
    assert nparams(m3) == 6_259_992 and nparams(m3.ikem_heads[0]) == 246_528
    ts = build("student6to3")
    assert nparams(ts) == 10_348_452 and nparams(ts, trainable_only=True) == 4_828_044
    assert nparams(ts.students[0]) == 1_609_348
    le = build("linear6")
    assert nparams(le) == 5_020_800
    assert nparams(build("linear6", num_class=120).encoders[0]) == 852_220


def test_block_structure_strides_residuals_dropout():
    enc = STGCN(hidden_channels=4, hidden_dim=32)
    kinds = [b.residual_kind for b in enc.st_gcn_networks]
    assert kinds == ["none", "identity", "identity", "identity", "conv", "identity", "identity", "conv", "identity",
                     "conv"]
    strides = [b.tcn[2].stride[0] for b in enc.st_gcn_networks]
    assert strides == [1, 1, 1, 1, 2, 1, 1, 2, 1, 1]
    assert [b.tcn[4].p for b in enc.st_gcn_networks] == [0.0] + [0.5] * 9
    assert isinstance(enc.st_gcn_networks[0].gcn.conv, nn.Conv2d)
    assert enc.st_gcn_networks[0].gcn.conv.out_channels == 3 * 4
    # Residual kind follows the shapes: 4h -> hidden_dim with hidden_dim == 4h is an identity.
    assert STGCN(hidden_channels=4, hidden_dim=16).st_gcn_networks[9].residual_kind == "identity"
    assert torch.equal(enc.A, spatial_adjacency())


def test_official_initialisation():
    torch.manual_seed(3)
    enc = STGCN(hidden_channels=16, hidden_dim=256)
    convs = [m for m in enc.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    w = torch.cat([m.weight.flatten() for m in convs])
    assert abs(w.std().item() - 0.02) < 0.002 and abs(w.mean().item()) < 0.001
    assert all(torch.count_nonzero(m.bias) == 0 for m in convs)
    bns = [m for m in enc.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    bw = torch.cat([m.weight for m in bns])
    assert abs(bw.mean().item() - 1.0) < 0.005 and abs(bw.std().item() - 0.02) < 0.005
    assert all(torch.count_nonzero(m.bias) == 0 for m in bns)
    assert all(torch.equal(e, torch.ones_like(e)) for e in enc.edge_importance)  # stays at 1


def test_forward_shapes_and_temporal_strides():
    enc = STGCN(hidden_channels=4, hidden_dim=16, feature_dim=8)
    out, h = enc(skeleton(N=3, T=50))
    assert out.shape == (3, 8) and h.shape == (3, 16)
    feats = []
    x = torch.randn(2, 3, 50, 25)
    for blk in enc.st_gcn_networks:
        x = blk(x, enc.A, None)
        feats.append(x.shape[2])
    assert feats == [50, 50, 50, 50, 25, 25, 25, 13, 13, 13]  # §4.2 table, T in -> out
    assert STGCN(hidden_channels=4, hidden_dim=16, head=None)(skeleton(N=2))[0].shape == (2, 16)


def test_person_average_and_data_bn_channel_order():
    enc = STGCN(hidden_channels=4, hidden_dim=16, head=None).eval()
    with torch.no_grad():
        for p in enc.data_bn.parameters():
            p.normal_()
        enc.data_bn.running_mean.normal_()
    x = skeleton(N=2, M=2)
    # Persons are averaged after pooling: swapping them changes nothing; two copies of one person
    # give that person's feature (§4.2 'Pooling').
    h = enc(x)[1]
    torch.testing.assert_close(enc(x.flip(-1))[1], h)
    one = x[..., :1]
    torch.testing.assert_close(enc(one.expand(-1, -1, -1, -1, 2).contiguous())[1], enc(one)[1])
    # data_bn channel index = v*C + c: normalising by hand then disabling data_bn gives the same output.
    N, C, T, V, M = x.shape
    bn = enc.data_bn
    scale = (bn.weight / torch.sqrt(bn.running_var + bn.eps)).view(V, C)
    shift = (bn.bias - bn.running_mean * bn.weight / torch.sqrt(bn.running_var + bn.eps)).view(V, C)
    xn = x * scale.T[None, :, None, :, None] + shift.T[None, :, None, :, None]
    enc.data_bn = nn.Identity()
    torch.testing.assert_close(enc(xn)[1], h, rtol=1e-4, atol=1e-5)


def test_edge_importance_can_be_disabled_and_is_used():
    enc = STGCN(hidden_channels=4, hidden_dim=16, edge_importance=False)
    assert enc.edge_importance is None and nparams(enc) == nparams(STGCN(hidden_channels=4, hidden_dim=16)) - 10 * 3 * 625
    enc2 = STGCN(hidden_channels=4, hidden_dim=16, init=None).eval()  # PyTorch init: O(1) activations
    x = skeleton(N=2)
    base = enc2(x)[0]
    with torch.no_grad():
        enc2.edge_importance[3].mul_(2.0)
    assert not torch.allclose(enc2(x)[0], base)


def test_coco17_encoder_forward():
    enc = STGCN(hidden_channels=4, hidden_dim=16, feature_dim=8, topology="coco17")
    assert enc.A.shape == (3, 17, 17) and enc.data_bn.num_features == 3 * 17
    out, h = enc(skeleton(N=2, V=17, M=1))
    assert out.shape == (2, 8) and h.shape == (2, 16) and torch.isfinite(out).all()
