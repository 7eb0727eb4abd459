"""Training configs: YAML presets deep-merged over `configs/defaults.yaml`, `--set a.b=v` overrides,
validation with errors that name the key, and the resolved config saved with every run.

Layer: training (pure Python + PyYAML). `defaults.yaml` is the schema: every key a config may
have is listed there with a default, and a value must have the type of its default (ints and
numeric strings such as YAML 1.1's '1e-3' are accepted for floats; a null default takes the type
listed in NULLABLE_TYPES, or anything). Presets in `skelfast/configs/` carry the
official hyperparameters (method.md §5.2, §6.1, §6.2, §7).
"""
from __future__ import annotations

import copy
import difflib
import math
import os
import re
from typing import Any, Dict, Iterable, List, Mapping, Optional

import yaml

__all__ = ["ConfigError", "CONFIG_DIR", "presets", "load_config", "merge", "parse_set", "apply_sets",
           "validate", "save_config", "get", "set_key", "preset_path", "check_batch_queue", "QUEUE_COMMANDS"]

CONFIG_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")


class ConfigError(ValueError):
    """A config problem found before training starts (unknown key, wrong type, bad value)."""


def presets() -> List[str]:
    """Names of the shipped presets (files in skelfast/configs without the .yaml)."""
    return sorted(f[:-5] for f in os.listdir(CONFIG_DIR) if f.endswith(".yaml") and f != "defaults.yaml")


# The command each shipped preset configures (a preset for another command would run with its
# settings silently, e.g. `pretrain --config linear` at lr 3.0 without weight decay).
PRESET_COMMAND = {"ikem6": "pretrain", "crossclr3": "pretrain", "student6to3": "distill", "student3to1": "distill",
                  "linear": "linear", "knn": "knn", "finetune": "finetune", "quick": "pipeline"}


def check_preset_command(name_or_path: str, command: str) -> None:
    """Refuse a shipped preset made for another command (YAML files of one's own are not checked)."""
    if os.path.exists(name_or_path):
        return
    made_for = PRESET_COMMAND.get(name_or_path[:-5] if name_or_path.endswith(".yaml") else name_or_path)
    if made_for is not None and made_for != command:
        fits = sorted(n for n, c in PRESET_COMMAND.items() if c == command)
        raise ConfigError(f"--config {name_or_path} is the preset of `{made_for}`, not of `{command}`; "
                          f"{command}'s preset{'s' if len(fits) > 1 else ''}: {', '.join(fits)}")


def preset_path(name_or_path: str) -> str:
    """A preset name ('ikem6') or a YAML path -> the file path; raises ConfigError if absent."""
    if os.path.exists(name_or_path):
        return name_or_path
    path = os.path.join(CONFIG_DIR, name_or_path + ("" if name_or_path.endswith(".yaml") else ".yaml"))
    if os.path.exists(path):
        return path
    raise ConfigError(f"config {name_or_path!r} is neither a file nor a preset; presets: {presets()}")


def _read_yaml(path: str) -> Dict[str, Any]:
    with open(path) as fh:
        try:
            data = yaml.safe_load(fh)
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: malformed YAML: {e}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping, got {type(data).__name__}")
    return data


def defaults() -> Dict[str, Any]:
    return _read_yaml(os.path.join(CONFIG_DIR, "defaults.yaml"))


def _expand_dotted(d: Mapping[str, Any]) -> Dict[str, Any]:
    """{'optim.lr': 1} -> {'optim': {'lr': 1}} (presets may use dotted keys, e.g. in `pipeline`)."""
    out: Dict[str, Any] = {}
    for k, v in d.items():
        v = _expand_dotted(v) if isinstance(v, Mapping) else v
        parts = str(k).split(".")
        cur = out
        for p in parts[:-1]:
            cur = cur.setdefault(p, {})
        if isinstance(v, dict) and isinstance(cur.get(parts[-1]), dict):
            cur[parts[-1]] = merge(cur[parts[-1]], v)
        else:
            cur[parts[-1]] = v
    return out


def merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> Dict[str, Any]:
    """Deep merge: mappings merge key by key, anything else in `over` replaces."""
    out = copy.deepcopy(dict(base))
    for k, v in over.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), Mapping):
            out[k] = merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def parse_set(item: str) -> Dict[str, Any]:
    """'optim.lr=0.05' -> {'optim': {'lr': 0.05}}; the value is parsed as YAML ('[1, 2]', 'null', 'true')."""
    if "=" not in item:
        raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. optim.lr=0.05")
    key, raw = item.split("=", 1)
    key = key.strip()
    if not key or any(not p for p in key.split(".")):
        raise ConfigError(f"--set {item!r}: malformed key {key!r}")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as e:
        raise ConfigError(f"--set {item!r}: cannot parse value {raw!r}: {e}") from None
    return _expand_dotted({key: value})


def apply_sets(cfg: Mapping[str, Any], sets: Iterable[str]) -> Dict[str, Any]:
    for s in sets or ():
        cfg = merge(cfg, parse_set(s))
    return dict(cfg)


# Keys whose default is null ('unset') and the type a set value must have; without this a typo such as
# model.true_timeline=fasle would be the truthy string 'fasle'.
NULLABLE_TYPES = {
    "model.true_timeline": bool, "parity.lock_keys": list, "data.root": str, "data.synthetic.cache_dir": str,
    "distill.teacher": str, "linear.checkpoint": str, "knn.checkpoint": str, "finetune.checkpoint": str,
    "run.name": str, "run.max_steps_per_epoch": int, "run.num_threads": int, "distributed.backend": str,
}


def _nullable_ok(name: str, value: Any) -> bool:
    t = NULLABLE_TYPES.get(name)
    if t is None or value is None:
        return True
    if t is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if t is list:
        return isinstance(value, (list, tuple))
    return isinstance(value, t)


def _as_float(value: Any) -> Any:
    """YAML 1.1 reads '1e-3' (no dot) and 'nan' as strings: a numeric string becomes a float."""
    if isinstance(value, str):
        try:
            f = float(value)
        except ValueError:
            return value
        return f        # nan / inf too: _check then names the key as not finite
    return value


def _type_ok(default: Any, value: Any) -> bool:
    if default is None or value is None:
        return True
    if isinstance(default, bool):
        return isinstance(value, bool)
    if isinstance(default, float):
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if isinstance(default, int):
        return isinstance(value, int) and not isinstance(value, bool)
    if isinstance(default, str):
        return isinstance(value, str)
    if isinstance(default, list):
        return isinstance(value, (list, tuple))
    return True


def _check(schema: Mapping[str, Any], cfg: Mapping[str, Any], prefix: str = "") -> None:
    for k, v in list(cfg.items()):
        name = f"{prefix}{k}"
        if isinstance(schema.get(k), float) and isinstance(v, str) and isinstance(cfg, dict):
            v = cfg[k] = _as_float(v)
        if k not in schema:
            close = difflib.get_close_matches(str(k), [str(s) for s in schema], n=1)
            hint = f"; did you mean '{prefix}{close[0]}'?" if close else f"; known keys here: {sorted(schema)}"
            raise ConfigError(f"unknown config key {name!r}{hint}")
        d = schema[k]
        if isinstance(d, Mapping):
            if not isinstance(v, Mapping):
                raise ConfigError(f"config key {name!r} must be a mapping (section), got {v!r}")
            _check(d, v, name + ".")
        elif d is None and not _nullable_ok(name, v):
            t = NULLABLE_TYPES[name].__name__
            raise ConfigError(f"config key {name!r} must be {t} or null, got {type(v).__name__} {v!r}")
        elif not _type_ok(d, v):
            raise ConfigError(f"config key {name!r} must be of type {type(d).__name__} (like its default "
                              f"{d!r}), got {type(v).__name__} {v!r}")
        elif isinstance(d, float) and not math.isfinite(v):
            # no float setting has a meaning at nan / inf (an lr of nan trained NaN weights silently)
            raise ConfigError(f"config key {name!r} must be a finite number, got {v!r}")


PRETRAIN_MODELS = ("crossclr3", "ikem6")
DISTILL_MODELS = ("student6to3", "student3to1")
# the commands whose models have MoCo queues (linear / knn / finetune / the pipeline's top level have
# none; the pipeline validates its pretrain and distill stages with their own command)
QUEUE_COMMANDS = ("pretrain", "distill")


