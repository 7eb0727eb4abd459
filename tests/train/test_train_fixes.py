"""Regression tests: feature cache keyed by what produced it, --resume refusing changed flags,
distillation time scale from the teacher, batch/queue check only with queues, value validation,
epoch mean loss across a mid-epoch resume."""
import dataclasses
import os
import re
import signal

import pytest
import torch
import yaml

from skelfast.train.__main__ import main
from skelfast.train.checkpoint import load_checkpoint
from skelfast.train.config import ConfigError, load_config


def _sets(items):
    return sum([["--set", s] for s in items], [])


@pytest.fixture(scope="module")
def pre(synth_cache, tmp_path_factory):
    """A 2-epoch pretraining run (1 step/epoch) with both epochs' checkpoints kept, true_timeline false."""
    from train_fixtures import tiny_sets
    out = tmp_path_factory.mktemp("fixes")
    sets = tiny_sets(synth_cache, out / "runs", **{"optim.epochs": 2, "run.max_steps_per_epoch": 1,
                                                    "run.save_every": 1, "run.name": "pre", "run.plots": False,
                                                    "run.tensorboard": False, "model.true_timeline": False})
    from skelfast.train.pretrain import run_pretrain
    run_pretrain(load_config("ikem6", sets))
    return str(out / "runs" / "pre"), synth_cache, out


def _tiny(pre, **extra):
    from train_fixtures import tiny_sets
    _, cache, out = pre
    base = {"run.plots": False, "run.tensorboard": False}
    base.update(extra)
    return tiny_sets(cache, out / "runs", **base)


# ------------------------------------------------------------------ 1. feature cache
def test_feature_cache_not_reused_for_another_checkpoint(pre):
    from skelfast.train.linear import run_linear
    run = pre[0]
    kw = {"optim.epochs": 5, "linear.eval_every": 5}
    a = os.path.join(run, "epoch_0001.pt")
    b = os.path.join(run, "epoch_0002.pt")
    run_linear(load_config("linear", _tiny(pre, **kw, **{"run.name": "lin"})), a)
    feats_a = torch.load(os.path.join(pre[2], "runs", "lin", "features_model_train.pt"))["feats"]
    reused = run_linear(load_config("linear", _tiny(pre, **kw, **{"run.name": "lin", "run.reuse_dir": True})), b)
    fresh = run_linear(load_config("linear", _tiny(pre, **kw, **{"run.name": "linB"})), b)
    feats_b = torch.load(os.path.join(pre[2], "runs", "linB", "features_model_train.pt"))["feats"]
    assert not torch.equal(feats_a, feats_b)         # the two checkpoints give different features
    again = torch.load(os.path.join(pre[2], "runs", "lin", "features_model_train.pt"))
    assert torch.equal(again["feats"], feats_b)       # the reused folder's cache was recomputed for b
    assert reused["curve"] == fresh["curve"]
    # the same checkpoint again hits the cache (the key is stable)
    from skelfast.train.features import cached_features, eval_model_from_checkpoint
    from skelfast.train.data import open_split, resolve_data_root
    cfg = load_config("linear", _tiny(pre))
    split = open_split(resolve_data_root(cfg), "train")
    model, _ = eval_model_from_checkpoint(load_checkpoint(b), split.num_classes)
    msgs = []
    cached_features(model, split, torch.device("cpu"), os.path.join(pre[2], "runs", "linB"), "model", 64,
                    "none", resolve_data_root(cfg), msgs.append)
    assert msgs == []
    # ... but not for the other backend: same class and state-dict keys, other kernels
    ref_model, _ = eval_model_from_checkpoint(load_checkpoint(b), split.num_classes, backend="reference")
    cached_features(ref_model, split, torch.device("cpu"), os.path.join(pre[2], "runs", "linB"), "model", 64,
                    "none", resolve_data_root(cfg), msgs.append)
    assert len(msgs) == 1 and "encoders_class" in msgs[0]


