"""skelfast: fast, faithful multi-modality self-supervised skeleton action recognition (IKEM).

`import skelfast` always works; if the compiled extension is missing it warns once and the ops use
the eager reference implementation.
"""
__version__ = "0.1.0"

from . import _extension  # noqa: F401  (registers torch.ops.skelfast.* if the library loads)
from .modality_spec import MODALITIES3, MODALITIES6
from .topology import COCO17, NTU25_CROSSCLR, NTU25_IKEM, Topology, get_topology
from . import reference  # noqa: E402
from . import ops  # noqa: E402

__all__ = ["MODALITIES3", "MODALITIES6", "Topology", "NTU25_IKEM", "NTU25_CROSSCLR", "COCO17",
           "get_topology", "ops", "reference", "nn", "models", "data", "train", "__version__"]

# Imported on first use (`skelfast.train.api.Embedder`, `skelfast.models.build` after a plain
# `import skelfast`), so that importing the package does not load the trainer, matplotlib or the data tools.
_LAZY_SUBMODULES = ("nn", "models", "data", "train")


def __getattr__(name):
    if name in _LAZY_SUBMODULES:
        import importlib
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