def check_batch_queue(cfg: Mapping[str, Any]) -> None:
    """MoCo enqueues whole global batches: data.batch_size must divide model.queue_size (§5.1)."""
    K, N = cfg["model"]["queue_size"], cfg["data"]["batch_size"]
    if K % N != 0:
        raise ConfigError(f"data.batch_size={N} does not divide model.queue_size={K}: MoCo enqueues whole "
                          f"batches (method.md §5.1 asserts K mod N = 0)")


# (key, lowest, whether lowest is allowed, highest or None, whether highest is allowed, what the key is):
# checked here, before any run folder exists, rather than failing inside the model, an op or a
# library after it was made, or training on silently (a negative shear, a topk of 0).
RANGES = (
    ("model.hidden_channels", 1, True, None, True, "channels of the first ST-GCN block"),
    ("model.hidden_dim", 1, True, None, True, "width of the projection head's hidden layer"),
    ("model.feature_dim", 1, True, None, True, "dimension of the contrastive features"),
    ("model.queue_size", 1, True, None, True, "K, queue entries per modality"),
    ("model.topk", 1, True, None, True, "mined positives per query, method.md §5.4a"),
    ("model.momentum", 0, True, 1, True, "the key encoders' momentum"),
    ("model.tau", 0, False, None, True, "the temperature"),
    ("model.dropout", 0, True, 1, False, "the dropout probability"),
    ("data.synthetic.num_classes", 2, True, None, True, "classes of the synthetic dataset"),
    ("data.synthetic.samples_per_class", 1, True, None, True, "samples per class of the synthetic dataset"),
    ("data.synthetic.seed", 0, True, None, True, "the synthetic dataset's seed"),
    ("data.synthetic.noise", 0, True, None, True, "the synthetic dataset's noise scale"),
    ("data.shear_amplitude", 0, True, None, True, "the shear augmentation's amplitude"),
    ("data.batch_size", 1, True, None, True, "the global training batch"),
    ("data.eval_batch_size", 1, True, None, True, "the evaluation batch"),
    ("optim.lr", 0, False, None, True, "the learning rate"),
    # step *decay* (method.md §5.2, x0.1): gamma <= 0 would flip the lr's sign (gradient ascent)
    ("optim.gamma", 0, False, 1, True, "the lr decay factor"),
    ("optim.epochs", 1, True, None, True, "epochs to train"),
    ("optim.momentum", 0, True, 1, False, "SGD momentum"),
    ("optim.weight_decay", 0, True, None, True, "SGD weight decay"),
    ("pretrain.cross_epoch", 0, True, None, True, "the last phase-1 epoch; 0 = phase 2 throughout"),
    ("linear.eval_every", 1, True, None, True, "epochs between test evaluations"),
    ("knn.k", 1, True, None, True, "neighbours that vote"),
    ("knn.temperature", 0, False, None, True, "the k-NN vote temperature"),
    ("finetune.eval_every", 1, True, None, True, "epochs between test evaluations"),
    ("finetune.label_fraction", 0, False, 1, True, "the fraction of training labels used"),
    ("finetune.subset_seed", 0, True, None, True, "the label subset's seed"),
    ("run.save_every", 1, True, None, True, "epochs between numbered checkpoints"),
    ("run.num_threads", 1, True, None, True, "torch intra-op threads; null = torch's default"),
)


def _check_ranges(cfg: Mapping[str, Any]) -> None:
    for key, low, low_ok, high, high_ok, what in RANGES:
        v = get(cfg, key)
        if v is None:                    # a nullable key left at null
            continue
        below = v < low if low_ok else v <= low
        above = high is not None and (v > high if high_ok else v >= high)
        if below or above:
            bound = f"{'>=' if low_ok else '>'} {low}"
            if high is not None:
                bound += f" and {'<=' if high_ok else '<'} {high}"
            raise ConfigError(f"{key} ({what}) must be {bound}, got {v!r}")
    steps = cfg["optim"]["step"]
    if steps and (min(steps) < 1 or any(b <= a for a, b in zip(steps, steps[1:]))):
        raise ConfigError(f"optim.step must list increasing epoch numbers >= 1 (the lr decays after each), "
                          f"got {list(steps)}")
    if cfg["model"]["topk"] > cfg["model"]["queue_size"]:
        raise ConfigError(f"model.topk={cfg['model']['topk']} mines more positives than the queue holds "
                          f"(model.queue_size={cfg['model']['queue_size']})")