def test_feature_key_follows_the_data_content(synth_cache):
    """Data prepared again in place (same labels and frame counts, other preprocessing) must not hit
    the feature cache: the key holds the manifest's sha256 of the data file, and without one (a
    subset, in-memory arrays) a hash of sampled data."""
    import numpy as np
    from skelfast.data import load_manifest
    from skelfast.train.data import Split, open_split
    from skelfast.train.features import feature_key
    from skelfast.data import synthetic
    from skelfast.train.finetune import subset_split
    root = synthetic.ensure_prepared(os.path.join(synth_cache, "synthetic"), num_classes=4, samples_per_class=10,
                                     seed=0, benchmark="xsub")   # the fixture's folder (already prepared)
    split = open_split(root, "train")
    sha = load_manifest(root)["splits"]["train"]["files"]["data"]["sha256"]
    assert split.data_sha256 == sha and len(sha) == 64
    model, cpu = torch.nn.Linear(2, 2), torch.device("cpu")

    def key(s):
        return feature_key(model, s, cpu, "none")["split_sha1"]

    assert key(split) == key(dataclasses.replace(split))
    assert key(split) != key(dataclasses.replace(split, data_sha256="0" * 64))
    # no checksum: the content decides (a change in one hashed sample changes the key)
    data = np.array(split.data)
    bare = Split(split.name, data, split.labels, split.frames, split.num_classes)
    changed = data.copy()
    changed[-1, 0, 0, 0, 0] += 1.0
    assert key(bare) == key(Split(split.name, data.copy(), split.labels, split.frames, split.num_classes))
    assert key(bare) != key(Split(split.name, changed, split.labels, split.frames, split.num_classes))
    # a subset has other data than the file the checksum names
    assert subset_split(split, np.arange(len(split))).data_sha256 == sha
    assert subset_split(split, np.arange(0, len(split), 2)).data_sha256 is None


def test_bn_calibration_runs_without_dropout(pre):
    """The random-init baseline's BN statistics are estimated as the eval-mode features will see the
    layers: without dropout (two calibrations with different RNG states agree exactly)."""
    from skelfast.train.data import open_split, resolve_data_root
    from skelfast.train.features import calibrate_bn, eval_model_from_checkpoint
    split = open_split(resolve_data_root(load_config("linear", _tiny(pre))), "train")
    ck = load_checkpoint(pre[0])
    ck["config"]["model"]["dropout"] = 0.5
    stats = []
    for seed in (0, 1):
        model, _ = eval_model_from_checkpoint(ck, split.num_classes, random_init=True)
        assert any(isinstance(m, torch.nn.Dropout) and m.p == 0.5 for m in model.modules())
        torch.manual_seed(seed)
        calibrate_bn(model, split, torch.device("cpu"), 64)
        stats.append({k: v for k, v in model.state_dict().items() if k.endswith("running_var")})
    assert stats[0] and all(torch.equal(stats[0][k], stats[1][k]) for k in stats[0])


# ------------------------------------------------------------------ 2. --resume with other flags
def _interrupt_after(monkeypatch, task_cls, steps):
    """Ctrl-C (SIGINT) right after the task's `steps`-th step; returns a function that undoes it."""
    orig = task_cls.after_step
    cnt = {"n": 0}

    def hook(self, model, result, info):
        orig(self, model, result, info)
        cnt["n"] += 1
        if cnt["n"] == steps:
            os.kill(os.getpid(), signal.SIGINT)
    monkeypatch.setattr(task_cls, "after_step", hook)
    return lambda: monkeypatch.setattr(task_cls, "after_step", orig)


def _interrupted_finetune(pre, name, monkeypatch):
    from skelfast.train import finetune as FT
    restore = _interrupt_after(monkeypatch, FT.FinetuneTask, 1)
    cfg = load_config("finetune", _tiny(pre, **{"optim.epochs": 2, "run.max_steps_per_epoch": 2, "run.name": name,
                                                "finetune.eval_every": 1, "finetune.view": "joint"}))
    res = FT.run_finetune(cfg, pre[0])
    assert res["interrupted"]
    restore()
    return res["run_dir"]


def test_resume_refuses_changed_flags(pre, monkeypatch, capsys):
    run = _interrupted_finetune(pre, "ft_part", monkeypatch)
    other = os.path.join(pre[2], "other_finetune.yaml")      # a finetune config with another setting
    with open(other, "w") as fh:
        yaml.safe_dump({"optim": {"lr": 0.5}}, fh)
    for extra, what in ((["--view", "motion"], "--view"), (["--label-fraction", "0.5"], "--label-fraction"),
                        (["--checkpoint", os.path.join(pre[0], "epoch_0001.pt")], "--checkpoint"),
                        (["--config", other], "--config")):
        assert main(["finetune", "--resume", run, *extra]) == 2, extra
        err = capsys.readouterr().err
        assert what in err and "resume" in err, err
    ck = load_checkpoint(run)
    assert (ck["epoch"], ck["step"]) == (0, 1)       # nothing ran
    # equal values are fine: the run goes on
    assert main(["finetune", "--resume", run, "--view", "joint", "--checkpoint", pre[0], "--label-fraction", "1.0",
                 "--no-progress"]) == 0
    ck = load_checkpoint(run)
    assert ck["epoch"] == 2 and ck["config"]["finetune"]["view"] == "joint"


