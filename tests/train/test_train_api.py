"""The user feature API: Embedder.from_checkpoint(...)(raw joints) -> per-stream and fused embeddings."""
import pytest
import torch

from skelfast.train.api import Embedder
from skelfast.train.checkpoint import CheckpointError
from skelfast.train.config import load_config
from skelfast.train.data import open_split, resolve_data_root
from skelfast.nn import StackedEncoders
from skelfast.train.features import eval_model_from_checkpoint, extract_features, stream_features
from skelfast.train.checkpoint import load_checkpoint
from skelfast.train.pretrain import run_pretrain


@pytest.fixture(scope="module")
def pretrained(synth_cache, tmp_path_factory):
    from train_fixtures import tiny_sets
    out = tmp_path_factory.mktemp("api")
    cfg = load_config("ikem6", tiny_sets(synth_cache, out, **{"optim.epochs": 1, "run.name": "pre",
                                                               "run.max_steps_per_epoch": 1}))
    return run_pretrain(cfg)["checkpoint"], cfg


def test_embedder_streams_and_fused(pretrained):
    ckpt, cfg = pretrained
    emb = Embedder.from_checkpoint(ckpt)
    assert emb.streams == ("joint", "motion", "bone", "acceleration", "rotation_axis", "omega")
    g = torch.Generator().manual_seed(0)
    x = torch.randn(5, 3, 50, 25, 2, generator=g)
    frames = torch.tensor([50, 80, 120, 200, 300])
    out = emb(x, frames)
    assert set(out["streams"]) == set(emb.streams)
    for f in out["streams"].values():
        assert f.shape == (5, emb.dim) == (5, 16) and torch.isfinite(f).all()
    assert out["fused"].shape == (5, 6 * 16)
    torch.testing.assert_close(out["fused"].norm(dim=1), torch.ones(5))
    # deterministic (eval mode, no dropout) and per-sample (batch composition does not matter)
    again = emb(x[:2], frames[:2])
    torch.testing.assert_close(again["fused"], out["fused"][:2], atol=1e-5, rtol=1e-5)
    # the time scale 50/F is used (ikem6: true_timeline): other frame counts change motion features
    other = emb(x[:2], torch.tensor([50, 50]))
    assert not torch.allclose(other["streams"]["motion"][1], out["streams"]["motion"][1])
    assert emb.training is False and not emb.train().training


def test_embedder_without_frames_uses_time_scale_one(pretrained):
    """frames=None is time scale 1 (the model's own frames=None), also for T != 50: it used to fill
    in frames = T, which scales by 50/T. frames may be a plain sequence."""
    emb = Embedder.from_checkpoint(pretrained[0])
    x = torch.randn(2, 3, 20, 25, 2, generator=torch.Generator().manual_seed(1))
    assert emb.model.true_timeline     # ikem6: trained at 50/F, so a missing F is worth a warning
    with pytest.warns(UserWarning, match="no frames for a model trained with true_timeline") as rec:
        got = emb(x)["streams"]["motion"]
    assert rec[0].filename == __file__           # points at the caller's line, not at torch's wrappers
    torch.testing.assert_close(got, emb(x, [50, 50])["streams"]["motion"])
    assert not torch.allclose(got, emb(x, torch.tensor([20, 20]))["streams"]["motion"])


def test_embedder_matches_linear_eval_features(pretrained, synth_cache):
    """The API and linear evaluation see the same features (same encoders, same eval mode)."""
    ckpt, cfg = pretrained
    emb = Embedder.from_checkpoint(ckpt)
    split = open_split(resolve_data_root(cfg), "val")
    feats = extract_features(emb.model, split, torch.device("cpu"), batch_size=64)["feats"]
    x, _, f = split.batch(torch.arange(4).numpy(), torch.device("cpu"))
    out = emb(x, f)
    torch.testing.assert_close(out["streams"]["bone"], feats[2, :4], atol=1e-5, rtol=1e-5)


def test_batched_stream_features_match_per_stream_encoders(pretrained):
    """On the skelfast backend the evaluation model's S streams are one StackedEncoders, so feature
    extraction runs them at once; the features equal the reference backend's per-stream encoders
    (issue 4), with the backbones in eval mode."""
    ckpt, _ = pretrained
    fast, ref = Embedder.from_checkpoint(ckpt), Embedder.from_checkpoint(ckpt, backend="reference")
    batched = fast.model.encoders
    assert isinstance(batched, StackedEncoders) and batched.num_models == 6 and not batched.training
    assert not fast.model.per_stream and ref.model.per_stream
    g = torch.Generator().manual_seed(1)
    x = torch.randn(3, 3, 50, 25, 2, generator=g)
    x[1, ..., 1] = 0                                     # an absent second person
    frames = torch.tensor([50, 77, 300])
    per_stream = stream_features(ref.model, x, frames)
    together = stream_features(fast.model, x, frames)
    assert together.shape == per_stream.shape == (6, 3, 16)
    assert per_stream.abs().max() > 1e-3                 # features are not trivially zero
    torch.testing.assert_close(together, per_stream, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(fast(x, frames)["streams"]["omega"], per_stream[5], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(ref(x, frames)["streams"]["joint"], per_stream[0], atol=1e-5, rtol=1e-4)
    assert fast.dim == ref.dim == 16


@pytest.mark.parametrize("backend", ["skelfast", "reference"])
def test_view_model_holds_that_views_encoders(pretrained, backend):
    """eval_model_from_checkpoint(view=...) (fine-tuning) builds only the view's streams and loads
    each from its own source encoder: stream 'bone' is the checkpoint's encoder 2."""
    ckpt, _ = pretrained
    ck = load_checkpoint(ckpt, expect_commands=("pretrain",))
    full, _ = eval_model_from_checkpoint(ck, num_class=3, backend="reference")
    g = torch.Generator().manual_seed(3)
    x, frames = torch.randn(2, 3, 50, 25, 2, generator=g), torch.tensor([50, 120])
    want = stream_features(full.eval(), x, frames)
    for view, streams in (("bone", ("bone",)), ("3views", ("joint", "motion", "bone"))):
        part, _ = eval_model_from_checkpoint(ck, num_class=3, backend=backend, view=view, train_backbone=True)
        assert part.streams == streams
        assert {k.split(".")[1] for k in part.state_dict() if k.startswith("encoders.")} == \
            {str(i) for i in range(len(streams))}
        got = stream_features(part.eval(), x, frames)
        torch.testing.assert_close(got, want[[full.streams.index(m) for m in streams]], atol=1e-5, rtol=1e-4)
    with pytest.raises(ValueError, match="unknown view"):
        eval_model_from_checkpoint(ck, num_class=3, backend=backend, view="elbow")


def test_embedder_rejects_bad_input(pretrained, tmp_path):
    ckpt, _ = pretrained
    emb = Embedder.from_checkpoint(ckpt)
    with pytest.raises(ValueError, match=r"\(N, 3, T, V, M\)"):
        emb(torch.randn(2, 50, 25, 3))
    with pytest.raises(TypeError, match="use torch.from_numpy"):
        emb(torch.randn(2, 3, 50, 25, 2).numpy())
    with pytest.raises(CheckpointError):
        Embedder.from_checkpoint(str(tmp_path / "missing.pt"))