def validate(cfg: Mapping[str, Any], command: Optional[str] = None) -> None:
    """Keys and types against defaults.yaml, then value checks; raises ConfigError naming the key.

    command: the command the config is for; the batch / queue check runs only for QUEUE_COMMANDS
    (None = unknown: the pretrain / distill code checks it again before it builds anything)."""
    schema = defaults()
    pipeline = cfg.get("pipeline")
    _check(schema, {k: v for k, v in cfg.items() if k != "pipeline"})
    if pipeline is not None:
        if not isinstance(pipeline, Mapping):
            raise ConfigError("config key 'pipeline' must map stage names to override mappings")
        for stage, over in pipeline.items():
            if stage not in ("pretrain", "distill", "linear", "knn"):
                raise ConfigError(f"unknown pipeline stage 'pipeline.{stage}'; expected pretrain, distill, linear, knn")
            _check(schema, _expand_dotted(over or {}), f"pipeline.{stage}.")
    o, r = cfg["optim"], cfg["run"]
    if any(not isinstance(s, int) or isinstance(s, bool) for s in o["step"]):
        raise ConfigError(f"optim.step must be a list of epoch numbers, got {o['step']!r}")
    _check_ranges(cfg)
    if r["amp"] not in ("none", "bf16"):
        raise ConfigError(f"run.amp must be 'none' or 'bf16', got {r['amp']!r}")
    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", str(r["device"])):
        raise ConfigError(f"run.device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {r['device']!r}")
    if r["max_steps_per_epoch"] is not None and r["max_steps_per_epoch"] < 0:
        # 0 and null mean 'no cap' (loops.py); a negative cap would silently train nothing
        raise ConfigError(f"run.max_steps_per_epoch must be >= 1 (or 0 / null for full epochs), "
                          f"got {r['max_steps_per_epoch']}")
    if cfg["model"]["backend"] not in ("skelfast", "reference"):
        raise ConfigError(f"model.backend must be 'skelfast' or 'reference', got {cfg['model']['backend']!r}")
    if not str(r["out_dir"]).strip():
        raise ConfigError("run.out_dir must name a folder (the parent of the run folders), got an empty string")
    _check_lock_keys(cfg)
    if command in QUEUE_COMMANDS:
        check_batch_queue(cfg)


def _check_lock_keys(cfg: Mapping[str, Any]) -> None:
    """parity.lock_keys against the pretraining model's modalities, as the model will check them
    when it is built, after the run folder exists."""
    lock, name = cfg["parity"]["lock_keys"], cfg["model"]["name"]
    if lock is None or name not in PRETRAIN_MODELS:
        return
    from ..reference.build import MODEL_DEFAULTS
    from ..reference.parity import Parity, resolve_lock
    try:
        resolve_lock(Parity(lock_keys=tuple(lock)), MODEL_DEFAULTS[name][1]["modalities"])
    except ValueError as e:
        raise ConfigError(f"parity.lock_keys: {e}") from None


def load_config(preset: Optional[str] = None, sets: Iterable[str] = (), base: Optional[Mapping[str, Any]] = None,
                check: bool = True, command: Optional[str] = None) -> Dict[str, Any]:
    """defaults.yaml <- `base` <- preset file <- `--set` items; validated (for `command`, see validate)
    unless check=False."""
    cfg = defaults()
    if base is not None:
        cfg = merge(cfg, base)
    if preset:
        cfg = merge(cfg, _expand_dotted(_read_yaml(preset_path(preset))))
    cfg = apply_sets(cfg, sets)
    if check:
        validate(cfg, command)
    return cfg


def save_config(cfg: Mapping[str, Any], run_dir: str) -> str:
    """Write the resolved config as `run_dir/config.yaml` (atomically); returns the path."""
    path = os.path.join(run_dir, "config.yaml")
    tmp = path + ".tmp"
    with open(tmp, "w") as fh:
        yaml.safe_dump(_plain(cfg), fh, sort_keys=False)
    os.replace(tmp, path)
    return path


def _plain(x):
    if isinstance(x, Mapping):
        return {str(k): _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    return x


def get(cfg: Mapping[str, Any], dotted: str) -> Any:
    cur: Any = cfg
    for p in dotted.split("."):
        cur = cur[p]
    return cur


def set_key(cfg: Dict[str, Any], dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    cur = cfg
    for p in parts[:-1]:
        cur = cur.setdefault(p, {})
    cur[parts[-1]] = value