def test_distill_resume_refuses_other_teacher(pre, capsys):
    sets = _tiny(pre, **{"optim.epochs": 1, "run.max_steps_per_epoch": 1, "run.name": "dis"})
    assert main(["distill", "--teacher", pre[0], *_sets(sets)]) == 0
    run = os.path.join(pre[2], "runs", "dis")
    assert main(["distill", "--resume", run, "--teacher", os.path.join(pre[0], "epoch_0001.pt")]) == 2
    assert "--teacher" in capsys.readouterr().err
    assert main(["distill", "--resume", run, "--teacher", pre[0]]) == 0        # the same teacher
    # --config: the run's own config is accepted with the keys a run fills in left null (the preset's
    # teacher and run name); a changed setting is refused
    own = yaml.safe_load(open(os.path.join(run, "config.yaml")))
    assert own["distill"]["teacher"] and own["run"]["name"] == "dis"
    own["distill"]["teacher"] = own["run"]["name"] = None
    yaml.safe_dump(own, open(os.path.join(pre[2], "own.yaml"), "w"))
    assert main(["distill", "--resume", run, "--config", os.path.join(pre[2], "own.yaml")]) == 0
    own["optim"]["lr"] = own["optim"]["lr"] * 2
    yaml.safe_dump(own, open(os.path.join(pre[2], "changed.yaml"), "w"))
    assert main(["distill", "--resume", run, "--config", os.path.join(pre[2], "changed.yaml")]) == 2
    assert "optim.lr" in capsys.readouterr().err
    # 3. the student inherits the teacher's time scale (pretrained with true_timeline false)
    assert load_checkpoint(run)["config"]["model"]["true_timeline"] is False


# ------------------------------------------------------------------ 3. teacher time scale
def test_distill_true_timeline_from_teacher(pre, monkeypatch):
    from skelfast.train import distill as D
    seen = {}

    def fit(self):
        seen["tt"] = self.model.true_timeline
        return {"checkpoint": None, "interrupted": False}
    monkeypatch.setattr(D.Trainer, "fit", fit)
    D.run_distill(load_config("student6to3", _tiny(pre, **{"run.name": "d_tt"})), teacher=pre[0])
    assert seen["tt"] is False
    # an explicit other value is honoured with a warning (the official 3->1 quirk, §11 #14)
    with pytest.warns(UserWarning, match=r"true_timeline=True but the teacher .* true_timeline=False"):
        D.run_distill(load_config("student6to3", _tiny(pre, **{"run.name": "d_tt2", "model.true_timeline": True})),
                      teacher=pre[0])
    assert seen["tt"] is True


# ------------------------------------------------------------------ 4. batch vs queue
def test_batch_queue_check_only_with_queues(pre):
    sets = ["data.batch_size=100"]
    for cmd, preset in (("linear", "linear"), ("knn", "knn"), ("finetune", "finetune"), ("pipeline", "quick")):
        load_config(preset, sets, command=cmd)
    for cmd, preset in (("pretrain", "ikem6"), ("distill", "student6to3")):
        with pytest.raises(ConfigError, match="does not divide"):
            load_config(preset, sets, command=cmd)
    with pytest.raises(ConfigError, match="does not divide"):     # the pipeline's pretrain stage
        from skelfast.train.pipeline import stage_config
        stage_config(load_config("quick", sets, command="pipeline"), "pretrain", "/nonexistent")


