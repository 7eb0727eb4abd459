"""Run folder, log file, TensorBoard scalars, progress bars and end-of-run plots.

Layer: training. Only rank 0 writes (DDP); other ranks get a silent logger. Scalars go to
TensorBoard (if importable), to `metrics.jsonl` and to an in-memory history that the checkpoint
carries, so the loss-curve plot of a resumed run covers the whole run.
"""
from __future__ import annotations

import json
import logging
import os
import sys
import time
from typing import Any, Dict, List, Mapping, Optional, Sequence

__all__ = ["RunLogger", "make_run_dir", "progress", "plot_losses", "plot_table", "format_table"]


# What a run leaves in its folder; a new run writing beside them would append to the old metrics and
# mix its checkpoints with the old numbered ones.
RUN_ARTIFACTS = ("metrics.jsonl", "last.pt", "results.json", "train.log")


def make_run_dir(cfg: Mapping[str, Any], command: str, model_name: Optional[str] = None) -> str:
    """The folder of a new (not resumed) run: run.out_dir/run.name, created.

    Unnamed runs get <command>_<model>_<timestamp> (<command>_<timestamp> without a model name:
    the pipeline), with a -2, -3, ... suffix when that folder
    exists (two runs started in the same second). A named folder that already holds a run's
    files is an error unless run.reuse_dir is true (resume a run with --resume instead)."""
    r = cfg["run"]
    parent = os.path.expanduser(r["out_dir"])
    if r["name"]:
        path = os.path.join(parent, r["name"])
        found = [f for f in RUN_ARTIFACTS if os.path.exists(os.path.join(path, f))]
        if found and not r.get("reuse_dir", False):
            if command in ("pretrain", "distill", "finetune"):
                cont = "resume it with --resume, "
            elif command == "pipeline":
                cont = f"continue its stages with `python -m skelfast.train <stage> --resume {path}/<stage>`, "
            else:
                cont = ""
            raise FileExistsError(f"run folder {path} already holds a run ({', '.join(found)}); choose another "
                                  f"run.name, delete the folder, {cont}or set run.reuse_dir=true to write into it "
                                  f"anyway")
        os.makedirs(path, exist_ok=True)
        return path
    if model_name:
        model_name = model_name.replace(":", "-")     # 'finetune:ikem6' (a finetune checkpoint evaluated)
    base = os.path.join(parent, "_".join(filter(None, (command, model_name, time.strftime("%Y%m%d-%H%M%S")))))
    os.makedirs(parent, exist_ok=True)
    for i in range(1, 10_000):
        path = base if i == 1 else f"{base}-{i}"
        try:
            os.makedirs(path)   # exist_ok=False: the first process to create the name owns it
            return path
        except FileExistsError:
            continue
    raise FileExistsError(f"no free run folder name under {base}-N")


