"""Helpers for tests/data: hand-written `.skeleton` text (method.md §1.1)."""
import numpy as np


def joint_line(x, y, z, extra=(200.5, 180.25, 900.0, 500.0, 1.0, 0.0, 0.0, 0.0, 2)):
    return " ".join(str(v) for v in (x, y, z) + tuple(extra))


def skeleton_text(frames, num_joint=25):
    """frames: list (per frame) of list (per body, file order) of (num_joint, 3) arrays.
    Returns the text of a `.skeleton` file with bodyIDs 100, 101, ... in file order."""
    lines = [str(len(frames))]
    for bodies in frames:
        lines.append(str(len(bodies)))
        for b, xyz in enumerate(bodies):
            lines.append(f"{100 + b} 0 1 1 1 1 0 0.01 -0.02 2")
            lines.append(str(num_joint))
            for j in range(num_joint):
                lines.append(joint_line(*[float(v) for v in xyz[j]]))
    return "\n".join(lines) + "\n"


def body(seed, num_joint=25):
    """A distinguishable (num_joint, 3) body with exactly representable coordinates."""
    r = np.random.default_rng(seed)
    return np.round(r.uniform(-1, 1, (num_joint, 3)), 4) + np.array([0.0, 0.0, 3.0])
