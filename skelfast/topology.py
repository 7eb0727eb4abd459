"""Skeleton topologies as index tables (method.md §3.2, §4.1).

A topology is data, never code: kernels receive these tables as arguments, so one kernel serves
NTU-25 (IKEM's 6-modality lists, CrosSCLR's 3-modality lists) and COCO-17 alike.

Tables (0-based joint indices, length V each):
  bone_parent[v]   partner of joint v for the bone  B[v] = x[v] - x[bone_parent[v]]
  axis_partner[v]  partner of joint v for the rotation axis R[v] = B[v] x B[axis_partner[v]]
  normal           None, or (joint, a, b, c): B[joint] is replaced by nrm((x[a]-x[b]) x (x[c]-x[b]))
  edges            undirected graph edges for the ST-GCN adjacency (self-loops are added there)
  center           the graph centre joint of the 'spatial' partition
"""
from __future__ import annotations

import operator
from dataclasses import dataclass, field
from typing import Optional, Sequence, Tuple, Union

__all__ = ["Topology", "NTU25_IKEM", "NTU25_CROSSCLR", "COCO17", "get_topology", "TOPOLOGIES"]


def _one_based_pairs_to_parent(pairs: Sequence[Tuple[int, int]], num_joints: int) -> Tuple[int, ...]:
    parent = [-1] * num_joints
    for child, partner in pairs:
        parent[child - 1] = partner - 1
    if -1 in parent:
        raise ValueError(f"pair list does not cover joint {parent.index(-1) + 1}")
    return tuple(parent)


def _joint_indices(topology: str, table_name: str, values) -> Tuple[int, ...]:
    """values as a tuple of ints; a float or other non-integer entry is an error (int() would
    truncate 0.5 to joint 0 without a word)."""
    out = []
    for j in values:
        try:
            out.append(operator.index(j))
        except TypeError:
            raise ValueError(f"topology {topology!r}: {table_name} must hold integer joint indices, "
                             f"got {j!r}") from None
    return tuple(out)


@dataclass(frozen=True)
class Topology:
    name: str
    num_joints: int
    bone_parent: Tuple[int, ...]
    axis_partner: Tuple[int, ...]
    edges: Tuple[Tuple[int, int], ...]
    center: int
    normal: Optional[Tuple[int, int, int, int]] = None
    description: str = field(default="", compare=False)

    def __post_init__(self):
        if isinstance(self.num_joints, bool) or not isinstance(self.num_joints, int) or self.num_joints < 1:
            raise ValueError(f"topology {self.name!r}: num_joints must be an integer >= 1, got {self.num_joints!r}")
        V = self.num_joints
        # integers only, as for the tables: an edge (0.5, 1) was truncated to (0, 1) without a word
        edges = []
        for e in self.edges:
            pair = _joint_indices(self.name, "edges", e)
            if len(pair) != 2:
                raise ValueError(f"topology {self.name!r}: an edge is a pair of joints, got {e!r}")
            edges.append(pair)
        object.__setattr__(self, "edges", tuple(edges))
        object.__setattr__(self, "center", _joint_indices(self.name, "center", (self.center,))[0])
        for table_name in ("bone_parent", "axis_partner"):
            table = _joint_indices(self.name, table_name, getattr(self, table_name))
            object.__setattr__(self, table_name, table)   # frozen: normalised once, to a tuple of ints
            if len(table) != V:
                raise ValueError(f"topology {self.name!r}: {table_name} has {len(table)} entries, expected {V}")
            bad = [j for j in table if not 0 <= j < V]
            if bad:
                raise ValueError(f"topology {self.name!r}: {table_name} has out-of-range joint(s) {bad}")
        if self.normal is not None:
            object.__setattr__(self, "normal", _joint_indices(self.name, "normal", self.normal))
            if len(self.normal) != 4 or not all(0 <= j < V for j in self.normal):
                raise ValueError(f"topology {self.name!r}: normal must be 4 joint indices < {V}, got {self.normal}")
        for a, b in self.edges:
            if not (0 <= a < V and 0 <= b < V):
                raise ValueError(f"topology {self.name!r}: edge ({a}, {b}) out of range")
        if not 0 <= self.center < V:
            raise ValueError(f"topology {self.name!r}: center {self.center} out of range")

    @classmethod
    def from_tables(cls, bone_parent, axis_partner, normal=()) -> "Topology":
        """A graph-less topology from the modality tables (as the ops receive them)."""
        normal = _joint_indices("custom", "normal", normal)
        return cls(name="custom", num_joints=len(bone_parent), edges=(), center=0, normal=normal if normal else None,
                   bone_parent=_joint_indices("custom", "bone_parent", bone_parent),
                   axis_partner=_joint_indices("custom", "axis_partner", axis_partner))

    @property
    def normal_list(self) -> list:
        """The normal as a flat int list for op schemas: [] or [joint, a, b, c]."""
        return [] if self.normal is None else list(self.normal)


