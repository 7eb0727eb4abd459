"""Config -> model: skelfast.models.build with the config's model section and §11 parity flags,
and the checkpoint-to-encoder mappings used by distillation, linear evaluation and the API.

Layer: training. The pretraining/distillation model names map onto linear-evaluation models
(method.md §7 'Model'):

    ikem6 -> linear6 (teacher encoders encoders_q.g)      crossclr3 -> linear3
    student6to3 -> linear_student6to3 (students.s)        student3to1 -> linear_student3to1 (fused)
"""
from __future__ import annotations

from typing import Any, Dict, Mapping, Optional, Tuple

import torch
import torch.nn as nn

from ..models import build
from ..reference.build import MODEL_DEFAULTS
from ..reference.models import view_streams
from .checkpoint import CheckpointError

__all__ = ["PRETRAIN_MODELS", "DISTILL_MODELS", "LINEAR_OF", "TEACHER_OF", "FINETUNE_PREFIX", "build_model",
           "build_linear", "source_streams", "is_fused", "checkpoint_source", "encoder_weights", "load_encoders"]

PRETRAIN_MODELS = ("crossclr3", "ikem6")
DISTILL_MODELS = ("student6to3", "student3to1")
LINEAR_OF = {"ikem6": "linear6", "crossclr3": "linear3", "student6to3": "linear_student6to3",
             "student3to1": "linear_student3to1"}
# The pretraining model whose query encoders a distillation model's teacher is (method.md §6).
TEACHER_OF = {"student6to3": "ikem6", "student3to1": "crossclr3"}
# Where a model's evaluable encoders live in its state dict.
ENCODER_PREFIX = {"ikem6": "encoders_q.", "crossclr3": "encoders_q.", "student6to3": "students.",
                  "student3to1": "students."}
# A fine-tuning run's model name: this prefix and its source (the LinearEval of the source's view,
# its state dict `encoders.{i}.*` with the trained heads `encoders.{i}.fc.*`).
FINETUNE_PREFIX = "finetune:"


def _parity(cfg: Mapping[str, Any]) -> Dict[str, Any]:
    p = dict(cfg["parity"])
    if p.get("lock_keys") is not None:
        p["lock_keys"] = tuple(p["lock_keys"])
    return p


def build_model(cfg: Mapping[str, Any], name: Optional[str] = None, backend: Optional[str] = None) -> nn.Module:
    """The pretraining / distillation model of cfg['model'] (plus parity flags)."""
    m = cfg["model"]
    name = name or m["name"]
    if name not in PRETRAIN_MODELS + DISTILL_MODELS:
        raise ValueError(f"model.name={name!r} is not a pretraining or distillation model; expected one of "
                         f"{PRETRAIN_MODELS + DISTILL_MODELS}")
    kw = dict(hidden_channels=m["hidden_channels"], hidden_dim=m["hidden_dim"], feature_dim=m["feature_dim"],
              queue_size=m["queue_size"], tau=m["tau"], topk=m["topk"], dropout=m["dropout"])
    if name in PRETRAIN_MODELS:
        kw["momentum"] = m["momentum"]
    if m["true_timeline"] is not None:
        kw["true_timeline"] = m["true_timeline"]
    return build(name, backend=backend or m["backend"], **kw, **_parity(cfg))


def source_streams(source_name: str) -> Tuple[str, ...]:
    """The modalities of `source_name`'s evaluable encoders, in their checkpoint order (encoder g of
    the pretraining / distillation model is stream g of its LinearEval)."""
    return tuple(MODEL_DEFAULTS[LINEAR_OF[source_name]][1]["streams"])


def is_fused(source_name: str) -> bool:
    """Whether `source_name`'s evaluable encoder is one fused student reading all its streams (§6.2)."""
    return MODEL_DEFAULTS[LINEAR_OF[source_name]][1].get("fused", False)


def checkpoint_source(ck: Mapping[str, Any]) -> Tuple[str, Optional[Tuple[str, ...]]]:
    """(source model name, the streams whose encoders the checkpoint holds) of a pretrain, distill or
    finetune checkpoint; streams None = all of the source's. A fine-tuning run holds its view's."""
    name = ck["model_name"]
    if not name.startswith(FINETUNE_PREFIX):
        return name, None
    source = name[len(FINETUNE_PREFIX):]
    if source not in LINEAR_OF:
        raise CheckpointError(f"{ck.get('path', 'checkpoint')}: fine-tuned model {source!r} is unknown; expected "
                              f"one of {sorted(LINEAR_OF)}")
    streams = source_streams(source)
    if is_fused(source):
        return source, streams              # one encoder reading all its streams
    return source, tuple(streams[i] for i in view_streams(streams, False, ck["config"]["finetune"]["view"]))


