"""Official CrosSCLR / IKEM checkpoints <-> skelfast reference models (key mapping and loading).

Layer: model utilities (plain PyTorch). Official state dicts (`net/crossclr_6views.py`,
`net/crossclr_3views.py`, torchlight `save_model`) name one module per modality and role:

  encoder_q{sfx}, encoder_k{sfx}          query / key ST-GCN of modality x, sfx = '' for joint,
                                          '_motion', '_bone', '_acceleration', '_rotation_axis', '_omega'
  mlp2{l}                                 IKEM head of modality x, l in j m b a r o
  encoder_student_{l} / encoder_student   students (§6.1) / the fused 9-channel student (§6.2)
  queue{sfx}, queue_ptr{sfx}              per-modality queue (D, K) and its long pointer (1,)
  queue_teacher, queue_ptr_teacher        teacher-feature queue (G*D, K) (§6)

Inside an encoder the skelfast STGCN uses the official names (data_bn, st_gcn_networks.i.gcn.conv,
.tcn.{0,2,3}, .residual.{0,1}, edge_importance.i, A, fc...), so the encoder suffix passes through;
the per-modality queues are stacked into one (G, D, K) buffer with a host-side pointer.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch

from ..reference.models import LinearEval, MultiModalMoCo, TeacherStudent

__all__ = ["OFFICIAL_SUFFIX", "OFFICIAL_LETTER", "OfficialLayout", "LoadReport", "official_layout",
           "default_ignore_weights", "load_official_checkpoint", "to_official_state_dict", "read_state_dict"]

OFFICIAL_SUFFIX = {"joint": "", "motion": "_motion", "bone": "_bone", "acceleration": "_acceleration",
                   "rotation_axis": "_rotation_axis", "omega": "_omega"}
OFFICIAL_LETTER = {"joint": "j", "motion": "m", "bone": "b", "acceleration": "a", "rotation_axis": "r", "omega": "o"}


@dataclass
class OfficialLayout:
    """How one skelfast model's state maps onto official names."""

    modules: Dict[str, str] = field(default_factory=dict)             # official prefix -> skelfast prefix
    queues: Dict[str, Tuple[str, int]] = field(default_factory=dict)  # official buffer -> (QueueBank path, slot)
    pointers: Dict[str, str] = field(default_factory=dict)            # official ptr buffer -> QueueBank path
    optional: Tuple[str, ...] = ()                                    # regexes of skelfast keys that may stay fresh


@dataclass
class LoadReport:
    """What load_official_checkpoint did: skelfast keys loaded, official keys ignored, skelfast keys left fresh."""

    loaded: List[str]
    ignored: List[str]
    missing: List[str]


def official_layout(model: torch.nn.Module) -> OfficialLayout:
    """The official-name layout of a reference model (MultiModalMoCo, TeacherStudent, LinearEval)."""
    lay = OfficialLayout()
    if isinstance(model, MultiModalMoCo):
        for g, m in enumerate(model.modalities):
            sfx = OFFICIAL_SUFFIX[m]
            lay.modules[f"encoder_q{sfx}"] = f"encoders_q.{g}"
            lay.modules[f"encoder_k{sfx}"] = f"encoders_k.{g}"
            lay.modules[f"mlp2{OFFICIAL_LETTER[m]}"] = f"ikem_heads.{g}"
            lay.queues[f"queue{sfx}"] = ("queues", g)
            lay.pointers[f"queue_ptr{sfx}"] = "queues"
    elif isinstance(model, TeacherStudent):
        for g, m in enumerate(model.teacher_modalities):
            sfx = OFFICIAL_SUFFIX[m]
            lay.modules[f"encoder_q{sfx}"] = f"teacher.{g}"
            lay.queues[f"queue{sfx}"] = ("queues", g)
            lay.pointers[f"queue_ptr{sfx}"] = "queues"
        if model.fused_student:
            lay.modules["encoder_student"] = "students.0"
        else:
            for s, m in enumerate(model.student_modalities):
                lay.modules[f"encoder_student_{OFFICIAL_LETTER[m]}"] = f"students.{s}"
        lay.queues["queue_teacher"] = ("teacher_queue", 0)
        lay.pointers["queue_ptr_teacher"] = "teacher_queue"
        # Students and queues start fresh when loading a pretrained teacher (§6.1 'Modules'); only
        # then (load_official_checkpoint drops these for a distillation checkpoint).
        lay.optional = (r"^students\.", r"^queues\.", r"^teacher_queue\.")
    elif isinstance(model, LinearEval):
        if model.fused:
            lay.modules["encoder_student"] = "encoders.0"
        else:
            for i, m in enumerate(model.streams):
                name = f"encoder_q{OFFICIAL_SUFFIX[m]}" if model.kind == "teacher" else \
                    f"encoder_student_{OFFICIAL_LETTER[m]}"
                lay.modules[name] = f"encoders.{i}"
        lay.optional = (r"^encoders\.\d+\.fc\.",)  # the new linear heads (§7 'Model')
    else:
        raise TypeError(f"no official layout for {type(model).__name__}; expected MultiModalMoCo, "
                        f"TeacherStudent or LinearEval")
    return lay


