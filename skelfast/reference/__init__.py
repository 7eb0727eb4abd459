"""Plain eager PyTorch implementation of the method (method.md): the oracle and the baseline."""
from .modalities import modalities, nrm
from . import graph, stgcn, moco, losses, models, parity  # noqa: F401
from .graph import spatial_adjacency
from .stgcn import STGCN, graph_conv_reference
from .losses import (context_loss, context_pair_losses, ikem_loss, info_nce, phase2_loss,
                     relational_distill_loss)
from .moco import QueueBank, enqueue_, momentum_update_
from .models import LinearEval, MultiModalMoCo, TeacherStudent
from .parity import Parity
from .build import available, build, register

__all__ = ["modalities", "nrm", "spatial_adjacency", "STGCN", "graph_conv_reference", "info_nce",
           "context_loss", "context_pair_losses", "ikem_loss", "phase2_loss", "relational_distill_loss",
           "QueueBank", "enqueue_", "momentum_update_", "MultiModalMoCo", "TeacherStudent", "LinearEval",
           "Parity", "build", "register", "available"]
