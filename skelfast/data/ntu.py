"""NTU RGB+D sample names, benchmark split rules and missing-skeleton lists (method.md §1.2).

Layer: data (pure Python).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources
from typing import FrozenSet, List, NamedTuple, Optional

__all__ = ["SampleName", "parse_sample_name", "DATASETS", "BENCHMARKS", "check_dataset_benchmark",
           "is_training", "load_ignore_list", "label_of", "in_dataset", "TRAIN_SUBJECTS_60",
           "TRAIN_SUBJECTS_120", "DatasetSpec", "normalise_benchmark"]

# method.md §1.2: NTU-60 cross-subject training performers (20 IDs).
TRAIN_SUBJECTS_60: FrozenSet[int] = frozenset(
    (1, 2, 4, 5, 8, 9, 13, 14, 15, 16, 17, 18, 19, 25, 27, 28, 31, 34, 35, 38))
# method.md §1.2: NTU-120 cross-subject training performers (the 20 above plus 33 more; 53 IDs).
TRAIN_SUBJECTS_120: FrozenSet[int] = TRAIN_SUBJECTS_60 | frozenset(
    (45, 46, 47, 49, 50, 52, 53, 54, 55, 56, 57, 58, 59, 70, 74, 78, 80, 81, 82, 83, 84, 85, 86, 89,
     91, 92, 93, 94, 95, 97, 98, 100, 103))
assert len(TRAIN_SUBJECTS_60) == 20 and len(TRAIN_SUBJECTS_120) == 53

BENCHMARKS = ("xsub", "xview", "xset")
_BENCHMARK_ALIASES = {"xsetup": "xset"}  # the official code's name for xset


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    num_classes: Optional[int]           # None: inferred from the files (synthetic)
    max_setup: Optional[int]             # samples with a larger setup ID are not part of the dataset
    benchmarks: tuple
    train_subjects: FrozenSet[int]
    ignore_list: Optional[str]           # resource file name of the missing-skeleton list


DATASETS = {
    # NTU-60 = setups 1-17, actions 1-60; its published benchmarks are xsub and xview.
    "ntu60": DatasetSpec("ntu60", 60, 17, ("xsub", "xview"), TRAIN_SUBJECTS_60,
                         "ntu60_samples_with_missing_skeletons.txt"),
    # NTU-120: published benchmarks xsub (53 IDs) and xset (even setups).
    "ntu120": DatasetSpec("ntu120", 120, 32, ("xsub", "xset"), TRAIN_SUBJECTS_120,
                          "ntu120_samples_with_missing_skeletons.txt"),
    # skelfast.data.synthetic: NTU-60 subject list, every benchmark rule, no ignore list.
    "synthetic": DatasetSpec("synthetic", None, None, BENCHMARKS, TRAIN_SUBJECTS_60, None),
}


class SampleName(NamedTuple):
    setup: int
    camera: int
    performer: int
    replication: int
    action: int


_FIELD_RE = {k: re.compile(k + r"(\d{3})") for k in "SCPRA"}


def parse_sample_name(name: str) -> SampleName:
    """Parse `SsssCcccPpppRrrrAaaa[.skeleton]` (method.md §1.2: the 3-digit integer after the first
    occurrence of each capital letter). Raises ValueError naming the file if a field is missing."""
    base = name.rsplit("/", 1)[-1]
    vals = {}
    for k, rx in _FIELD_RE.items():
        m = rx.search(base)
        if m is None:
            raise ValueError(f"{name!r} is not an NTU sample name (expected SsssCcccPpppRrrrAaaa.skeleton; "
                             f"no 3-digit '{k}' field)")
        vals[k] = int(m.group(1))
    return SampleName(vals["S"], vals["C"], vals["P"], vals["R"], vals["A"])


def check_dataset_benchmark(dataset: str, benchmark: str) -> DatasetSpec:
    """Validate `--dataset` and `--benchmark`; returns the dataset spec, or raises ValueError naming the option."""
    if dataset not in DATASETS:
        raise ValueError(f"unknown --dataset {dataset!r}; choose from {', '.join(DATASETS)}")
    spec = DATASETS[dataset]
    bench = _BENCHMARK_ALIASES.get(benchmark, benchmark)
    if bench not in BENCHMARKS:
        raise ValueError(f"unknown --benchmark {benchmark!r}; choose from {', '.join(BENCHMARKS)}")
    if bench not in spec.benchmarks:
        raise ValueError(f"--benchmark {benchmark!r} is not defined for --dataset {dataset}; "
                         f"choose from {', '.join(spec.benchmarks)}")
    return spec


def normalise_benchmark(benchmark: str) -> str:
    return _BENCHMARK_ALIASES.get(benchmark, benchmark)


def is_training(sample: SampleName, dataset: str, benchmark: str) -> bool:
    """The `istraining` rule of method.md §1.2 (train part if True, val part otherwise)."""
    spec = check_dataset_benchmark(dataset, benchmark)
    bench = normalise_benchmark(benchmark)
    if bench == "xsub":
        return sample.performer in spec.train_subjects
    if bench == "xview":
        return sample.camera in (2, 3)          # camera 1 is the test view
    return sample.setup % 2 == 0                # xset: even setup IDs train


def in_dataset(sample: SampleName, dataset: str) -> bool:
    """Whether a file belongs to `dataset` (NTU-60 files are a subset of an NTU-120 folder)."""
    spec = DATASETS[dataset]
    if sample.action < 1:
        return False
    if spec.num_classes is not None and sample.action > spec.num_classes:
        return False
    return spec.max_setup is None or sample.setup <= spec.max_setup


def label_of(sample: SampleName) -> int:
    """method.md §1.2: label = action - 1."""
    return sample.action - 1


def load_ignore_list(dataset: str) -> List[str]:
    """The published missing-skeleton sample names for `dataset` (no extension); [] for synthetic."""
    spec = DATASETS[dataset]
    if spec.ignore_list is None:
        return []
    text = resources.files("skelfast.data").joinpath("resources", spec.ignore_list).read_text("ascii")
    return [line.strip() for line in text.splitlines() if line.strip()]