# method.md §3.2: IKEM's `Bone` list (hand tips 22, 24 hang from the hands 8, 12).
_NTU_BONE_PAIRS = (
    (1, 2), (2, 21), (3, 21), (4, 3), (5, 21), (6, 5), (7, 6), (8, 7), (9, 21), (10, 9), (11, 10),
    (12, 11), (13, 1), (14, 13), (15, 14), (16, 15), (17, 1), (18, 17), (19, 18), (20, 19), (21, 21),
    (22, 8), (23, 8), (24, 12), (25, 12),
)
# method.md §3.2: `Axis` differs from `Bone` only at (23,22) and (25,24).
_NTU_AXIS_PAIRS = tuple({23: (23, 22), 25: (25, 24)}.get(c, (c, p)) for c, p in _NTU_BONE_PAIRS)
# method.md §4.1: the graph edges; the CrosSCLR bone list P3 (§3.4) uses the same hand links.
_NTU_EDGES_1B = (
    (1, 2), (2, 21), (3, 21), (4, 3), (5, 21), (6, 5), (7, 6), (8, 7), (9, 21), (10, 9), (11, 10),
    (12, 11), (13, 1), (14, 13), (15, 14), (16, 15), (17, 1), (18, 17), (19, 18), (20, 19), (22, 23),
    (23, 8), (24, 25), (25, 12),
)
_NTU_EDGES = tuple((a - 1, b - 1) for a, b in _NTU_EDGES_1B)
_NTU_P3 = _one_based_pairs_to_parent(_NTU_EDGES_1B + ((21, 21),), 25)

NTU25_IKEM = Topology(
    name="ntu25",
    num_joints=25,
    bone_parent=_one_based_pairs_to_parent(_NTU_BONE_PAIRS, 25),
    axis_partner=_one_based_pairs_to_parent(_NTU_AXIS_PAIRS, 25),
    edges=_NTU_EDGES,
    center=20,
    # method.md §3.3: B[20] = nrm((x[1] - x[8]) x (x[4] - x[8])), spine-middle, right and left shoulder.
    normal=(20, 1, 8, 4),
    description="NTU RGB+D 25 joints, IKEM 6-modality lists P and A with the joint-21 torso normal",
)

NTU25_CROSSCLR = Topology(
    name="ntu25_crossclr",
    num_joints=25,
    bone_parent=_NTU_P3,
    axis_partner=_NTU_P3,  # unused by the 3-modality model (§3.4); kept valid for completeness
    edges=_NTU_EDGES,
    center=20,
    normal=None,  # §3.4: B[20] = 0
    description="NTU RGB+D 25 joints, CrosSCLR 3-modality bone list P3, no normal",
)

# COCO-17 (nose, eyes, ears, shoulders, elbows, wrists, hips, knees, ankles), rooted at the nose.
_COCO_PARENT = (0, 0, 0, 1, 2, 0, 0, 5, 6, 7, 8, 5, 6, 11, 12, 13, 14)
COCO17 = Topology(
    name="coco17",
    num_joints=17,
    bone_parent=_COCO_PARENT,
    axis_partner=_COCO_PARENT,
    edges=tuple((c, p) for c, p in enumerate(_COCO_PARENT) if c != p),
    center=0,
    normal=None,
    description="COCO 17 keypoints rooted at the nose",
)

TOPOLOGIES = {t.name: t for t in (NTU25_IKEM, NTU25_CROSSCLR, COCO17)}


def get_topology(topology: Union[str, Topology]) -> Topology:
    """Resolve a topology name ('ntu25', 'ntu25_crossclr', 'coco17') or pass a Topology through."""
    if isinstance(topology, Topology):
        return topology
    try:
        return TOPOLOGIES[topology]
    except (KeyError, TypeError):
        raise ValueError(f"unknown topology {topology!r}; known: {sorted(TOPOLOGIES)} or a skelfast.topology.Topology") from None
