"""skelfast.models: the method's models on fused kernels (build) and official-checkpoint loading."""
from .build import BACKENDS, build, fused_kernels
from .official import (LoadReport, OfficialLayout, default_ignore_weights, load_official_checkpoint,
                       official_layout, read_state_dict, to_official_state_dict)

__all__ = ["build", "fused_kernels", "BACKENDS", "load_official_checkpoint", "to_official_state_dict", "official_layout", "default_ignore_weights",
           "read_state_dict", "LoadReport", "OfficialLayout"]
