"""skelfast.data: NTU RGB+D data pipeline (method.md §1-§2).

Modules (one idea each):
  skeleton_reader  raw `.skeleton` reader (§1.1), vectorised, parallel over files
  ntu              sample names, benchmark split rules, missing-skeleton lists (§1.2)
  preprocess       centring, cv2-equivalent linear resampling to 50 frames, y rotation (§1.3)
  preparation      folder -> memory-mappable arrays + label files + manifest; verify (format documented there)
  synthetic        procedurally generated NTU-format `.skeleton` dataset (the embedded default)
  augment          temporal crop + shear (§2): per-sample NumPy and batched on-device torch op
  feeders          PretrainFeeder / EvalFeeder datasets (§1.4)

CLI: `python -m skelfast.data --help` (prepare, prepare --verify, synth).
"""
from .augment import (apply_augment_params, augment_sample, batched_augment, batched_two_views,
                      sample_augment_params, shear, temporal_crop)
from .feeders import EvalFeeder, PretrainFeeder, load_labels
from .ntu import BENCHMARKS, DATASETS, is_training, load_ignore_list, parse_sample_name
from .preparation import PrepareError, load_manifest, prepare, verify
from .preprocess import preprocess_sample
from .skeleton_reader import SkeletonFormatError, read_skeleton, read_skeletons
from . import synthetic

__all__ = ["read_skeleton", "read_skeletons", "SkeletonFormatError", "parse_sample_name", "is_training",
           "load_ignore_list", "DATASETS", "BENCHMARKS", "preprocess_sample", "prepare", "verify",
           "load_manifest", "PrepareError", "synthetic", "PretrainFeeder", "EvalFeeder", "load_labels",
           "temporal_crop", "shear", "augment_sample", "sample_augment_params", "apply_augment_params",
           "batched_augment", "batched_two_views"]
