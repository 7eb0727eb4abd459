"""CLI smoke runs of every command on tiny synthetic data, and the up-front input errors."""
import json
import os

import pytest
import torch
import yaml

from skelfast.train.__main__ import main
from skelfast.train.checkpoint import load_checkpoint


@pytest.fixture(scope="module")
def chain(synth_cache, tmp_path_factory):
    """pretrain (1 epoch phase 1 + 1 epoch phase 2) -> distill, shared by the evaluation smoke tests."""
    from train_fixtures import tiny_sets
    out = tmp_path_factory.mktemp("chain")
    base = tiny_sets(synth_cache, out / "runs")
    rc = main(["pretrain", "--config", "ikem6", "--name", "pre", "--epochs", "2",
               *sum([["--set", s] for s in base + ["pretrain.cross_epoch=1", "optim.step=[1]"]], [])])
    assert rc == 0
    pre = str(out / "runs" / "pre")
    rc = main(["distill", "--config", "student6to3", "--teacher", pre, "--name", "dis", "--epochs", "1",
               *sum([["--set", s] for s in base], [])])
    assert rc == 0
    return base, pre, str(out / "runs" / "dis"), out


def _sets(items):
    return sum([["--set", s] for s in items], [])


def test_pretrain_outputs(chain):
    base, pre, _, _ = chain
    for f in ("config.yaml", "last.pt", "epoch_0002.pt", "train.log", "metrics.jsonl", "loss.png"):
        assert os.path.exists(os.path.join(pre, f)), f
    assert os.listdir(os.path.join(pre, "tb")), "TensorBoard event file"
    cfg = yaml.safe_load(open(os.path.join(pre, "config.yaml")))
    assert cfg["model"]["hidden_channels"] == 4 and cfg["pretrain"]["cross_epoch"] == 1
    ck = load_checkpoint(pre)
    assert ck["model_name"] == "ikem6" and ck["epoch"] == 2 and ck["step"] == 0
    # 40 samples, xsub train part / batch 8 steps per epoch; the queue pointer advanced by 8 per step
    steps = ck["global_step"]
    assert steps >= 2
    assert ck["model"]["queues._extra_state"]["ptr"] == (steps * 8) % 32
    tags = {json.loads(l)["tag"] for l in open(os.path.join(pre, "metrics.jsonl"))}
    assert {"train/loss", "train/loss_joint", "train/loss_omega", "train/lr"} <= tags
    # Phase 2 ran (context + IKEM terms): SGD keeps momentum only for parameters that got a gradient,
    # and the IKEM heads get one only in phase 2 (method.md §5.4b).
    from skelfast.train.models import build_model
    trainable = [n for n, p in build_model(ck["config"]).named_parameters() if p.requires_grad]
    state = ck["optimizer"]["state"]
    ikem = [i for i, n in enumerate(trainable) if n.startswith("ikem_heads.")]
    assert ikem and all(i in state and state[i]["momentum_buffer"].abs().sum() > 0 for i in ikem)
    assert len(state) == len(trainable), "every trainable parameter got a gradient"


def test_distill_trains_on_the_teachers_data(chain):
    """distill takes data.root, benchmark and the synthetic settings from its teacher's run (as the
    evaluations take their checkpoint's), and logs it: a config that names other data no longer
    distils an NTU teacher on the synthetic set, or a synthetic one on another synthetic set."""
    base, pre, _, out = chain
    sets = [s for s in base if not s.startswith("data.synthetic.samples_per_class")]
    rc = main(["distill", "--config", "student6to3", "--teacher", pre, "--name", "dis_data", "--epochs", "1",
               *_sets(sets + ["data.synthetic.samples_per_class=6", "run.max_steps_per_epoch=1"])])
    assert rc == 0
    run = out / "runs" / "dis_data"
    cfg = yaml.safe_load(open(run / "config.yaml"))
    assert cfg["data"]["synthetic"]["samples_per_class"] == 10          # the teacher's, not the 6 asked for
    assert "distilling on the teacher's data (data.from_checkpoint): data.synthetic.samples_per_class=10" in \
        open(run / "train.log").read()


