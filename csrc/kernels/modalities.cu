// CUDA kernels of the six modalities: one thread per output element (forward, coalesced writes
// along (v, m)) and one thread per frame (backward, so the in-frame scatter to parent joints needs
// no atomics). Layer: torch-free kernel; maths in skelfast/modalities_math.h.
#include "modalities.cuh"
#include "skelfast/cuda_check.h"

namespace skelfast {
namespace {

template <typename T>
__global__ void modalities_fwd_kernel(ModalitiesParams p, const T* __restrict__ x, const acc_t<T>* __restrict__ scale,
                                      T* __restrict__ out, int64_t total) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    modalities_forward_element<T, acc_t<T>>(p, x, scale, out, i);
}

template <typename T>
__global__ void modalities_bwd_kernel(ModalitiesParams p, const T* __restrict__ x, const acc_t<T>* __restrict__ scale,
                                      const T* __restrict__ grad_out, T* __restrict__ grad_x, int64_t frames) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < frames;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    modalities_backward_frame<T, acc_t<T>>(p, x, scale, grad_out, grad_x, i);
}

inline unsigned grid_for(int64_t work, int threads) {
  const int64_t blocks = (work + threads - 1) / threads;
  return static_cast<unsigned>(blocks < 65535 * 16 ? blocks : 65535 * 16);
}

}  // namespace

template <typename T>
cudaError_t launch_modalities_fwd(const ModalitiesParams& p, const T* x, const acc_t<T>* scale, T* out,
                                  cudaStream_t stream) {
  const int64_t total = p.N * p.T * p.V * p.M;
  if (total == 0) return cudaSuccess;
  constexpr int kThreads = 256;
  modalities_fwd_kernel<T><<<grid_for(total, kThreads), kThreads, 0, stream>>>(p, x, scale, out, total);
  return cudaGetLastError();
}

template <typename T>
cudaError_t launch_modalities_bwd(const ModalitiesParams& p, const T* x, const acc_t<T>* scale, const T* grad_out,
                                  T* grad_x, cudaStream_t stream) {
  const int64_t frames = p.N * p.T * p.M;
  if (frames == 0) return cudaSuccess;
  constexpr int kThreads = 64;  // large per-thread frame state; small blocks keep occupancy sane
  modalities_bwd_kernel<T><<<grid_for(frames, kThreads), kThreads, 0, stream>>>(p, x, scale, grad_out, grad_x, frames);
  return cudaGetLastError();
}

#define SKELFAST_INSTANTIATE(T)                                                                                    \
  template cudaError_t launch_modalities_fwd<T>(const ModalitiesParams&, const T*, const acc_t<T>*, T*,            \
                                                cudaStream_t);                                                     \
  template cudaError_t launch_modalities_bwd<T>(const ModalitiesParams&, const T*, const acc_t<T>*, const T*, T*, \
                                                cudaStream_t);
SKELFAST_INSTANTIATE(float)
SKELFAST_INSTANTIATE(double)
SKELFAST_INSTANTIATE(__half)
SKELFAST_INSTANTIATE(__nv_bfloat16)
#undef SKELFAST_INSTANTIATE

}  // namespace skelfast
