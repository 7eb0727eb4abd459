// CUDA half/bfloat16 conversions for the shared kernel maths (torch compiles nvcc code with the
// implicit half conversions disabled, so they are spelled out here).
// Layer: torch-free header.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "skelfast/modalities_math.h"

namespace skelfast {

template <>
struct Cvt<__half, float> {
  static __host__ __device__ __forceinline__ float load(__half v) { return __half2float(v); }
  static __host__ __device__ __forceinline__ __half store(float v) { return __float2half_rn(v); }
};
template <>
struct Cvt<__nv_bfloat16, float> {
  static __host__ __device__ __forceinline__ float load(__nv_bfloat16 v) { return __bfloat162float(v); }
  static __host__ __device__ __forceinline__ __nv_bfloat16 store(float v) { return __float2bfloat16_rn(v); }
};

template <typename T> struct AccType { using type = float; };
template <> struct AccType<double> { using type = double; };
template <typename T> using acc_t = typename AccType<T>::type;

}  // namespace skelfast