def test_distill_outputs(chain):
    _, pre, dis, _ = chain
    ck = load_checkpoint(dis)
    assert ck["model_name"] == "student6to3" and ck["command"] == "distill"
    tck = load_checkpoint(pre)
    # the frozen teacher equals the pretrained query encoders
    for k, v in ck["model"].items():
        if k.startswith("teacher.") and "num_batches_tracked" not in k and "running" not in k:
            assert torch.equal(v, tck["model"]["encoders_q." + k[len("teacher."):]]), k


@pytest.mark.parametrize("view", ["all", "joint", "3views"])
def test_linear(chain, view):
    base, pre, _, out = chain
    rc = main(["linear", "--checkpoint", pre, "--view", view, "--name", f"lin_{view}", "--epochs", "10",
               *_sets(base + ["linear.eval_every=5"])])
    assert rc == 0
    res = json.load(open(out / "runs" / f"lin_{view}" / "results.json"))
    assert 0 <= res["last_top1"] <= 100 and res["best_top1"] >= res["last_top1"]
    assert res["best_top5"] >= res["best_top1"]
    assert [c["epoch"] for c in res["curve"]] == [5, 10]
    assert os.path.exists(out / "runs" / f"lin_{view}" / "accuracy.png")
    assert os.path.exists(out / "runs" / f"lin_{view}" / "features_model_train.pt")


def test_linear_several_views_in_one_run(chain):
    """--view joint,all: one feature pass, one head per view; each view's result equals its own
    single-view run (test_linear's lin_joint / lin_all: same features, seed and settings)."""
    base, pre, _, out = chain
    for view in ("joint", "all"):   # the single-view runs (the same runs as test_linear's)
        if not os.path.exists(out / "runs" / f"lin_{view}"):
            assert main(["linear", "--checkpoint", pre, "--view", view, "--name", f"lin_{view}", "--epochs", "10",
                         *_sets(base + ["linear.eval_every=5"])]) == 0
    assert main(["linear", "--checkpoint", pre, "--view", "joint,all", "--name", "lin_multi", "--epochs", "10",
                 *_sets(base + ["linear.eval_every=5"])]) == 0
    run = out / "runs" / "lin_multi"
    res = json.load(open(run / "results.json"))
    assert list(res["views"]) == ["joint", "all"] and res["checkpoint"]
    for view in ("joint", "all"):
        single = json.load(open(out / "runs" / f"lin_{view}" / "results.json"))
        assert res["views"][view]["curve"] == single["curve"], view
    assert sorted(f for f in os.listdir(run) if f.startswith("features_")) == ["features_model_train.pt",
                                                                              "features_model_val.pt"]
    # refused before the run folder is made (an unknown view used to leave one behind, taking its name);
    # the last two ran joint and all
    for i, bad in enumerate(("joint,joint", "joint,elbow", "joint,", "")):
        assert main(["linear", "--checkpoint", pre, "--view", bad, "--name", f"lin_bad{i}", *_sets(base)]) == 2, bad
        assert not os.path.exists(out / "runs" / f"lin_bad{i}"), bad
    for command in ("knn", "finetune"):
        for i, bad in enumerate((" ", "elbow")):
            assert main([command, "--checkpoint", pre, "--view", bad, "--name", f"{command}_bad{i}", *_sets(base)]) == 2
            assert not os.path.exists(out / "runs" / f"{command}_bad{i}"), (command, bad)


def test_linear_student_and_knn(chain):
    base, _, dis, out = chain
    assert main(["linear", "--checkpoint", dis, "--name", "lin_s", "--epochs", "5", *_sets(base)]) == 0
    assert main(["knn", "--checkpoint", dis, "--name", "knn_s", "--k", "3", *_sets(base)]) == 0
    res = json.load(open(out / "runs" / "knn_s" / "results.json"))
    assert res["k"] == 3 and 0 <= res["top1"] <= res["top5"] <= 100
    # a k above the training samples: every sample votes, and the result says the k that voted
    assert main(["knn", "--checkpoint", dis, "--name", "knn_big", "--k", "100000", *_sets(base)]) == 0
    big = json.load(open(out / "runs" / "knn_big" / "results.json"))
    assert big["k"] < 100000 and "every one votes" in open(out / "runs" / "knn_big" / "train.log").read()
    assert main(["knn", "--checkpoint", dis, "--epochs", "3", *_sets(base)]) == 2   # knn trains nothing


