// Helpers shared by the CUDA bindings: device guard, the current stream, CUDA error checks, dtype
// dispatch.
// Layer: binding (stable ABI only, so it compiles with nvcc against CPU-only torch headers).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <torch/csrc/inductor/aoti_torch/c/shim.h>
#include <torch/csrc/stable/accelerator.h>
#include <torch/csrc/stable/tensor.h>
#include <torch/headeronly/util/Exception.h>

namespace skelfast {

// The dispatcher does not set the current device for custom ops, and a raw <<<>>> launch goes to
// the current device: a tensor on cuda:1 while cuda:0 is current would be refused ("invalid
// resource handle" for its stream). Every binding opens one of these on its input's device.
using DeviceGuard = torch::stable::accelerator::DeviceGuard;

inline cudaStream_t current_stream(const torch::stable::Tensor& t) {
  void* stream = nullptr;
  STD_TORCH_CHECK(aoti_torch_get_current_cuda_stream(t.get_device_index(), &stream) == AOTI_TORCH_SUCCESS,
                  "skelfast: cannot get the current CUDA stream");
  return static_cast<cudaStream_t>(stream);
}

// Raise "skelfast::<op> (<what>): CUDA error: ..." for a failed launch.
inline void check_cuda(cudaError_t err, const char* op, const char* what = nullptr) {
  STD_TORCH_CHECK(err == cudaSuccess, "skelfast::", op, what ? " (" : "", what ? what : "", what ? ")" : "",
                  ": CUDA error: ", cudaGetErrorString(err));
}

// fn(T{}) for T in {float, double, __half, __nv_bfloat16} matching `st`.
template <typename Fn>
void dispatch_cuda_float_types(torch::headeronly::ScalarType st, const char* op, Fn&& fn) {
  using torch::headeronly::ScalarType;
  switch (st) {
    case ScalarType::Float: fn(float{}); break;
    case ScalarType::Double: fn(double{}); break;
    case ScalarType::Half: fn(__half{}); break;
    case ScalarType::BFloat16: fn(__nv_bfloat16{}); break;
    default: STD_TORCH_CHECK(false, "skelfast::", op, ": x must be float16, bfloat16, float32 or float64");
  }
}

}  // namespace skelfast
