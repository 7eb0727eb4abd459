"""One constructor for every reference model: build(name, **overrides), official-config defaults.

Layer: reference (plain PyTorch). Defaults follow the official HEAD configs (method.md §5.2,
§6, §7): 16 base channels, 256-d hidden, 128-d features, K = 32768, m = 0.999, tau = 0.07, top-1.
Overrides may be any constructor argument of the model or any Parity flag (method.md §11).
New models are added with @register(name).
"""
from __future__ import annotations

import inspect
from typing import Callable, Dict

import torch.nn as nn

from ..modality_spec import MODALITIES3, MODALITIES6
from .models import LinearEval, MultiModalMoCo, TeacherStudent
from .parity import Parity, split_parity_kwargs

__all__ = ["build", "register", "available", "MODEL_DEFAULTS"]

_COMMON = dict(hidden_channels=16, hidden_dim=256, dropout=0.5, topology="ntu25")
_PRETRAIN = dict(_COMMON, feature_dim=128, queue_size=32768, tau=0.07, topk=1)

# name -> (model class, default keyword arguments)
MODEL_DEFAULTS: Dict[str, tuple] = {}
_REGISTRY: Dict[str, Callable[..., nn.Module]] = {}


def register(name: str, cls: Callable[..., nn.Module], **defaults) -> None:
    """Register a model constructor and its default arguments under `name`."""
    if name in _REGISTRY:
        raise ValueError(f"model {name!r} is already registered")
    _REGISTRY[name] = cls
    MODEL_DEFAULTS[name] = (cls, dict(defaults))


def available():
    """Names accepted by build()."""
    return sorted(_REGISTRY)


def build(name: str, **overrides) -> nn.Module:
    """Build a reference model by name with official-config defaults.

    Names: crossclr3 (IKEM-repo 3-modality model: CrosSCLR + IKEM heads, §5.5), ikem6 (§5),
    student6to3 (§6.1), student3to1 (§6.2), linear6, linear3 (§7), linear_student6to3,
    linear_student3to1. Unknown names or arguments raise with the accepted ones listed.
    """
    if not isinstance(name, str) or name not in _REGISTRY:     # a list was 'unhashable type'
        raise ValueError(f"unknown model {name!r}; available: {available()}")
    cls, defaults = MODEL_DEFAULTS[name]
    par_kw, rest = split_parity_kwargs(overrides)
    base_parity = rest.pop("parity", defaults.get("parity", Parity()))
    if not isinstance(base_parity, Parity):   # 'official' failed in dataclasses.replace, naming nothing
        raise TypeError(f"build({name!r}): parity must be a skelfast.reference.parity.Parity (or pass its flags as "
                        f"keywords), got {type(base_parity).__name__} {base_parity!r}")
    kwargs = {k: v for k, v in defaults.items() if k != "parity"}
    kwargs.update(rest)
    accepted = set(inspect.signature(cls).parameters) - {"parity"}
    unknown = sorted(set(kwargs) - accepted)
    if unknown:
        raise TypeError(f"build({name!r}): unknown argument(s) {unknown}; accepted: {sorted(accepted)} "
                        f"and Parity flags")
    return cls(parity=base_parity.replace(**par_kw), **kwargs)


# method.md §5.5 / config crossclr_3views.yaml: j, m, b with CrosSCLR's bone list, no time scale.
register("crossclr3", MultiModalMoCo, modalities=MODALITIES3, modality_topology="ntu25_crossclr",
         true_timeline=False, momentum=0.999, **_PRETRAIN)
# method.md §5 / config crossclr_6views.yaml.
register("ikem6", MultiModalMoCo, modalities=MODALITIES6, modality_topology="ntu25", true_timeline=True,
         momentum=0.999, **_PRETRAIN)
# method.md §6.1 / ts_crossclr_6views.yaml.
register("student6to3", TeacherStudent, teacher_modalities=MODALITIES6, student_modalities=MODALITIES3,
         fused_student=False, modality_topology="ntu25", true_timeline=True, **_PRETRAIN)
# method.md §6.2 / ts_crossclr_3views.yaml (true_timeline not set there, so True; §11 #14).
register("student3to1", TeacherStudent, teacher_modalities=MODALITIES3, student_modalities=MODALITIES3,
         fused_student=True, modality_topology="ntu25_crossclr", true_timeline=True, **_PRETRAIN)
# method.md §7 / le_*.yaml (HEAD uses view 'omega' for the teacher; the default here is 'all').
register("linear6", LinearEval, streams=MODALITIES6, kind="teacher", num_class=60, modality_topology="ntu25",
         true_timeline=True, default_view="all", **_COMMON)
register("linear3", LinearEval, streams=MODALITIES3, kind="teacher", num_class=60,
         modality_topology="ntu25_crossclr", true_timeline=False, default_view="all", **_COMMON)
register("linear_student6to3", LinearEval, streams=MODALITIES3, kind="student", num_class=60,
         modality_topology="ntu25", true_timeline=True, default_view="all", **_COMMON)
register("linear_student3to1", LinearEval, streams=MODALITIES3, fused=True, kind="student", num_class=60,
         modality_topology="ntu25_crossclr", true_timeline=True, default_view="all", **_COMMON)