# ------------------------------------------------------------------ 5. value validation
@pytest.mark.parametrize("preset, item, message", [
    ("ikem6", "run.max_steps_per_epoch=-1", "run.max_steps_per_epoch"),
    ("ikem6", "run.max_steps_per_epoch=two", "run.max_steps_per_epoch"),
    ("linear", "linear.eval_every=0", "linear.eval_every"),
    ("finetune", "finetune.eval_every=0", "finetune.eval_every"),
    ("ikem6", "optim.gamma=0", "optim.gamma"),
    ("ikem6", "optim.gamma=-0.1", "optim.gamma"),
    ("ikem6", "model.true_timeline=fasle", "model.true_timeline"),
    ("knn", "knn.k=0", "knn.k"),
    # Each of these used to be accepted: it trained on silently (NaN lr, topk 0, negative shear,
    # decreasing milestones) or failed inside the model / an op / torch after the run folder was made.
    ("ikem6", "optim.lr=.nan", "'optim.lr' must be a finite number"),
    ("ikem6", "optim.lr=nan", "'optim.lr' must be a finite number"),       # YAML 1.1 reads this as a string
    ("ikem6", "model.tau=.inf", "'model.tau' must be a finite number"),
    ("finetune", "finetune.label_fraction=nan", "'finetune.label_fraction' must be a finite number"),
    ("ikem6", "model.hidden_channels=0", "model.hidden_channels"),
    ("ikem6", "model.hidden_dim=-1", "model.hidden_dim"),
    ("ikem6", "model.feature_dim=0", "model.feature_dim"),
    ("ikem6", "model.queue_size=0", "model.queue_size"),
    ("ikem6", "model.topk=0", "model.topk"),
    ("ikem6", "model.topk=40000", "mines more positives than the queue holds"),
    ("ikem6", "model.tau=0", "model.tau (the temperature) must be > 0"),
    ("ikem6", "model.momentum=1.5", "model.momentum"),
    ("ikem6", "model.dropout=1", "model.dropout (the dropout probability) must be >= 0 and < 1"),
    ("ikem6", "data.synthetic.num_classes=1", "data.synthetic.num_classes"),
    ("ikem6", "data.synthetic.seed=-1", "data.synthetic.seed"),
    ("ikem6", "data.synthetic.noise=-1", "data.synthetic.noise"),
    ("ikem6", "data.shear_amplitude=-0.5", "data.shear_amplitude"),
    ("ikem6", "optim.momentum=-1", "optim.momentum"),
    ("ikem6", "optim.weight_decay=-1e-4", "optim.weight_decay"),
    ("ikem6", "optim.step=[-1]", "optim.step"),
    ("ikem6", "optim.step=[5,3]", "optim.step"),
    ("ikem6", "pretrain.cross_epoch=-1", "pretrain.cross_epoch"),
    ("finetune", "finetune.subset_seed=-1", "finetune.subset_seed"),
    ("ikem6", "run.num_threads=0", "run.num_threads"),
    ("ikem6", "parity.lock_keys=[foo]", "parity.lock_keys: lock_keys has unknown modality name(s) ['foo']"),
    ("crossclr3", "parity.lock_keys=[omega]", "modality(ies) ['omega'] that this model does not have"),
    ("ikem6", "run.out_dir=''", "run.out_dir must name a folder"),
])
def test_bad_values_rejected(preset, item, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(preset, [item])


def test_bad_value_refused_before_the_run_folder(tmp_path, capsys):
    """A bad value is refused by the CLI with exit 2 and no run folder (it used to fail in the first
    step, leaving a folder with a config and a log behind)."""
    from skelfast.train.__main__ import main
    assert main(["pretrain", "--config", "ikem6", "--set", f"run.out_dir={tmp_path}", "--set", "model.tau=0"]) == 2
    assert "model.tau" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_good_values_accepted(tmp_path):
    cfg = load_config("ikem6", ["optim.lr=1e-3", "run.max_steps_per_epoch=0", "model.true_timeline=null"])
    assert cfg["optim"]["lr"] == 1e-3 and isinstance(cfg["optim"]["lr"], float)
    # the edges of the ranges: phase 2 throughout, a frozen key encoder (m = 1), no dropout, no decay
    cfg = load_config("ikem6", ["pretrain.cross_epoch=0", "model.momentum=1", "model.dropout=0", "optim.step=[]",
                                "data.shear_amplitude=0", "optim.weight_decay=0", "run.num_threads=null"])
    assert cfg["pretrain"]["cross_epoch"] == 0 and cfg["optim"]["step"] == []
    p = tmp_path / "c.yaml"
    p.write_text("optim:\n  lr: 1e-3\n  weight_decay: 5e-4\n")
    cfg = load_config(str(p))
    assert (cfg["optim"]["lr"], cfg["optim"]["weight_decay"]) == (1e-3, 5e-4)
    with pytest.raises(ConfigError, match="optim.lr"):
        load_config("ikem6", ["optim.lr=fast"])


# ------------------------------------------------------------------ 6. epoch mean loss over a resume
def test_epoch_mean_loss_survives_mid_epoch_resume(pre, monkeypatch):
    from skelfast.train.pretrain import PretrainTask, run_pretrain

    def cfg(name):
        return load_config("ikem6", _tiny(pre, **{"optim.epochs": 1, "run.max_steps_per_epoch": 3,
                                                  "run.name": name}))
    full = run_pretrain(cfg("m_full"))
    restore = _interrupt_after(monkeypatch, PretrainTask, 2)
    part = run_pretrain(cfg("m_part"))
    assert part["interrupted"]
    restore()
    run_pretrain(None, resume=part["run_dir"])

    def mean_line(d):
        return [l.split("mean loss ")[1].split(",")[0] for l in open(os.path.join(d, "train.log"))
                if "mean loss" in l][-1]
    assert mean_line(part["run_dir"]) == mean_line(full["run_dir"])


# ------------------------------------------------------------------ 7. run folders
def test_named_run_folder_holding_a_run_is_refused(pre):
    """A second run with the same run.name used to append to the first one's metrics.jsonl and leave
    its numbered checkpoints beside the new last.pt; now it is refused unless run.reuse_dir."""
    sets = _tiny(pre, **{"optim.epochs": 1, "run.max_steps_per_epoch": 1, "run.name": "twice"})
    assert main(["pretrain", *_sets(sets)]) == 0
    metrics = os.path.join(pre[2], "runs", "twice", "metrics.jsonl")
    before = open(metrics).read()
    assert before
    assert main(["pretrain", *_sets(sets)]) == 2
    assert open(metrics).read() == before                  # the first run's files are untouched
    assert main(["pretrain", *_sets(sets + ["run.reuse_dir=true"])]) == 0
    assert len(open(metrics).read()) > len(before)


@pytest.mark.parametrize("command, key", [("pretrain", "data.train_split"), ("linear", "data.test_split"),
                                          ("knn", "data.test_split")])
def test_unknown_split_refused_before_the_run_folder(pre, command, key, capsys):
    """A split name the prepared folder lacks is named before the run folder is made (pretrain left
    an empty folder behind; pretrain never opens the test split, so it does not check it)."""
    name = f"split_{command}"
    extra = {"run.name": name, key: "nosuch"}
    if command != "pretrain":
        extra[f"{command}.checkpoint"] = pre[0]
    argv = [command, *_sets(_tiny(pre, **extra))]
    if command != "pretrain":
        argv[1:1] = ["--config", command]
    assert main(argv) == 2
    assert "has no split 'nosuch'" in capsys.readouterr().err
    assert not os.path.exists(os.path.join(pre[2], "runs", name))


def test_unnamed_runs_in_the_same_second_get_their_own_folders(tmp_path, monkeypatch):
    from skelfast.train import logging_utils
    monkeypatch.setattr(logging_utils.time, "strftime", lambda fmt: "20260101-000000")
    cfg = load_config("ikem6", [f"run.out_dir={tmp_path}"])
    a = logging_utils.make_run_dir(cfg, "pretrain", "ikem6")
    b = logging_utils.make_run_dir(cfg, "pretrain", "ikem6")
    assert a != b and os.path.isdir(a) and os.path.isdir(b)
    assert b == a + "-2"


def test_resuming_a_finished_run_says_so(pre, tmp_path):
    import shutil
    run = str(tmp_path / "done")
    shutil.copytree(pre[0], run)
    assert main(["pretrain", "--resume", run, "--no-progress"]) == 0
    last = open(os.path.join(run, "train.log")).read().strip().splitlines()[-1]
    assert "already finished its 2 epochs; nothing to train" in last, last


# ------------------------------------------------------------------ 8. evaluation data from the checkpoint
def test_evaluation_data_comes_from_the_checkpoint(tmp_path):
    """linear / knn / finetune with data.root null evaluate on the checkpoint run's dataset."""
    from skelfast.train.data import DataError, evaluation_data
    root = str(tmp_path / "ntu60")
    os.makedirs(root)
    ntu = {"config": {"data": {"root": root, "benchmark": "xview",
                               "synthetic": {"num_classes": 10, "samples_per_class": 30, "seed": 0, "noise": 1.0}}}}
    cfg = load_config("linear", [])
    note = evaluation_data(cfg, ntu)
    assert cfg["data"]["root"] == root and f"data.root={root}" in note
    # the checkpoint's folder is not on this machine: the error says where the path came from
    gone = {"path": "runs/x/last.pt", "config": {"data": dict(ntu["config"]["data"], root="/no/such/ntu60")}}
    with pytest.raises(DataError, match="runs/x/last.pt was trained on data.root='/no/such/ntu60', which does "
                                        "not exist here .*--data DIR, or --set data.from_checkpoint=false"):
        evaluation_data(load_config("linear", []), gone)
    # an explicit root (--data), or from_checkpoint=false, keeps the config's data
    cfg = load_config("linear", ["data.root=/other"])
    assert evaluation_data(cfg, ntu) is None and cfg["data"]["root"] == "/other"
    cfg = load_config("linear", ["data.from_checkpoint=false"])
    assert evaluation_data(cfg, ntu) is None and cfg["data"]["root"] is None
    # a synthetic checkpoint: its dataset settings (not the cache folder), and nothing to say when equal
    syn = {"config": {"data": {"root": None, "benchmark": "xsub", "synthetic": {
        "num_classes": 4, "samples_per_class": 10, "seed": 3, "noise": 1.0, "cache_dir": "/elsewhere"}}}}
    cfg = load_config("knn", ["data.synthetic.cache_dir=/here"])
    assert "data.synthetic.num_classes=4" in evaluation_data(cfg, syn)
    assert cfg["data"]["synthetic"] == {"num_classes": 4, "samples_per_class": 10, "seed": 3, "noise": 1.0,
                                        "cache_dir": "/here"}
    assert evaluation_data(cfg, syn) is None


def test_knn_evaluates_on_the_pretraining_dataset(pre):
    """The pretraining run used 4 classes x 10 samples; a knn config asking for 12 per class still
    evaluates on the checkpoint's dataset, and the saved config and log say so."""
    run = os.path.join(pre[2], "runs", "knn_data")
    assert main(["knn", "--checkpoint", pre[0],
                 *_sets(_tiny(pre, **{"run.name": "knn_data", "data.synthetic.samples_per_class": 12}))]) == 0
    saved = yaml.safe_load(open(os.path.join(run, "config.yaml")))
    assert saved["data"]["synthetic"]["samples_per_class"] == 10
    assert "data.synthetic.samples_per_class=10" in open(os.path.join(run, "train.log")).read()


# ------------------------------------------------------------------ data folders given to training
def _copy_prepared(synth_cache, dest):
    import glob
    import shutil
    src = glob.glob(os.path.join(synth_cache, "synthetic", "*", "xsub"))[0]
    shutil.copytree(src, dest)
    return dest


def test_relative_data_root_is_saved_absolute(pre, tmp_path, monkeypatch):
    """A relative --data was saved as given, so evaluating the run from another working directory
    failed, or read another folder of that name; the saved benchmark is the folder's (it was the
    config's data.benchmark, which only picks the synthetic set's split)."""
    _copy_prepared(pre[1], tmp_path / "prepared")
    monkeypatch.chdir(tmp_path)
    sets = _tiny(pre, **{"optim.epochs": 1, "run.max_steps_per_epoch": 1, "run.name": "rel",
                         "data.root": "prepared", "data.benchmark": "xview"})
    assert main(["pretrain", *_sets(sets)]) == 0
    saved = yaml.safe_load(open(os.path.join(pre[2], "runs", "rel", "config.yaml")))["data"]
    assert (saved["root"], saved["benchmark"]) == (str(tmp_path / "prepared"), "xsub")


def test_non_finite_data_is_named_not_the_learning_rate(pre, tmp_path, capsys):
    """A NaN in a prepared folder (which training does not checksum) ended in a traceback that
    advised lowering the learning rate."""
    import numpy as np
    root = _copy_prepared(pre[1], tmp_path / "damaged")
    data = np.load(root / "train_data.npy", mmap_mode="r+")
    data[:, 0, 0, 0, 0] = np.nan
    data.flush()
    del data
    sets = _tiny(pre, **{"optim.epochs": 1, "run.max_steps_per_epoch": 1, "run.name": "nan",
                         "data.root": str(root)})
    assert main(["pretrain", *_sets(sets)]) == 2
    err = capsys.readouterr().err
    assert "of split 'train' hold non-finite values" in err and "prepare --verify" in err
    assert "lower optim.lr" not in err