def test_finetune_semi_supervised(chain):
    base, pre, _, out = chain
    rc = main(["finetune", "--checkpoint", pre, "--view", "joint", "--label-fraction", "0.5", "--name", "ft",
               "--epochs", "1", *_sets(base + ["data.batch_size=4"])])
    assert rc == 0
    res = json.load(open(out / "runs" / "ft" / "results.json"))
    used, total = map(int, res["labels"].split("/"))
    assert used < total and used >= 4        # half of every class, at least one per class
    ck = load_checkpoint(str(out / "runs" / "ft"))
    assert ck["command"] == "finetune"
    # the fine-tuned model holds the view's encoder only (stream 'joint', the source's encoder 0)
    assert {k.split(".")[1] for k in ck["model"] if k.startswith("encoders.")} == {"0"}


def test_finetuned_checkpoint_is_evaluable(chain, capsys):
    """linear, knn and the Embedder read a finetune checkpoint: its fine-tuned backbones, the streams
    of its view (here 3views: joint, motion, bone of the 6-modality teacher)."""
    from skelfast.train.api import Embedder
    from skelfast.train.features import stream_features
    from skelfast.train.models import build_linear
    base, pre, _, out = chain
    ft = str(out / "runs" / "ft3")
    assert main(["finetune", "--checkpoint", pre, "--view", "3views", "--name", "ft3", "--epochs", "1",
                 *_sets(base)]) == 0
    assert main(["linear", "--checkpoint", ft, "--view", "motion,all", "--name", "lin_ft", "--epochs", "2",
                 *_sets(base)]) == 0
    res = json.load(open(out / "runs" / "lin_ft" / "results.json"))
    assert set(res["views"]) == {"motion", "all"}
    assert main(["knn", "--checkpoint", ft, "--name", "knn_ft", "--k", "3", *_sets(base)]) == 0
    assert 0 <= json.load(open(out / "runs" / "knn_ft" / "results.json"))["top1"] <= 100
    capsys.readouterr()
    assert main(["linear", "--checkpoint", ft, "--view", "omega", *_sets(base)]) == 2   # not fine-tuned
    assert "unknown view 'omega'" in capsys.readouterr().err
    # the Embedder: the fine-tuned weights (not the source's), streams of the view
    emb = Embedder.from_checkpoint(ft)
    assert emb.streams == ("joint", "motion", "bone")
    ck = load_checkpoint(ft)
    model = build_linear("ikem6", ck["config"]["model"], ck["model"]["encoders.0.fc.weight"].shape[0],
                         view="3views")
    model.load_state_dict(ck["model"])                         # strict: the fine-tuning run's own model
    x = torch.randn(3, 3, 50, 25, 2, generator=torch.Generator().manual_seed(0))
    frames = torch.tensor([50, 70, 90])
    got = emb(x, frames)["streams"]
    want = stream_features(model.eval(), x, frames)
    for i, name in enumerate(emb.streams):
        torch.testing.assert_close(got[name], want[i])
    source = Embedder.from_checkpoint(pre)(x, frames)["streams"]
    assert not torch.allclose(source["joint"], got["joint"])   # fine-tuning moved the backbone


def test_finetune_takes_the_source_architecture(chain):
    """A fine-tuning run records its source's architecture and time scale (the finetune preset's own
    model sizes used to be saved, so linear / knn / the Embedder built a model that did not fit the
    fine-tuned weights), and trains with its own dropout."""
    from skelfast.train.api import Embedder
    base, pre, _, out = chain
    sets = base + ["model.hidden_channels=16", "model.hidden_dim=256", "model.true_timeline=false",
                   "model.dropout=0.25"]
    assert main(["finetune", "--checkpoint", pre, "--view", "joint", "--name", "ft_arch", "--epochs", "1",
                 *_sets(sets)]) == 0
    ft = out / "runs" / "ft_arch"
    saved = load_checkpoint(str(ft))["config"]["model"]
    source = load_checkpoint(pre)["config"]["model"]
    assert [saved[k] for k in ("hidden_channels", "hidden_dim", "feature_dim", "true_timeline")] == \
        [source[k] for k in ("hidden_channels", "hidden_dim", "feature_dim", "true_timeline")] == [4, 16, 16, None]
    assert saved["dropout"] == 0.25
    assert "the checkpoint's encoders: model.hidden_channels=4" in (ft / "train.log").read_text()
    assert main(["linear", "--checkpoint", str(ft), "--name", "lin_ft_arch", "--epochs", "2",
                 *_sets(base)]) == 0
    assert Embedder.from_checkpoint(str(ft)).model.true_timeline      # ikem6's time scale (50/F), as trained


