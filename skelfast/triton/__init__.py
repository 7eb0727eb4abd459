"""Optional Triton kernels (pip install skelfast[triton]); imported lazily by skelfast.ops."""
