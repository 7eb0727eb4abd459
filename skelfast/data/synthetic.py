"""Synthetic NTU-format dataset: procedurally animated NTU-25 skeletons written as real `.skeleton` files.

Layer: data (NumPy only).

Each action class is a motion template (limb swings, waves, reaches, bends, squats, kicks, steps,
claps, jumps, twists, nods, two-person handshakes and pushes, ...); classes beyond the template
count combine two templates. Every sample is animated by forward kinematics on an NTU-25 body
(joint order of method.md §1.1) with per-performer body proportions, random amplitude, speed,
phase, start/end, static pose offsets and per-frame sensor noise, a length of 30-300 frames, one
or two persons, and seen from NTU-like cameras (1: frontal, 2: -45 deg, 3: +45 deg, plus jitter
and tilt). Files are named `SsssCcccPpppRrrrAaaa.skeleton` (setups 1-6, cameras 1-3, performers
1-40, action = class + 1) so that, given a few samples per class, every benchmark rule of method.md
§1.2 gives non-empty train and val parts (`prepare` warns about an empty one), and the ordinary
reader and `prepare` run on them unchanged.

API:
  generate(out_dir, num_classes=10, samples_per_class=30, seed=0, workers=0) -> list of paths
  ensure_prepared(root, num_classes=10, samples_per_class=30, seed=0, benchmark='xsub') -> prepared dir
  CLASS_NAMES: template names; class_names(num_classes) -> names of the generated classes

CLI: `python -m skelfast.data synth --out DIR [--num-classes 10 --samples-per-class 30 --seed 0]`,
then `python -m skelfast.data prepare --dataset synthetic --benchmark xsub --raw DIR --out OUT`.
The default preset (10 classes, noise 1.0) is learnable but not trivially: a ridge-regression linear
probe on the prepared raw joints reaches ~75-80% xsub val accuracy with 30 samples per class and
~85% with 100 (chance: 10%; tests/data/test_data_synthetic.py).
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np

__all__ = ["generate", "ensure_prepared", "CLASS_NAMES", "class_names", "animate", "sample_name",
           "REST_POSE", "FK_PARENT", "GENERATOR_VERSION"]

GENERATOR_VERSION = 3

# Rest pose in the body frame (metres): x = the person's right, y = up, z = backwards (the person
# faces -z, i.e. towards a camera at the origin looking along +z). Index = 0-based NTU joint.
REST_POSE = np.array([
    [0.00, 0.00, 0.00],    # 0 base of spine
    [0.00, 0.27, 0.01],    # 1 middle of spine
    [0.00, 0.55, 0.00],    # 2 neck
    [0.00, 0.68, -0.01],   # 3 head
    [-0.17, 0.46, 0.01],   # 4 left shoulder
    [-0.20, 0.19, 0.02],   # 5 left elbow
    [-0.21, -0.05, 0.01],  # 6 left wrist
    [-0.21, -0.12, 0.00],  # 7 left hand
    [0.17, 0.46, 0.01],    # 8 right shoulder
    [0.20, 0.19, 0.02],    # 9 right elbow
    [0.21, -0.05, 0.01],   # 10 right wrist
    [0.21, -0.12, 0.00],   # 11 right hand
    [-0.09, -0.02, 0.00],  # 12 left hip
    [-0.10, -0.45, 0.01],  # 13 left knee
    [-0.10, -0.84, 0.04],  # 14 left ankle
    [-0.10, -0.89, -0.07], # 15 left foot
    [0.09, -0.02, 0.00],   # 16 right hip
    [0.10, -0.45, 0.01],   # 17 right knee
    [0.10, -0.84, 0.04],   # 18 right ankle
    [0.10, -0.89, -0.07],  # 19 right foot
    [0.00, 0.47, 0.01],    # 20 spine at shoulders
    [-0.21, -0.18, -0.01], # 21 tip of left hand
    [-0.18, -0.10, -0.04], # 22 left thumb
    [0.21, -0.18, -0.01],  # 23 tip of right hand
    [0.18, -0.10, -0.04],  # 24 right thumb
])
# Kinematic tree for animation (root 0); listed parents precede children in FK_ORDER.
FK_PARENT = np.array([-1, 0, 20, 2, 20, 4, 5, 6, 20, 8, 9, 10, 0, 12, 13, 14, 0, 16, 17, 18, 1, 7, 7, 11, 11])
FK_ORDER = (0, 1, 20, 2, 3, 4, 5, 6, 7, 21, 22, 8, 9, 10, 11, 23, 24, 12, 13, 14, 15, 16, 17, 18, 19)
_OFFSETS = REST_POSE - REST_POSE[np.maximum(FK_PARENT, 0)]
_OFFSETS[0] = 0.0
_HIP_HEIGHT = 0.92   # base of spine above the floor at rest

# joint ids used by templates
SPINE_BASE, SPINE_MID, NECK, L_SH, L_EL, R_SH, R_EL, L_HIP, L_KNEE, R_HIP, R_KNEE = 0, 1, 2, 4, 5, 8, 9, 12, 13, 16, 17

Motion = Dict[int, np.ndarray]  # joint -> (T, 3) rotation vectors (local, body frame axes)

# per-sample posture variation (rad, per rotation axis) at noise = 1
_POSTURE_SD = {SPINE_BASE: 0.07, SPINE_MID: 0.1, NECK: 0.15, L_SH: 0.3, R_SH: 0.3, L_EL: 0.35, R_EL: 0.35,
               L_HIP: 0.12, R_HIP: 0.12, L_KNEE: 0.2, R_KNEE: 0.2}


def _rotmat(rv: np.ndarray) -> np.ndarray:
    """Rodrigues: rotation vectors (..., 3) -> matrices (..., 3, 3)."""
    th = np.linalg.norm(rv, axis=-1, keepdims=True)
    k = rv / np.maximum(th, 1e-12)
    kx, ky, kz = k[..., 0], k[..., 1], k[..., 2]
    z = np.zeros_like(kx)
    K = np.stack([z, -kz, ky, kz, z, -kx, -ky, kx, z], axis=-1).reshape(rv.shape[:-1] + (3, 3))
    s = np.sin(th)[..., None]
    c = np.cos(th)[..., None]
    return np.eye(3) + s * K + (1 - c) * (K @ K)


def _rot_y(a: float) -> np.ndarray:
    c, s = np.cos(a), np.sin(a)
    return np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])


def _rot_x(a: float) -> np.ndarray:
    c, s = np.cos(a), np.sin(a)
    return np.array([[1, 0, 0], [0, c, -s], [0, s, c]])


def animate(motion: Motion, root: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """Forward kinematics. motion: joint -> (T,3) local rotation vectors; root: (T,3) root position;
    scale: (25,) per-bone length factors. Returns joint positions (T, 25, 3) in the body frame."""
    T = root.shape[0]
    glob_R = np.empty((25, T, 3, 3))
    pos = np.empty((T, 25, 3))
    eye = np.broadcast_to(np.eye(3), (T, 3, 3))
    for j in FK_ORDER:
        local = _rotmat(motion[j]) if j in motion else eye
        p = FK_PARENT[j]
        if p < 0:
            glob_R[j] = local
            pos[:, j] = root
        else:
            pos[:, j] = pos[:, p] + np.einsum("tij,j->ti", glob_R[p], _OFFSETS[j] * scale[j])
            glob_R[j] = glob_R[p] @ local
    return pos


# ---- motion templates: f(tau, p) -> (motion, root offset); tau (T,) in [0,1] is the action clock ----

def _rv(T: int, x=0.0, y=0.0, z=0.0) -> np.ndarray:
    out = np.zeros((T, 3))
    out[:, 0], out[:, 1], out[:, 2] = x, y, z
    return out


def _bell(tau):      # 0 -> 1 -> 0 over the action
    return np.sin(np.pi * np.clip(tau, 0, 1)) ** 2


def _plateau(tau):   # ramp up, hold, ramp down
    return np.clip(np.minimum(tau, 1 - tau) * 5.0, 0, 1)


def _osc(tau, p):
    return np.sin(2 * np.pi * p["cycles"] * tau + p["phase"])


def _wave(side):
    def f(tau, p):
        T, a, pl = len(tau), p["amp"], _plateau(tau)
        sh, el = (R_SH, R_EL) if side > 0 else (L_SH, L_EL)
        return {sh: _rv(T, x=0.3 * pl, z=side * 2.4 * a * pl),
                el: _rv(T, z=side * (0.5 + 0.45 * _osc(tau, p)) * pl)}, 0.0
    return f


def _raise_both(tau, p):
    T, b = len(tau), _bell(tau) * p["amp"]
    return {L_SH: _rv(T, x=2.6 * b), R_SH: _rv(T, x=2.6 * b)}, 0.0


def _reach(side):
    def f(tau, p):
        T, b = len(tau), _bell(tau) * p["amp"]
        sh, el = (R_SH, R_EL) if side > 0 else (L_SH, L_EL)
        return {sh: _rv(T, x=1.5 * b, y=-side * 0.3 * b), el: _rv(T, x=0.4 * (1 - b))}, 0.0
    return f


def _bend(tau, p):
    T, b = len(tau), _bell(tau) * p["amp"]
    return {SPINE_BASE: _rv(T, x=-0.7 * b), SPINE_MID: _rv(T, x=-0.5 * b),
            L_SH: _rv(T, x=0.6 * b), R_SH: _rv(T, x=0.6 * b)}, 0.0


def _squat(tau, p):
    T, b = len(tau), _bell(tau) * p["amp"]
    m = {L_HIP: _rv(T, x=1.3 * b), R_HIP: _rv(T, x=1.3 * b), L_KNEE: _rv(T, x=-1.9 * b),
         R_KNEE: _rv(T, x=-1.9 * b), SPINE_BASE: _rv(T, x=-0.35 * b), L_SH: _rv(T, x=1.2 * b),
         R_SH: _rv(T, x=1.2 * b)}
    return m, -0.38 * b


def _kick(side):
    def f(tau, p):
        T = len(tau)
        k = np.maximum(_osc(tau, p), 0) ** 2 * p["amp"]
        hip, knee = (R_HIP, R_KNEE) if side > 0 else (L_HIP, L_KNEE)
        return {hip: _rv(T, x=1.3 * k), knee: _rv(T, x=-0.5 * k)}, 0.0
    return f


def _clap(tau, p):
    T, pl = len(tau), _plateau(tau)
    o = (0.5 + 0.5 * _osc(tau, p)) * pl * p["amp"]
    return {L_SH: _rv(T, x=1.3 * pl, y=-0.7 * o), R_SH: _rv(T, x=1.3 * pl, y=0.7 * o),
            L_EL: _rv(T, x=0.5 * pl), R_EL: _rv(T, x=0.5 * pl)}, 0.0


def _jump(tau, p):
    T = len(tau)
    h = np.abs(np.sin(np.pi * p["cycles"] * tau + p["phase"])) * _plateau(tau) * p["amp"]
    crouch = (1 - h / max(p["amp"], 1e-6)) * _plateau(tau)
    return {L_KNEE: _rv(T, x=-0.6 * crouch), R_KNEE: _rv(T, x=-0.6 * crouch), L_HIP: _rv(T, x=0.3 * crouch),
            R_HIP: _rv(T, x=0.3 * crouch), L_SH: _rv(T, z=-0.8 * h), R_SH: _rv(T, z=0.8 * h)}, 0.25 * h


def _side_bend(tau, p):
    T, o = len(tau), _osc(tau, p) * _plateau(tau) * p["amp"]
    return {SPINE_MID: _rv(T, z=0.45 * o), SPINE_BASE: _rv(T, z=0.2 * o)}, 0.0


def _twist(tau, p):
    T, o = len(tau), _osc(tau, p) * _plateau(tau) * p["amp"]
    return {SPINE_MID: _rv(T, y=0.8 * o), L_SH: _rv(T, z=-0.5 * _plateau(tau)), R_SH: _rv(T, z=0.5 * _plateau(tau))}, 0.0


def _nod(tau, p):
    T, o = len(tau), (0.5 + 0.5 * _osc(tau, p)) * _plateau(tau) * p["amp"]
    return {NECK: _rv(T, x=-0.7 * o), 3: _rv(T, x=-0.3 * o)}, 0.0


def _step(tau, p):
    T, o = len(tau), _osc(tau, p) * _plateau(tau) * p["amp"]
    lift_l, lift_r = np.maximum(o, 0), np.maximum(-o, 0)
    return {L_HIP: _rv(T, x=0.9 * lift_l), L_KNEE: _rv(T, x=-1.3 * lift_l), R_HIP: _rv(T, x=0.9 * lift_r),
            R_KNEE: _rv(T, x=-1.3 * lift_r), L_SH: _rv(T, x=-0.4 * o), R_SH: _rv(T, x=0.4 * o)}, 0.0


def _punch(tau, p):
    T = len(tau)
    k = np.maximum(_osc(tau, p), 0) ** 3 * p["amp"]
    guard = _plateau(tau)
    return {R_SH: _rv(T, x=0.8 * guard + 0.7 * k), R_EL: _rv(T, x=1.8 * guard * (1 - k)),
            L_SH: _rv(T, x=0.8 * guard), L_EL: _rv(T, x=1.8 * guard)}, 0.0


def _arm_circle(tau, p):
    T, pl, a = len(tau), _plateau(tau), p["amp"]
    ang = 2 * np.pi * p["cycles"] * tau + p["phase"]
    return {L_SH: _rv(T, x=(1.2 + 0.9 * np.sin(ang)) * pl * a, z=-(0.6 + 0.5 * np.cos(ang)) * pl * a)}, 0.0


def _handshake(tau, p):
    T, pl = len(tau), _plateau(tau)
    shake = 0.15 * _osc(tau, p) * pl
    return {R_SH: _rv(T, x=(1.0 + shake) * pl * p["amp"], y=0.3 * pl), R_EL: _rv(T, x=0.4 * pl)}, 0.0


def _push(tau, p):
    T, b = len(tau), _bell(tau) * p["amp"]
    return {L_SH: _rv(T, x=1.45 * b), R_SH: _rv(T, x=1.45 * b), L_EL: _rv(T, x=0.9 * (1 - b)),
            R_EL: _rv(T, x=0.9 * (1 - b)), SPINE_MID: _rv(T, x=-0.2 * b)}, 0.0


# (name, template, two persons?) — the first ten are the default preset and include one interaction.
_TEMPLATES: List[Tuple[str, Callable, bool]] = [
    ("wave right hand", _wave(+1), False),
    ("raise both arms", _raise_both, False),
    ("bend forward", _bend, False),
    ("squat", _squat, False),
    ("kick right leg", _kick(+1), False),
    ("clap", _clap, False),
    ("reach with right arm", _reach(+1), False),
    ("step in place", _step, False),
    ("handshake", _handshake, True),
    ("jump", _jump, False),
    ("wave left hand", _wave(-1), False),
    ("side bend", _side_bend, False),
    ("twist torso", _twist, False),
    ("nod", _nod, False),
    ("punch", _punch, False),
    ("left arm circles", _arm_circle, False),
    ("reach with left arm", _reach(-1), False),
    ("kick left leg", _kick(-1), False),
    ("push other person", _push, True),
]
CLASS_NAMES = tuple(t[0] for t in _TEMPLATES)


def _class_templates(c: int) -> List[int]:
    n = len(_TEMPLATES)
    if c < n:
        return [c]
    a, b = c % n, (c // n + c) % n        # combinations for large class counts
    return [a, b if b != a else (a + 1) % n]


def class_names(num_classes: int) -> List[str]:
    return [" + ".join(CLASS_NAMES[t] for t in _class_templates(c)) for c in range(num_classes)]


def sample_name(setup: int, camera: int, performer: int, replication: int, action: int) -> str:
    return f"S{setup:03d}C{camera:03d}P{performer:03d}R{replication:03d}A{action:03d}.skeleton"


# ---- one sample ----

_CAM_YAW = {1: 0.0, 2: -np.pi / 4, 3: np.pi / 4}   # NTU: cameras at 0, -45 and +45 degrees
NUM_SETUPS, NUM_PERFORMERS = 6, 40


def _performer_scale(performer: int) -> np.ndarray:
    r = np.random.default_rng(10_000 + performer)
    height = r.uniform(0.86, 1.14)
    s = height * (1 + r.normal(0, 0.05, 25))   # per-bone proportions
    return s


def _person(cls: int, T: int, rng: np.random.Generator, performer: int, noise: float, role: int) -> np.ndarray:
    """Joint positions (T, 25, 3) in the person's body frame (base of spine at the origin at rest).

    cls < 0 gives an idle person (posture and sway only); role 1 is the second person of an interaction.
    """
    tau_raw = np.linspace(0, 1, T)
    t0, t1 = rng.uniform(0.0, 0.2), rng.uniform(0.8, 1.0)
    tau = np.clip((tau_raw - t0) / (t1 - t0), 0, 1)
    motion: Motion = {}
    root_y = np.zeros(T)
    for t in (_class_templates(cls) if cls >= 0 else []):
        params = {"amp": rng.uniform(0.5, 1.25), "cycles": rng.uniform(1.0, 3.0), "phase": rng.uniform(0, 2 * np.pi)}
        if role == 1 and _TEMPLATES[t][1] is _push:   # the pushed person leans back instead
            m, dy = {SPINE_MID: _rv(T, x=0.35 * _bell(tau))}, 0.0
        else:
            m, dy = _TEMPLATES[t][1](tau, params)
        for j, rv in m.items():
            motion[j] = motion.get(j, 0) + rv
        root_y = root_y + dy
    # static posture offsets (small for the trunk, larger for the limbs; knees and elbows only flex
    # their natural way) + slow idle sway
    sway = np.sin(2 * np.pi * rng.uniform(0.2, 0.6) * tau_raw + rng.uniform(0, 6.3))
    for j, sd in _POSTURE_SD.items():
        static = rng.normal(0, sd * noise, 3)
        if j in (L_KNEE, R_KNEE, L_EL, R_EL):
            static = np.array([(-1 if j in (L_KNEE, R_KNEE) else 1) * abs(static[0]), 0.0, 0.0])
        motion[j] = motion.get(j, 0) + static + np.outer(sway, rng.normal(0, 0.3 * sd * noise, 3))
    # an unrelated arm gesture in 60% of the samples: makes classes overlap like real data
    if rng.random() < 0.6:
        sh = L_SH if rng.random() < 0.5 else R_SH
        g = _osc(tau_raw, {"cycles": rng.uniform(0.5, 2.0), "phase": rng.uniform(0, 2 * np.pi)})
        motion[sh] = motion.get(sh, 0) + np.outer(g, rng.normal(0, 0.7 * noise, 3))
    root = np.stack([np.zeros(T), root_y, np.zeros(T)], axis=1)
    return animate(motion, root, _performer_scale(performer))


def _sample(cls: int, setup: int, camera: int, performer: int, rng: np.random.Generator, noise: float,
            bystander_prob: float = 0.1):
    """Returns (xyz (F, M, 25, 3) camera space, present (F, M) bool)."""
    F = int(rng.integers(30, 301))
    two = _TEMPLATES[_class_templates(cls)[0]][2]
    bodies = [_person(cls, F, rng, performer, noise, 0)]
    yaws, offsets = [0.0], [np.zeros(3)]
    if two:
        other = 1 + (performer + 7) % NUM_PERFORMERS
        bodies.append(_person(cls, F, rng, other, noise, 1))
        gap = rng.uniform(0.45, 0.6)
        yaws = [-np.pi / 2 + rng.normal(0, 0.2), np.pi / 2 + rng.normal(0, 0.2)]
        offsets = [np.array([-gap, 0, 0]), np.array([gap, 0, 0])]
    elif rng.random() < bystander_prob:   # an idle second person in the background
        bodies.append(_person(-1, F, rng, 1 + (performer + 3) % NUM_PERFORMERS, noise, 1))
        yaws.append(rng.normal(0, 0.5))
        offsets.append(np.array([rng.choice([-1.2, 1.2]), 0, rng.uniform(0.5, 1.0)]))
    scene_yaw = _CAM_YAW[camera] + rng.normal(0, 0.2) + 0.1 * (setup - 3)
    tilt = rng.uniform(-0.15, 0.15)
    cam = _rot_x(tilt) @ _rot_y(scene_yaw)
    where = np.array([rng.uniform(-0.4, 0.4), rng.uniform(-0.1, 0.3), rng.uniform(2.6, 3.6)])
    xyz = np.stack([(b @ _rot_y(y).T + o) @ cam.T + where for b, y, o in zip(bodies, yaws, offsets)], axis=1)
    xyz = xyz + rng.normal(0, 0.015 * noise, xyz.shape)                     # per-frame sensor noise
    present = np.ones(xyz.shape[:2], dtype=bool)
    if rng.random() < 0.05:   # tracking lost at the end: trailing frames with no body (method.md §1.3 step 2)
        present[F - int(rng.integers(1, 6)):] = False
    return xyz, present


_JOINT_FMT = "%.7g %.7g %.7g %.7g %.7g %.7g %.7g %.7g %.7g %.7g %.7g %d\n"


def _format_file(xyz: np.ndarray, present: np.ndarray, rng: np.random.Generator) -> str:
    F, M = present.shape
    # projections to the 512x424 depth and 1920x1080 colour images (pinhole, Kinect-like)
    z = np.maximum(xyz[..., 2], 0.1)
    depth = np.stack([256 - 365 * xyz[..., 0] / z, 212 - 365 * xyz[..., 1] / z], -1)
    color = np.stack([960 - 1081 * xyz[..., 0] / z, 540 - 1081 * xyz[..., 1] / z], -1)
    orient = np.zeros(xyz.shape[:-1] + (4,))
    orient[..., 0] = 1.0
    state = np.where(rng.random(xyz.shape[:-1]) < 0.03, 1, 2)
    rows = np.concatenate([xyz, depth, color, orient, state[..., None]], axis=-1)   # (F, M, 25, 12)
    body_ids = 72057594037927936 + rng.integers(1000, 9999, size=M)
    joint_block = _JOINT_FMT * 25
    out = [f"{F}\n"]
    for t in range(F):
        ms = np.flatnonzero(present[t])
        out.append(f"{len(ms)}\n")
        for m in ms:
            hl, hr = rng.integers(0, 3, size=2)
            out.append(f"{body_ids[m]} 0 1 {hl} 1 {hr} 0 {rng.normal(0, 0.05):.6g} {rng.normal(0, 0.05):.6g} 2\n25\n")
            out.append(joint_block % tuple(rows[t, m].ravel()))
    return "".join(out)


def _write_one(job) -> str:
    path, cls, setup, camera, performer, seed, noise = job
    rng = np.random.default_rng(seed)
    xyz, present = _sample(cls, setup, camera, performer, rng, noise)
    tmp = path + ".tmp"
    with open(tmp, "w") as fh:
        fh.write(_format_file(xyz, present, rng))
    os.replace(tmp, path)
    return path


def _jobs(out_dir: str, num_classes: int, samples_per_class: int, seed: int, noise: float):
    ss = np.random.SeedSequence(seed)
    rng = np.random.default_rng(ss.spawn(1)[0])
    jobs, used = [], set()
    for c in range(num_classes):
        for k in range(samples_per_class):
            # cycle cameras and spread performers/setups so every benchmark split is populated
            camera = 1 + (k % 3)
            performer = 1 + int(rng.integers(0, NUM_PERFORMERS))
            setup = 1 + (k // 3 + c) % NUM_SETUPS
            rep = 1
            while (setup, camera, performer, rep, c) in used:
                rep += 1
            used.add((setup, camera, performer, rep, c))
            name = sample_name(setup, camera, performer, rep, c + 1)
            sample_seed = int(np.random.SeedSequence([seed, c, k]).generate_state(1)[0])
            jobs.append((os.path.join(out_dir, name), c, setup, camera, performer, sample_seed, noise))
    return jobs


def generate(out_dir: str, num_classes: int = 10, samples_per_class: int = 30, seed: int = 0,
             noise: float = 1.0, workers: int = 0, progress: bool = False) -> List[str]:
    """Write `num_classes * samples_per_class` synthetic `.skeleton` files into `out_dir`.

    Deterministic for a given (num_classes, samples_per_class, seed, noise); `noise` scales the
    pose variation and sensor noise (1.0 = the default preset). Also writes `synthetic.json`
    (settings and class names). Returns the file paths in sorted order.
    """
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2, got {num_classes}")
    if num_classes > 999:
        raise ValueError(f"num_classes must be <= 999 (3-digit action field), got {num_classes}")
    if samples_per_class < 1:
        raise ValueError(f"samples_per_class must be >= 1, got {samples_per_class}")
    if workers < 0:  # parallel_map read it as 0
        raise ValueError(f"--workers must be >= 0 (0: no worker processes), got {workers}")
    if seed < 0:     # NumPy's seeding refuses it, with a message that names nothing
        raise ValueError(f"seed must be >= 0, got {seed}")
    if not (math.isfinite(noise) and noise >= 0):    # nan / inf wrote unreadable 'nan' coordinates
        raise ValueError(f"noise must be a finite number >= 0, got {noise}")
    os.makedirs(out_dir, exist_ok=True)
    from .skeleton_reader import parallel_map

    jobs = _jobs(os.fspath(out_dir), num_classes, samples_per_class, seed, noise)
    # stale files of another configuration would silently join the dataset at `prepare` time
    ours = {os.path.basename(j[0]) for j in jobs}
    # any case of the extension, as prepare reads them
    others = [f for f in os.listdir(out_dir) if f.lower().endswith(".skeleton") and f not in ours]
    if others:
        raise ValueError(f"--out {out_dir!r} already contains {len(others)} other .skeleton file(s) "
                         f"(e.g. {others[0]}); use an empty folder")
    paths = list(parallel_map(_write_one, jobs, workers=workers, progress=progress, desc="synthesise"))
    meta = {"generator_version": GENERATOR_VERSION, "num_classes": num_classes,
            "samples_per_class": samples_per_class, "seed": seed, "noise": noise,
            "class_names": class_names(num_classes), "num_files": len(paths)}
    with open(os.path.join(out_dir, "synthetic.json"), "w") as fh:
        json.dump(meta, fh, indent=1)
    return sorted(paths)


def ensure_prepared(root: str, num_classes: int = 10, samples_per_class: int = 30, seed: int = 0,
                    benchmark: str = "xsub", noise: float = 1.0, workers: int = 0, progress: bool = False,
                    log: Optional[Callable] = None) -> str:
    """Generate (if needed) and prepare (if needed) a synthetic dataset under `root`; idempotent.

    Layout: `root/synthetic_v{version}_c{C}_n{N}_s{seed}[_noise{noise}]/raw/*.skeleton` and `.../{benchmark}/`
    (a prepared folder, see skelfast.data.preparation). Returns the prepared folder's path.
    Safe to call from several processes at once (an advisory lock serialises the work).
    """
    from .ntu import check_dataset_benchmark, normalise_benchmark
    from .preparation import load_manifest

    check_dataset_benchmark("synthetic", benchmark)
    benchmark = normalise_benchmark(benchmark)

    # the generator version is part of the folder name, so a changed generator never reuses a stale cache
    tag = (f"synthetic_v{GENERATOR_VERSION}_c{num_classes}_n{samples_per_class}_s{seed}"
           + ("" if noise == 1.0 else f"_noise{noise:g}"))
    base = os.path.join(os.fspath(root), tag)
    raw, out = os.path.join(base, "raw"), os.path.join(base, benchmark)
    if load_manifest(out) is not None:
        return out
    os.makedirs(base, exist_ok=True)
    with _exclusive(os.path.join(base, ".lock")):   # e.g. several DDP ranks calling at once
        if load_manifest(out) is not None:
            return out
        _generate_and_prepare(raw, out, num_classes, samples_per_class, seed, benchmark, noise, workers, progress, log)
    return out


@contextlib.contextmanager
def _exclusive(path: str):
    """An advisory inter-process lock (released by the OS if the holder dies); no-op without fcntl."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    with open(path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _generate_and_prepare(raw, out, num_classes, samples_per_class, seed, benchmark, noise, workers, progress, log):
    from .preparation import prepare

    meta_path = os.path.join(raw, "synthetic.json")
    ok = False
    if os.path.exists(meta_path):   # synthetic.json is written last, so it marks a complete raw folder
        with open(meta_path) as fh:
            meta = json.load(fh)
        ok = meta.get("generator_version") == GENERATOR_VERSION and meta.get("num_files") == num_classes * samples_per_class
    if not ok:
        if os.path.isdir(raw):
            shutil.rmtree(raw)
        if log:
            log(f"generating the synthetic dataset ({num_classes} classes x {samples_per_class} samples) in {raw}")
        generate(raw, num_classes, samples_per_class, seed, noise, workers=workers, progress=progress)
    prepare(raw, out, dataset="synthetic", benchmark=benchmark, workers=workers, progress=progress,
            log=log or (lambda *a, **k: None))