def test_fused_student_chain(chain):
    """crossclr3 -> the 3->1 fused student (method.md §6.2) -> linear, finetune, and linear / the
    Embedder on the fine-tuned student: one encoder reading the 9 channels of joint, motion and bone
    (fine-tuning it used to build a 3-channel encoder and fail to load the checkpoint)."""
    from skelfast.train.api import Embedder
    base, _, _, out = chain
    runs = out / "runs"
    assert main(["pretrain", "--config", "crossclr3", "--name", "cc3", "--epochs", "2",
                 *_sets(base + ["pretrain.cross_epoch=1"])]) == 0
    assert main(["distill", "--config", "student3to1", "--teacher", str(runs / "cc3"), "--name", "s31",
                 "--epochs", "1", *_sets(base)]) == 0
    assert main(["linear", "--checkpoint", str(runs / "s31"), "--name", "lin_s31", "--epochs", "2",
                 *_sets(base)]) == 0
    assert main(["finetune", "--checkpoint", str(runs / "s31"), "--name", "ft_s31", "--epochs", "1",
                 *_sets(base)]) == 0
    ck = load_checkpoint(str(runs / "ft_s31"))
    assert ck["model"]["encoders.0.data_bn.weight"].numel() == 9 * 25     # the 9-channel fused encoder
    assert main(["linear", "--checkpoint", str(runs / "ft_s31"), "--name", "lin_ft_s31", "--epochs", "2",
                 *_sets(base)]) == 0
    emb = Embedder.from_checkpoint(str(runs / "ft_s31"))
    assert emb.streams == ("fused",)
    feats = emb(torch.randn(2, 3, 50, 25, 2), torch.tensor([50, 60]))["streams"]["fused"]
    assert feats.shape == (2, emb.dim) and torch.isfinite(feats).all()


def test_errors_before_training(chain, tiny, tmp_path, capsys):
    base, pre, dis, _ = chain
    # a data folder that was never prepared
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["pretrain", "--data", str(empty), *_sets(tiny())]) == 2
    assert "never prepared" in capsys.readouterr().err
    # ... or a raw .skeleton folder: the hint is to prepare it into another folder, not into itself
    (empty / "S001C001P001R001A001.skeleton").write_text("1\n0\n")
    assert main(["pretrain", "--data", str(empty), *_sets(tiny())]) == 2
    assert "holds raw .skeleton files; prepare them into another folder" in capsys.readouterr().err
    # a batch size that does not divide the queue
    assert main(["pretrain", *_sets(tiny(**{"data.batch_size": 6}))]) == 2
    assert "does not divide" in capsys.readouterr().err
    # unknown and mistyped keys name the key
    assert main(["pretrain", *_sets(tiny(**{"optim.lrr": 0.1}))]) == 2
    assert "optim.lrr" in capsys.readouterr().err
    assert main(["pretrain", *_sets(tiny(**{"optim.epochs": "many"}))]) == 2
    assert "optim.epochs" in capsys.readouterr().err
    # a checkpoint from another model: a distillation checkpoint is no teacher
    assert main(["distill", "--teacher", dis, *_sets(tiny())]) == 2
    assert "is a `distill` checkpoint, expected one of ['pretrain']" in capsys.readouterr().err
    # an ikem6 teacher for the 3->1 student (needs crossclr3)
    assert main(["distill", "--config", "student3to1", "--teacher", pre, *_sets(tiny())]) == 2
    assert "crossclr3" in capsys.readouterr().err
    # a missing checkpoint, and resuming a pretrain run as a distillation
    assert main(["linear", "--checkpoint", str(tmp_path / "nope.pt"), *_sets(tiny())]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["distill", "--resume", pre]) == 2
    assert "pretrain" in capsys.readouterr().err
    # a resumed run keeps its saved config: overrides are refused, not silently dropped
    assert main(["pretrain", "--resume", pre, "--backend", "reference"]) == 2
    assert "--resume continues" in capsys.readouterr().err
    # a view the model does not have
    assert main(["linear", "--checkpoint", dis, "--view", "omega", *_sets(tiny())]) == 2
    assert "omega" in capsys.readouterr().err
    # the pipeline's stages set optim.* themselves: a top-level --epochs would be ignored, so it is refused
    assert main(["pipeline", "--epochs", "1", *_sets(tiny())]) == 2
    assert "--set pipeline.pretrain.optim.epochs=" in capsys.readouterr().err
    assert main(["--set", "optim.lr=0.1", *_sets(tiny())]) == 2
    assert "optim.lr is set per stage" in capsys.readouterr().err


