// Error propagation for torch-free CUDA launchers: return cudaError_t, never abort.
// Layer: torch-free header.
#pragma once

#include <cuda_runtime.h>

#define SKELFAST_CUDA_RETURN_IF_ERROR(expr) \
  do {                                      \
    cudaError_t err_ = (expr);              \
    if (err_ != cudaSuccess) return err_;   \
  } while (0)
