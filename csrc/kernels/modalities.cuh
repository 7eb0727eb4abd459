// Launchers of the six-modality CUDA kernels (method.md §3.3).
// Layer: torch-free kernel interface; T in {float, double, __half, __nv_bfloat16}.
#pragma once

#include <cuda_runtime.h>

#include "skelfast/cuda_types.h"

namespace skelfast {

template <typename T>
cudaError_t launch_modalities_fwd(const ModalitiesParams& p, const T* x, const acc_t<T>* scale, T* out,
                                  cudaStream_t stream);
template <typename T>
cudaError_t launch_modalities_bwd(const ModalitiesParams& p, const T* x, const acc_t<T>* scale, const T* grad_out,
                                  T* grad_x, cudaStream_t stream);

}  // namespace skelfast