def test_a_run_that_cannot_start_leaves_no_folder(tiny, tmp_path, capsys):
    """Start-up errors come before the run folder is made, so the name stays free for the corrected
    command (found by a README walkthrough: --cuda-graphs on a CPU box took the name)."""
    runs = tmp_path / "runs"
    if not torch.cuda.is_available():
        assert main(["pretrain", "--cuda-graphs", "--name", "cg", *_sets(tiny())]) == 2
        assert "--cuda-graphs needs a CUDA device" in capsys.readouterr().err
    # 40 synthetic samples, xsub: fewer training samples than a batch of 32 (queue 64: divisible)
    assert main(["pretrain", "--name", "big", *_sets(tiny(**{"data.batch_size": 32, "model.queue_size": 64}))]) == 2
    assert "is larger than the" in capsys.readouterr().err
    assert not runs.exists() or sorted(os.listdir(runs)) == []
    assert main(["pretrain", "--device", "gpu", *_sets(tiny())]) == 2
    assert "run.device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got 'gpu'" in capsys.readouterr().err
    assert main(["pretrain", "--set", "model.name=ikem7", *_sets(tiny())]) == 2
    assert "use `distill`" not in capsys.readouterr().err   # the hint only for the student models


def test_backend_reference_and_bf16_smoke(tiny):
    """--backend reference and --amp bf16 run (CPU autocast) and give a finite loss."""
    sets = tiny(**{"optim.epochs": 1, "run.max_steps_per_epoch": 1, "run.name": "bf16"})
    assert main(["pretrain", "--backend", "reference", "--amp", "bf16", *_sets(sets)]) == 0
    ck = load_checkpoint(os.path.join(sets[[s.split("=")[0] for s in sets].index("run.out_dir")].split("=", 1)[1],
                                      "bf16"))
    assert ck["config"]["model"]["backend"] == "reference" and ck["config"]["run"]["amp"] == "bf16"
    loss = [h["value"] for h in ck["history"] if h["tag"] == "train/loss"]
    assert len(loss) == 1 and torch.isfinite(torch.tensor(loss)).all()


def test_no_argument_pipeline_smoke(tiny, tmp_path, capsys):
    """`python -m skelfast.train` (the pipeline) end to end with one step per stage."""
    sets = tiny(**{"run.max_steps_per_epoch": 1, "run.name": "pipe", "data.eval_batch_size": 64,
                   "model.queue_size": 32, "model.feature_dim": 16})
    sets += ["pipeline.pretrain.optim.epochs=2", "pipeline.pretrain.pretrain.cross_epoch=1",
             "pipeline.distill.optim.epochs=1", "pipeline.linear.optim.epochs=5", "linear.eval_every=5"]
    assert main(_sets(sets)) == 0
    out = capsys.readouterr().out
    assert "6-modality teacher" in out and "3-modality student" in out and "random-init" in out
    run = os.path.join(sets[[s.split("=")[0] for s in sets].index("run.out_dir")].split("=", 1)[1], "pipe")
    res = json.load(open(os.path.join(run, "results.json")))
    assert len(res["rows"]) == 4 and res["chance"] == 25.0
    for f in ("accuracy.png", "config.yaml", "pretrain/last.pt", "distill/last.pt", "pretrain/loss.png"):
        assert os.path.exists(os.path.join(run, f)), f
    # the same name again: refused before anything is written (config, log and results untouched)
    kept = {f: open(os.path.join(run, f), "rb").read() for f in ("config.yaml", "train.log", "results.json")}
    assert main(_sets(sets)) == 2
    assert "already holds a run" in capsys.readouterr().err
    assert all(open(os.path.join(run, f), "rb").read() == v for f, v in kept.items())
