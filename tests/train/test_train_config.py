"""Configs: presets carry the official hyperparameters, --set overrides with types, clear errors."""
import os

import pytest
import yaml

from skelfast.train.config import ConfigError, load_config, parse_set, presets, save_config


def test_presets_validate_and_official_values():
    names = presets()
    assert {"ikem6", "crossclr3", "student6to3", "student3to1", "linear", "knn", "finetune", "quick"} <= set(names)
    for n in names:
        load_config(n)                                             # every preset validates
    ik = load_config("ikem6")
    # method.md §5.2
    assert ik["optim"] == {"lr": 0.1, "momentum": 0.9, "nesterov": False, "weight_decay": 0.0001, "epochs": 300,
                           "step": [250], "gamma": 0.1}
    assert ik["pretrain"]["cross_epoch"] == 150 and ik["data"]["batch_size"] == 128
    assert ik["model"]["queue_size"] == 32768 and ik["model"]["tau"] == 0.07
    # method.md §6.1, §6.2, §7
    assert load_config("student6to3")["optim"]["step"] == [125]
    assert load_config("student3to1")["optim"]["step"] == [120]
    lin = load_config("linear")["optim"]
    assert (lin["lr"], lin["epochs"], lin["step"], lin["weight_decay"]) == (3.0, 100, [80], 0.0)


def test_set_parses_types_and_merges():
    cfg = load_config("ikem6", ["optim.lr=0.05", "optim.step=[100, 200]", "parity.lock_keys=[joint]",
                                "model.true_timeline=false", "run.name=abc"])
    assert cfg["optim"]["lr"] == 0.05 and cfg["optim"]["step"] == [100, 200]
    assert cfg["parity"]["lock_keys"] == ["joint"] and cfg["model"]["true_timeline"] is False
    assert cfg["run"]["name"] == "abc" and cfg["optim"]["momentum"] == 0.9      # siblings kept
    assert parse_set("a.b.c=1") == {"a": {"b": {"c": 1}}}


@pytest.mark.parametrize("item, message", [
    ("optim.lrr=0.1", "did you mean 'optim.lr'"),
    ("optimizer.lr=0.1", "unknown config key 'optimizer'"),
    ("optim.epochs=ten", "optim.epochs"),
    ("optim.nesterov=1", "optim.nesterov"),
    ("optim=3", "must be a mapping"),
    ("run.amp=fp8", "run.amp"),
    ("data.batch_size=100", "does not divide"),
    ("optim.step=[a]", "optim.step"),
    ("nokey", "KEY=VALUE"),
])
def test_bad_keys_name_the_key(item, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[")):
        load_config("ikem6", [item], command="pretrain")


def test_malformed_yaml_and_missing_preset(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("optim: [1, 2\n")
    with pytest.raises(ConfigError, match="malformed YAML"):
        load_config(str(bad))
    with pytest.raises(ConfigError, match="neither a file nor a preset"):
        load_config("no_such_preset")


def test_resolved_config_round_trips(tmp_path):
    cfg = load_config("quick", ["optim.lr=0.2"])
    save_config(cfg, str(tmp_path))
    again = load_config(str(tmp_path / "config.yaml"))
    assert again == cfg
    assert yaml.safe_load(open(tmp_path / "config.yaml"))["optim"]["lr"] == 0.2
