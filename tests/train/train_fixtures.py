"""Helpers shared by tests/train (a module of its own: `conftest` is not importable by name when
several test folders have one)."""


def tiny_sets(synth_cache, out_dir, **extra):
    """--set items for a seconds-long run: 4-channel encoders, 16-d features, queue 32, batch 8."""
    s = {"data.synthetic.num_classes": 4, "data.synthetic.samples_per_class": 10,
         "data.synthetic.cache_dir": synth_cache, "data.batch_size": 8, "data.eval_batch_size": 64,
         "model.hidden_channels": 4, "model.hidden_dim": 16, "model.feature_dim": 16, "model.queue_size": 32,
         "model.dropout": 0.0, "run.out_dir": str(out_dir), "run.num_threads": 1, "run.progress": False,
         "run.tensorboard": True, "run.plots": True}
    s.update(extra)
    return [f"{k}={v}" for k, v in s.items()]
