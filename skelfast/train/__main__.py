"""`python -m skelfast.train [pretrain|distill|linear|knn|finetune] ...`; no command = the whole
synthetic pipeline (pretrain -> distill -> linear, see train/pipeline.py).

Layer: training CLI. Every command takes --config (a preset name or YAML path) and any number of
`--set key.sub=value` overrides; the resolved config is saved as config.yaml in the run folder.
Input problems (config keys, data folder, checkpoint kind, batch vs queue size) are reported as one
clear error line before training starts.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import List, Optional, Tuple

COMMAND_PRESET = {"pretrain": "ikem6", "distill": "student6to3", "linear": "linear", "knn": "knn",
                  "finetune": "finetune", "pipeline": "quick"}


def _common(p: argparse.ArgumentParser, preset: str) -> None:
    # default None (the command's preset is filled in later) so that an explicit --config is visible
    p.add_argument("--config", default=None, help=f"preset name or YAML file (default {preset})")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="override any config key, e.g. --set optim.lr=0.05 (repeatable)")
    p.add_argument("--out", default=None, help="run.out_dir: parent folder of run folders")
    p.add_argument("--name", default=None, help="run.name: the run folder name")
    p.add_argument("--data", default=None, help="data.root: a prepared folder (default: synthetic data)")
    p.add_argument("--device", default=None, help="run.device: auto | cpu | cuda | cuda:N")
    p.add_argument("--backend", choices=("skelfast", "reference"), default=None,
                   help="model.backend: fused ops (default) or the plain-PyTorch reference")
    p.add_argument("--amp", choices=("none", "bf16"), default=None, help="run.amp: bf16 autocast")
    p.add_argument("--compile", action="store_true", help="run.compile: torch.compile the encoders")
    p.add_argument("--cuda-graphs", action="store_true", help="run.cuda_graphs: CUDA graphs (GPU)")
    p.add_argument("--epochs", type=int, default=None, help="optim.epochs")
    p.add_argument("--no-progress", action="store_true", help="no tqdm bars")


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m skelfast.train", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command")
    p = sub.add_parser("pretrain", help="MoCo pretraining, phases 1 and 2 (method.md §5)",
                       epilog="Multi-GPU / multi-node: torchrun --nproc_per_node=P -m skelfast.train pretrain ... "
                              "data.batch_size is the global batch; keys of all ranks are all-gathered before "
                              "the enqueue, so every rank keeps identical queues; BN is per rank unless "
                              "--set distributed.sync_bn=true (GPU). Rank 0 logs and writes checkpoints.")
    _common(p, "ikem6")
    p.add_argument("--resume", default=None, help="checkpoint or run folder to continue (with its saved config; "
                                                  "bit-for-bit on CPU); with --epochs N, to N epochs in all")
    p = sub.add_parser("distill", help="relational 6->3 / 3->1 distillation (method.md §6)")
    _common(p, "student6to3")
    p.add_argument("--teacher", default=None, help="pretrain checkpoint (file or run folder) of the teacher")
    p.add_argument("--resume", default=None, help="checkpoint or run folder to continue (with its saved config); "
                                                  "with --epochs N, to N epochs in all")
    p = sub.add_parser("linear", help="linear evaluation on cached frozen features (method.md §7)")
    _common(p, "linear")
    p.add_argument("--checkpoint", default=None, help="pretrain / distill / finetune checkpoint (file or run folder; "
                   "a finetune run's fine-tuned backbones, the streams of its view)")
    p.add_argument("--view", default=None, help="joint|motion|bone|acceleration|rotation_axis|omega|3views|all, "
                   "or several separated by commas (one feature pass, one head per view)")
    p.add_argument("--random-init", action="store_true",
                   help="evaluate a randomly initialised encoder of the --checkpoint's architecture (the baseline)")
    p = sub.add_parser("knn", help="k-NN evaluation of frozen features")
    _common(p, "knn")
    p.add_argument("--checkpoint", default=None, help="pretrain / distill / finetune checkpoint (file or run folder; "
                   "a finetune run's fine-tuned backbones, the streams of its view)")
    p.add_argument("--view", default=None, help="one of joint|motion|bone|acceleration|rotation_axis|omega|3views|all")
    p.add_argument("--k", type=int, default=None, help="knn.k: neighbours that vote (at most the training samples)")
    p.add_argument("--random-init", action="store_true",
                   help="evaluate a randomly initialised encoder of the --checkpoint's architecture (the baseline)")
    p = sub.add_parser("finetune", help="fine-tuning / semi-supervised evaluation")
    _common(p, "finetune")
    p.add_argument("--checkpoint", default=None, help="pretrain / distill checkpoint (file or run folder)")
    p.add_argument("--view", default=None, help="one of joint|motion|bone|acceleration|rotation_axis|omega|3views|all")
    p.add_argument("--label-fraction", type=float, default=None, help="0.01 | 0.1 | 1.0 (seeded per-class subset)")
    p.add_argument("--resume", default=None, help="checkpoint or run folder to continue (with its saved config); "
                                                  "with --epochs N, to N epochs in all")
    p = sub.add_parser("pipeline", help="pretrain -> distill -> linear on synthetic data (the default command)")
    _common(p, "quick")
    return ap


def _sets_from_flags(a) -> List[str]:
    s = []
    for flag, key in (("out", "run.out_dir"), ("name", "run.name"), ("data", "data.root"), ("device", "run.device"),
                      ("backend", "model.backend"), ("amp", "run.amp"), ("epochs", "optim.epochs")):
        v = getattr(a, flag, None)
        if v is not None:
            s.append(f"{key}={v}")
    if a.compile:
        s.append("run.compile=true")
    if a.cuda_graphs:
        s.append("run.cuda_graphs=true")
    if a.no_progress:
        s.append("run.progress=false")
    # as --set items, so that they are validated like the config keys they set
    if getattr(a, "k", None) is not None:
        s.append(f"knn.k={a.k}")
    if getattr(a, "label_fraction", None) is not None and not getattr(a, "resume", None):
        s.append(f"finetune.label_fraction={a.label_fraction}")
    return s


def _check_resume_config(a) -> None:
    """An explicit --config on --resume must be the resumed run's own config: the run continues with
    its saved config, so a different one would be silently ignored (or switch settings mid-run).
    Keys the given config leaves null are the ones a run fills in (run.name, distill.teacher,
    finetune.checkpoint, ...): not compared, so the run's own preset is accepted."""
    from .checkpoint import load_checkpoint
    from .config import ConfigError, load_config
    saved = load_checkpoint(a.resume, expect_commands=(a.command,))["config"]
    given = load_config(a.config, check=False)
    diff = []

    def walk(x, y, prefix):
        for k in sorted(set(x) | set(y), key=str):
            xv, yv = x.get(k), y.get(k)
            if isinstance(xv, dict) and isinstance(yv, dict):
                walk(xv, yv, f"{prefix}{k}.")
            elif xv != yv and xv is not None:
                diff.append(f"{prefix}{k}")
    walk(given, saved, "")
    if diff:
        raise ConfigError(f"--resume {a.resume}: --config {a.config} differs from the resumed run's saved config "
                          f"(in {', '.join(diff[:6])}{', ...' if len(diff) > 6 else ''}); a resumed run keeps its "
                          f"saved config: drop --config, or start a new run to change settings")


