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


def test_preset_of_another_command_is_refused(tmp_path, capsys):
    """Every shipped preset names its command; one made for another command is refused before
    anything runs (`pretrain --config linear` trained at lr 3.0 without weight decay, silently)."""
    from skelfast.train.__main__ import main
    from skelfast.train.config import PRESET_COMMAND, check_preset_command
    assert set(PRESET_COMMAND) == set(presets())
    for name, command in PRESET_COMMAND.items():
        check_preset_command(name, command)
        check_preset_command(name + ".yaml", command)
    assert main(["pretrain", "--config", "linear", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "preset of `linear`, not of `pretrain`" in err and "crossclr3, ikem6" in err
    assert main(["finetune", "--config", "knn", "--checkpoint", "x", "--out", str(tmp_path)]) == 2
    assert "preset of `knn`" in capsys.readouterr().err
    assert not os.listdir(tmp_path)
    own = tmp_path / "linear"                    # a YAML file of one's own is not a preset name
    own.write_text("optim:\n  lr: 0.2\n")
    check_preset_command(str(own), "pretrain")


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