def read_state_dict(path_or_state_dict: Union[str, os.PathLike, Mapping[str, torch.Tensor]]) -> Dict[str, torch.Tensor]:
    """Load a checkpoint (path or mapping), unwrap {'state_dict'|'model': ...} and strip 'module.'."""
    sd = path_or_state_dict
    if isinstance(sd, (str, os.PathLike)):
        try:
            sd = torch.load(sd, map_location="cpu", weights_only=True)
        except FileNotFoundError:
            raise
        except Exception as e:  # noqa: BLE001 - any unpickling failure: name the file (torch's errors do not)
            raise ValueError(f"{os.fspath(path_or_state_dict)}: cannot read as a torch checkpoint of tensors, "
                             f"truncated or not a checkpoint? ({type(e).__name__}: {str(e)[:300]})") from None
    for wrapper in ("state_dict", "model"):
        if isinstance(sd, Mapping) and wrapper in sd and isinstance(sd[wrapper], Mapping):
            sd = sd[wrapper]
    if not isinstance(sd, Mapping):
        raise TypeError(f"expected a state dict (mapping of names to tensors), got {type(sd).__name__}")
    # torchlight saves k.split('module.')[-1]; DataParallel checkpoints carry a 'module.' prefix.
    return {k.split("module.")[-1]: v for k, v in sd.items()}


def default_ignore_weights(model: torch.nn.Module, sd: Mapping[str, torch.Tensor]) -> List[str]:
    """The official configs' `ignore_weights` for loading `sd` into `model` (prefix matches).

    LinearEval: key encoders, queues, mlp2 heads, the other kind's encoders, and each encoder's fc
    unless the checkpoint holds a linear head of the right shape (§7). TeacherStudent loading a
    pretraining checkpoint (no queue_teacher): key encoders, queues, mlp2 (§6.1). MoCo: nothing.
    """
    if isinstance(model, LinearEval):
        ignore = ["encoder_k", "queue", "mlp2", "encoder_student" if model.kind == "teacher" else "encoder_q"]
        target = model.state_dict()
        for off, mine in official_layout(model).modules.items():
            w = sd.get(f"{off}.fc.weight")
            if w is None or tuple(w.shape) != tuple(target[f"{mine}.fc.weight"].shape):
                ignore.append(f"{off}.fc")
        return ignore
    if isinstance(model, TeacherStudent) and "queue_teacher" not in sd:
        return ["encoder_k", "queue", "mlp2"]
    return []


def _map_key(key: str, modules: Mapping[str, str]) -> Optional[str]:
    best = None
    for off in modules:
        if key.startswith(off + ".") and (best is None or len(off) > len(best)):
            best = off
    return None if best is None else modules[best] + key[len(best):]


def _bank(model: torch.nn.Module, path: str):
    return model.get_submodule(path)