def _resume_epochs(changes: List[str]) -> Tuple[Optional[int], List[str]]:
    """The optim.epochs=N of a --resume (from --epochs or --set optim.epochs=N), and the other changes."""
    from .config import ConfigError
    epochs, rest = None, []
    for c in changes:
        key, _, value = c.partition("=")
        if key.strip() != "optim.epochs":
            rest.append(c)
            continue
        try:
            epochs = int(value)
        except ValueError:
            raise ConfigError(f"optim.epochs must be an integer, got {value!r}") from None
    return epochs, rest


def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0].startswith("-") and argv[0] not in ("-h", "--help"):
        argv = ["pipeline"] + argv
    a = _parser().parse_args(argv)
    if a.command is None:
        a = _parser().parse_args(["pipeline"])
    config_given = a.config is not None
    a.config = a.config or COMMAND_PRESET[a.command]
    from .checkpoint import CheckpointError
    from .config import ConfigError, check_preset_command, load_config
    from .data import DataError
    from .loops import TrainingError
    from ..data import PrepareError

    try:
        overrides = a.sets + _sets_from_flags(a)
        changes = [o for o in overrides if not o.startswith("run.progress=")]   # display only
        epochs = None
        if getattr(a, "resume", None):
            # a resumed run continues with the config saved in its checkpoint; only its length may change
            epochs, other = _resume_epochs(changes)
            if other:
                raise ConfigError(f"--resume continues the checkpoint's saved config (bit-for-bit); it cannot be "
                                  f"combined with --set or config flags other than --epochs N (got {other}); "
                                  f"start a new run to change settings")
        check_preset_command(a.config, a.command)
        if a.command == "knn" and a.epochs is not None:
            raise ConfigError("knn trains nothing: --epochs has no effect there")
        if getattr(a, "resume", None) and config_given:
            _check_resume_config(a)
        # flags after --set so that explicit flags win; the queue check only for commands with queues
        cfg = load_config(a.config, overrides, command=a.command)
        if a.command == "pipeline":
            from .pipeline import check_overrides_reach_stages
            check_overrides_reach_stages(cfg, [o.split("=", 1)[0].strip() for o in changes])
        if a.command == "pretrain":
            from .pretrain import run_pretrain
            res = run_pretrain(cfg, resume=a.resume, epochs=epochs)
        elif a.command == "distill":
            from .distill import run_distill
            res = run_distill(cfg, teacher=a.teacher, resume=a.resume, epochs=epochs)
        elif a.command == "linear":
            from .linear import run_linear
            res = run_linear(cfg, a.checkpoint, a.view, a.random_init or None)
        elif a.command == "knn":
            from .knn import run_knn
            res = run_knn(cfg, a.checkpoint, a.view, a.random_init or None)
        elif a.command == "finetune":
            from .finetune import run_finetune
            res = run_finetune(cfg, a.checkpoint, a.view, resume=a.resume,
                               label_fraction=a.label_fraction if a.resume else None, epochs=epochs)
        else:
            from .pipeline import run_pipeline
            res = run_pipeline(cfg)
    except (ConfigError, CheckpointError, DataError, PrepareError, TrainingError, ValueError, FileNotFoundError,
            FileExistsError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    finally:
        import torch.distributed as dist
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
    if isinstance(res, dict) and res.get("interrupted"):
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
