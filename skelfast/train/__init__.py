"""skelfast.train: the training pipeline of the method (method.md §5-§7) and a feature API.

Commands (`python -m skelfast.train --help`):
  (none)     the whole pipeline on the synthetic dataset (configs/quick.yaml): pretrain ikem6 ->
             distill student6to3 -> linear evaluation of teacher, student and a random-init encoder
  pretrain   --config crossclr3|ikem6|PATH          MoCo pretraining, phase 1 then phase 2 (§5)
  distill    --teacher CKPT [--config student3to1]  relational distillation (§6.1, §6.2)
  linear     --checkpoint CKPT --view V             linear evaluation on cached features (§7)
  knn        --checkpoint CKPT                      weighted k-NN on frozen features
  finetune   --checkpoint CKPT --label-fraction F   fine-tuning / semi-supervised evaluation
Every command: --config, --set key.sub=value, --resume (training commands), --backend, --amp bf16,
--compile, --cuda-graphs; `torchrun` for DDP (train/distributed.py).

Modules: config (YAML + overrides + validation), checkpoint (atomic save / checked load), data
(batches and seeded views), loops (the shared Trainer), pretrain, distill, linear, knn, finetune,
features (cached frozen features), api (Embedder), logging_utils, distributed, pipeline, models.
"""

__all__ = ["Embedder"]


_MODULES = ("api", "config", "checkpoint", "data", "loops", "pretrain", "distill", "linear", "knn", "finetune",
            "features", "logging_utils", "distributed", "pipeline", "models", "session")


def __getattr__(name):
    # lazy: importing skelfast.train must not pull in the training stack; `skelfast.train.api.X`
    # after a plain `import skelfast` works all the same
    if name == "Embedder":
        from .api import Embedder
        return Embedder
    if name in _MODULES:
        import importlib
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