def load_official_checkpoint(path_or_state_dict, model: torch.nn.Module, ignore_weights: Optional[Sequence[str]] = None,
                             strict: bool = True) -> LoadReport:
    """Load an official CrosSCLR / IKEM state dict into a skelfast reference model, in place.

    Args:
        path_or_state_dict: a checkpoint path or a state dict in the official key layout.
        model: a MultiModalMoCo, TeacherStudent or LinearEval (e.g. from skelfast.reference.build).
        ignore_weights: official-key prefixes to drop, as the official configs' `ignore_weights`;
            None = default_ignore_weights(model, state_dict).
        strict: also fail if model state other than the model's fresh parts (new linear heads,
            students and queues of the teacher-student model) is left unloaded.
    Returns:
        LoadReport. Raises ValueError listing every unmatched or shape-mismatched official key.
    """
    sd = read_state_dict(path_or_state_dict)
    lay = official_layout(model)
    if isinstance(ignore_weights, str):   # read letter by letter, 'encoder_k' dropped every key starting e, n, c, ...
        raise TypeError(f"ignore_weights must be a sequence of key prefixes, got the string {ignore_weights!r} "
                        f"(use [{ignore_weights!r}])")
    if ignore_weights is None:
        ignore_weights = default_ignore_weights(model, sd)
    ignored = sorted(k for k in sd if any(k.startswith(p) for p in ignore_weights))
    target = model.state_dict()
    values: Dict[str, torch.Tensor] = {}
    slots: Dict[Tuple[str, int], torch.Tensor] = {}
    ptrs: Dict[str, List[int]] = {}
    unmatched, mismatched = [], []
    for key, val in sd.items():
        if key in ignored:
            continue
        if key in lay.queues:
            path, slot = lay.queues[key]
            want = target[f"{path}.queue"][slot].shape
            if tuple(val.shape) != tuple(want):
                mismatched.append(f"{key} {tuple(val.shape)} -> {path}.queue[{slot}] {tuple(want)}")
            else:
                slots[(path, slot)] = val
            continue
        if key in lay.pointers:
            ptrs.setdefault(lay.pointers[key], []).append(int(torch.as_tensor(val).reshape(-1)[0]))
            continue
        mine = _map_key(key, lay.modules)
        if mine is None or mine not in target:
            unmatched.append(key if mine is None else f"{key} (-> {mine}, not in model)")
        elif tuple(val.shape) != tuple(target[mine].shape):
            mismatched.append(f"{key} {tuple(val.shape)} -> {mine} {tuple(target[mine].shape)}")
        else:
            values[mine] = val
    if unmatched or mismatched:
        lines = [f"cannot load official checkpoint into {type(model).__name__}:"]
        if unmatched:
            lines.append(f"  {len(unmatched)} unmatched official key(s): " + ", ".join(unmatched))
        if mismatched:
            lines.append(f"  {len(mismatched)} shape mismatch(es): " + ", ".join(mismatched))
        lines.append(f"  known official prefixes: {sorted(lay.modules)} + queues {sorted(lay.queues)}; "
                     f"pass ignore_weights=[...] to drop parts on purpose")
        raise ValueError("\n".join(lines))
    for path, vals in ptrs.items():
        if len(set(vals)) != 1:
            raise ValueError(f"official queue pointers for {path!r} disagree ({vals}); skelfast keeps one pointer per bank")
        K = target[f"{path}.queue"].shape[-1]
        if not 0 <= vals[0] < K:   # would fail only later, at the first enqueue of training
            raise ValueError(f"official queue pointer {vals[0]} for {path!r} is outside the queue [0, {K})")

    loaded_banks = {path for path, _ in slots}
    missing = []
    for key in target:
        if key in values or key.endswith("_extra_state"):
            continue
        if key.endswith(".queue") and key[:-len(".queue")] in loaded_banks:
            path = key[:-len(".queue")]
            G = target[key].shape[0]
            if all((path, g) in slots for g in range(G)):
                continue
        missing.append(key)
    if strict:
        # A distillation checkpoint (it has queue_teacher) holds students and queues: none may stay
        # fresh. A bank that got some of its slots is never a fresh part (the rest would stay random).
        optional = () if isinstance(model, TeacherStudent) and "queue_teacher" in sd else lay.optional
        partial = {f"{path}.queue" for path in loaded_banks}
        bad = [k for k in missing if k in partial or not any(re.search(p, k) for p in optional)]
        if bad:
            raise ValueError(f"official checkpoint leaves {len(bad)} {type(model).__name__} entries unloaded: "
                             + ", ".join(bad) + " (pass strict=False to allow)")

    # Through load_state_dict, not copy_ into state_dict() tensors: those are copies for modules
    # whose state dict is a converted layout (skelfast.nn.StackedEncoders).
    new: Dict[str, torch.Tensor] = dict(values)
    for (path, slot), val in slots.items():
        queue = new.setdefault(f"{path}.queue", target[f"{path}.queue"].clone())
        queue[slot].copy_(val)
    result = model.load_state_dict(new, strict=False)
    if result.unexpected_keys:
        raise ValueError(f"{type(model).__name__} rejected mapped keys {result.unexpected_keys[:5]}")
    for path, vals in ptrs.items():
        _bank(model, path).ptr = vals[0]
    return LoadReport(loaded=sorted(values) + sorted(f"{p}.queue[{s}]" for p, s in slots), ignored=ignored,
                      missing=missing)


def to_official_state_dict(model: torch.nn.Module) -> Dict[str, torch.Tensor]:
    """The model's state in the official key layout (inverse of load_official_checkpoint)."""
    lay = official_layout(model)
    reverse = {mine: off for off, mine in lay.modules.items()}
    out: Dict[str, torch.Tensor] = {}
    for key, val in model.state_dict().items():
        if key.endswith("_extra_state"):
            continue
        best = None
        for mine in reverse:
            if key.startswith(mine + ".") and (best is None or len(mine) > len(best)):
                best = mine
        if best is not None:
            out[reverse[best] + key[len(best):]] = val.detach().clone()
    for off, (path, slot) in lay.queues.items():
        out[off] = model.state_dict()[f"{path}.queue"][slot].detach().clone()
    for off, path in lay.pointers.items():
        out[off] = torch.tensor([_bank(model, path).ptr], dtype=torch.long)
    return out
