"""Official-code parity flags: every bug / quirk of method.md §11 in one place.

Layer: reference (plain PyTorch). `Parity` is passed to every reference model (and accepted as
keyword overrides by `skelfast.reference.build`). Defaults follow the §11 recommendations; where
§11 only says "a parity flag" the default keeps the official behaviour (faithful reproduction).

| §11 | flag                      | default  | meaning |
|-----|---------------------------|----------|---------|
| #1  | omega_uses_bone_queue     | False    | True: distillation uses L-_o = q_o Q_bone (official bug); False: q_o Q_omega (fix) |
| #2  | lock_keys                 | None     | modalities whose key encoders are frozen in phase 2; None = official ("3lock": joint, bone, rotation_axis for 6 modalities; joint, bone for 3); () = update all |
| #3  | ikem_term                 | True     | HEAD: IKEM term on; False = src.zip 'onlyloss1' (context term only) |
| #4  | independent_key_init      | True     | official: weights_init re-draws key encoders independently after the q->k copy; False = MoCo copy |
| #5  | teacher_train_mode        | True     | official: frozen teacher runs in train mode (dropout, batch-stat BN, drifting running stats); False = eval |
| #6  | (none)                    | -        | time scale 50/F always in float (never integer division); not configurable |
| #7  | (none)                    | -        | cross products always over the channel axis; not configurable |
| #8  | context                   | True     | False drops the context block (implemented properly; the official 6-modality code raises); distillation has no context block, so it ignores the flag (§6.1) |
| #9  | (none)                    | -        | Feeder_single motion_scale calls camera_view: data pipeline, dead code, not part of the reference |
| #10 | shared_crossclr_heads     | False    | True: CrosSCLR-original heads, motion/bone heads = own Linear+ReLU then the joint head (3-modality baseline only) |
| #11 | (none)                    | -        | reporting best vs last top-1: training loop concern, report both |
| #12 | (none)                    | -        | worker re-seeding: not reproduced |
| #13 | (none)                    | -        | config paths: explicit inputs of the training CLI |
| #14 | true_timeline (model arg) | per model| explicit per model: crossclr3/linear3 False, ikem6/student6to3/student3to1/linear6 True; the distill command uses the teacher's unless model.true_timeline is set (student3to1 over crossclr3 official: true, with a warning) |
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Optional, Sequence, Tuple

from ..modality_spec import MODALITIES6

__all__ = ["Parity", "PARITY_FLAGS", "OFFICIAL_LOCK", "resolve_lock", "split_parity_kwargs"]

# method.md §5.4 / §5.5: key encoders NOT momentum-updated in phase 2 ("3lock"; CrosSCLR locks j, b).
OFFICIAL_LOCK = {6: ("joint", "bone", "rotation_axis"), 3: ("joint", "bone")}


@dataclass(frozen=True)
class Parity:
    """Official-code parity flags (method.md §11); see the module docstring for the table."""

    omega_uses_bone_queue: bool = False                # §11 #1
    lock_keys: Optional[Tuple[str, ...]] = None        # §11 #2
    ikem_term: bool = True                             # §11 #3
    independent_key_init: bool = True                  # §11 #4
    teacher_train_mode: bool = True                    # §11 #5
    context: bool = True                               # §11 #8
    shared_crossclr_heads: bool = False                # §11 #10

    def replace(self, **changes) -> "Parity":
        return dataclasses.replace(self, **changes)


PARITY_FLAGS = tuple(f.name for f in dataclasses.fields(Parity))


def resolve_lock(parity: Parity, modalities: Sequence[str]) -> Tuple[bool, ...]:
    """Per-modality 'lock' flags (True = key encoder frozen in phase 2) for the given modalities."""
    if parity.lock_keys is None:
        names = OFFICIAL_LOCK.get(len(modalities), ())
    else:
        names = tuple(parity.lock_keys)
    unknown = [n for n in names if n not in MODALITIES6]
    if unknown:
        raise ValueError(f"lock_keys has unknown modality name(s) {unknown}; expected names from {MODALITIES6}")
    absent = [n for n in names if n not in modalities]
    if absent:   # e.g. 'acceleration' on a 3-modality model: it would lock nothing, silently
        raise ValueError(f"lock_keys names modality(ies) {absent} that this model does not have; its modalities "
                         f"are {tuple(modalities)}")
    return tuple(m in names for m in modalities)


def split_parity_kwargs(kwargs: dict) -> Tuple[dict, dict]:
    """Split keyword arguments into (parity flags, the rest)."""
    par = {k: kwargs[k] for k in kwargs if k in PARITY_FLAGS}
    rest = {k: v for k, v in kwargs.items() if k not in PARITY_FLAGS}
    if "lock_keys" in par and par["lock_keys"] is not None:
        par["lock_keys"] = tuple(par["lock_keys"])
    return par, rest