class RunLogger:
    """log(msg) to console + `train.log`; scalar(tag, value, step) to TensorBoard + metrics.jsonl."""

    def __init__(self, run_dir: str, enabled: bool = True, tensorboard: bool = True,
                 history: Optional[List[Dict[str, Any]]] = None, name: str = "skelfast.train",
                 resume_step: Optional[int] = None):
        """history: the scalars logged so far (a resumed run's checkpoint). resume_step: the global
        step of that checkpoint; a run killed after it (kill -9, power loss) left later scalars in
        metrics.jsonl and TensorBoard that the resumed run logs again, so metrics.jsonl is rewritten
        to `history` and TensorBoard purges its events after resume_step (its purge_step; tags
        stepped by epoch, such as test/top1, are below it and keep theirs)."""
        self.run_dir, self.enabled = run_dir, enabled
        self.history: List[Dict[str, Any]] = list(history or [])
        self.logger = logging.getLogger(f"{name}.{id(self)}")
        self.logger.setLevel(logging.INFO)
        self.logger.propagate = False
        self.writer = None
        self._metrics = None
        if not enabled:
            self.logger.addHandler(logging.NullHandler())
            return
        fmt = logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S")
        fh = logging.FileHandler(os.path.join(run_dir, "train.log"))
        fh.setFormatter(fmt)
        self.logger.addHandler(fh)
        metrics = os.path.join(run_dir, "metrics.jsonl")
        if resume_step is not None and history is not None:
            tmp = metrics + ".tmp"
            with open(tmp, "w") as f:
                f.writelines(json.dumps(rec) + "\n" for rec in self.history)
            os.replace(tmp, metrics)   # atomic: a crash here leaves the old file or the new one
        self._metrics = open(metrics, "a")
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
                purge = None if resume_step is None else resume_step + 1
                self.writer = SummaryWriter(os.path.join(run_dir, "tb"), purge_step=purge)
            except Exception as e:  # noqa: BLE001 - TensorBoard is optional at run time
                self.log(f"TensorBoard disabled ({type(e).__name__}: {e})")

    def log(self, msg: str) -> None:
        if self.enabled:
            from tqdm import tqdm
            self.logger.info(msg)                  # the log file
            tqdm.write(msg, file=sys.stdout)       # the console, without breaking an active bar

    def scalar(self, tag: str, value: float, step: int) -> None:
        if not self.enabled:
            return
        value = float(value)
        rec = {"tag": tag, "value": value, "step": int(step)}
        self.history.append(rec)
        if self.writer is not None:
            self.writer.add_scalar(tag, value, step)
        if self._metrics is not None:
            self._metrics.write(json.dumps(rec) + "\n")
            self._metrics.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.flush()
            self.writer.close()
        if self._metrics is not None:
            self._metrics.close()
        for h in list(self.logger.handlers):
            h.close()
            self.logger.removeHandler(h)


def progress(total: int, desc: str, enabled: bool, initial: int = 0):
    """A tqdm bar (disabled off rank 0 or with run.progress false)."""
    from tqdm.auto import tqdm
    return tqdm(total=total, desc=desc, initial=initial, disable=not enabled, dynamic_ncols=True, leave=False,
                file=sys.stdout)


def _mpl():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def plot_losses(history: Sequence[Mapping[str, Any]], path: str, prefix: str = "train/") -> Optional[str]:
    """PNG of every `prefix*` scalar over steps (one line per tag); None if nothing to plot."""
    series: Dict[str, List] = {}
    for rec in history:
        if rec["tag"].startswith(prefix):
            series.setdefault(rec["tag"], []).append((rec["step"], rec["value"]))
    series = {k: v for k, v in series.items() if "lr" not in k}
    if not series:
        return None
    plt = _mpl()
    fig, ax = plt.subplots(figsize=(7, 4))
    for tag, pts in sorted(series.items()):
        pts.sort()
        ax.plot([p[0] for p in pts], [p[1] for p in pts], label=tag[len(prefix):])
    ax.set_xlabel("step")
    ax.set_ylabel("value")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def format_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> str:
    def fmt(v):
        return f"{v:.2f}" if isinstance(v, float) else str(v)
    cells = [[fmt(r.get(c, "")) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) if cells else len(c) for i, c in enumerate(columns)]
    line = "  ".join(c.ljust(w) for c, w in zip(columns, widths))
    sep = "  ".join("-" * w for w in widths)
    body = ["  ".join(x.ljust(w) for x, w in zip(row, widths)) for row in cells]
    return "\n".join([line, sep] + body)


def plot_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str], path: str, title: str = "") -> str:
    """The accuracy table as a PNG."""
    plt = _mpl()
    fig, ax = plt.subplots(figsize=(1.8 * len(columns), 0.5 + 0.4 * (len(rows) + 1)))
    ax.axis("off")
    cells = [[(f"{r.get(c):.2f}" if isinstance(r.get(c), float) else str(r.get(c, ""))) for c in columns] for r in rows]
    tab = ax.table(cellText=cells, colLabels=list(columns), loc="center", cellLoc="center")
    tab.auto_set_font_size(False)
    tab.set_fontsize(9)
    if title:
        ax.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