def build_linear(source_name: str, model_cfg: Mapping[str, Any], num_class: int, backend: str = "skelfast",
                 train_backbone: bool = False, view: Optional[str] = None,
                 held: Optional[Tuple[str, ...]] = None) -> nn.Module:
    """The LinearEval model evaluating `source_name`'s encoders (method.md §7).

    train_backbone=True (fine-tuning) makes every parameter trainable and keeps the backbones in
    train mode; otherwise only the fc heads train and the backbones stay in eval mode (§7).
    view: build only the streams of this view (fine-tuning one view trains exactly its encoders,
    and the skelfast backend's batched encoders cannot train a subset of their streams).
    held: the streams there are encoders for (checkpoint_source; None = all of the source's): the
    model has these, or the view's among them.
    """
    if source_name not in LINEAR_OF:
        raise CheckpointError(f"cannot evaluate model {source_name!r}; expected one of {sorted(LINEAR_OF)}")
    kw = dict(hidden_channels=model_cfg["hidden_channels"], hidden_dim=model_cfg["hidden_dim"],
              dropout=model_cfg["dropout"], num_class=num_class)
    if model_cfg.get("true_timeline") is not None:
        kw["true_timeline"] = model_cfg["true_timeline"]
    if train_backbone:
        kw["backbone_eval"] = False
    streams = source_streams(source_name) if held is None else tuple(held)
    if view is not None:
        try:
            picked = view_streams(streams, is_fused(source_name), view)
        except ValueError as e:
            if held is None:
                raise
            raise CheckpointError(f"{e} (a fine-tuned checkpoint holds only the encoders of its fine-tuning "
                                  f"view)") from e
        if not is_fused(source_name):          # the fused student's one encoder reads all its streams
            streams = tuple(streams[i] for i in picked)
    if streams != source_streams(source_name):
        kw["streams"] = streams
    model = build(LINEAR_OF[source_name], backend=backend, **kw)
    if train_backbone:
        for p in model.parameters():
            p.requires_grad_(True)
    return model


def encoder_weights(source_name: str, state_dict: Mapping[str, torch.Tensor],
                    finetuned: bool = False) -> Dict[str, torch.Tensor]:
    """`encoders.i.*` backbone weights (heads dropped) from a pretraining / distillation state dict,
    or (finetuned) from a fine-tuning run's LinearEval state dict."""
    prefix = "encoders." if finetuned else ENCODER_PREFIX[source_name]
    out = {}
    for k, v in state_dict.items():
        if k.startswith(prefix):
            rest = k[len(prefix):]
            i, sub = rest.split(".", 1)
            if sub.startswith("fc."):
                continue   # the projection head is discarded (§7 'Model')
            out[f"encoders.{i}.{sub}"] = v
    if not out:
        raise CheckpointError(f"state dict has no {prefix}* encoder weights for model {source_name!r}")
    return out


def load_encoders(linear_model: nn.Module, source_name: str, state_dict: Mapping[str, torch.Tensor],
                  held: Optional[Tuple[str, ...]] = None) -> None:
    """Load the backbones of `source_name` into a LinearEval; every non-fc key must be present. A
    LinearEval of some of the source's streams (build_linear(view=...)) gets those streams' encoders.
    held: a fine-tuning run's streams (checkpoint_source): state_dict is that run's LinearEval's."""
    w = encoder_weights(source_name, state_dict, finetuned=held is not None)
    if not linear_model.fused:
        src = source_streams(source_name) if held is None else tuple(held)
        if not set(linear_model.streams) <= set(src):
            raise CheckpointError(f"the evaluation model's streams {linear_model.streams} are not all encoders of "
                                  f"{source_name!r} ({src})")
        position = {str(src.index(m)): str(j) for j, m in enumerate(linear_model.streams)}
        remapped = {}
        for k, v in w.items():
            _, g, sub = k.split(".", 2)              # encoders.{source index}.{rest}
            if g in position:
                remapped[f"encoders.{position[g]}.{sub}"] = v
        w = remapped
    missing, unexpected = linear_model.load_state_dict(w, strict=False)
    missing = [k for k in missing if ".fc." not in k]
    if missing or unexpected:
        raise CheckpointError(f"checkpoint of {source_name!r} does not fit the evaluation model: missing "
                              f"{missing[:5]}{'...' if len(missing) > 5 else ''}, unexpected {unexpected[:5]}")
