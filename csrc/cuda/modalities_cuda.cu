// CUDA binding of skelfast::modalities: checks, allocation, stream, launch.
// Layer: binding (stable ABI only, so it compiles with nvcc against CPU-only torch headers).
#include <torch/csrc/inductor/aoti_torch/c/shim.h>
#include <torch/csrc/stable/library.h>
#include <torch/csrc/stable/ops.h>
#include <torch/csrc/stable/tensor.h>

#include "../kernels/modalities.cuh"
#include "../modalities_common.h"

namespace skelfast {
namespace {

using torch::stable::Tensor;
using torch::headeronly::ScalarType;

cudaStream_t current_stream(const Tensor& t) {
  void* stream = nullptr;
  STD_TORCH_CHECK(aoti_torch_get_current_cuda_stream(t.get_device_index(), &stream) == AOTI_TORCH_SUCCESS,
                  "skelfast: cannot get the current CUDA stream");
  return static_cast<cudaStream_t>(stream);
}

void check_cuda(cudaError_t err, const char* what) {
  STD_TORCH_CHECK(err == cudaSuccess, "skelfast::", what, ": CUDA error: ", cudaGetErrorString(err));
}

template <typename Fn>
void dispatch_cuda_types(ScalarType st, Fn&& fn) {
  switch (st) {
    case ScalarType::Float: fn(float{}); break;
    case ScalarType::Double: fn(double{}); break;
    case ScalarType::Half: fn(__half{}); break;
    case ScalarType::BFloat16: fn(__nv_bfloat16{}); break;
    default: STD_TORCH_CHECK(false, "skelfast::modalities: x must be float16, bfloat16, float32 or float64");
  }
}

Tensor modalities_cuda(Tensor x, std::optional<Tensor> scale, std::vector<int64_t> select,
                       std::vector<int64_t> bone_parent, std::vector<int64_t> axis_partner,
                       std::vector<int64_t> normal) {
  ModalitiesCall c = prepare_modalities_forward(x, scale, select, bone_parent, axis_partner, normal);
  dispatch_cuda_types(c.x.scalar_type(), [&](auto tag) {
    using T = decltype(tag);
    check_cuda(launch_modalities_fwd<T>(c.p, static_cast<const T*>(c.x.const_data_ptr()), c.scale_ptr<acc_t<T>>(),
                                        static_cast<T*>(c.out.mutable_data_ptr()), current_stream(c.x)),
               "modalities");
  });
  return c.out;
}

Tensor modalities_backward_cuda(Tensor grad_out, Tensor x, std::optional<Tensor> scale, std::vector<int64_t> select,
                                std::vector<int64_t> bone_parent, std::vector<int64_t> axis_partner,
                                std::vector<int64_t> normal) {
  ModalitiesCall c = prepare_modalities_backward(grad_out, x, scale, select, bone_parent, axis_partner, normal);
  dispatch_cuda_types(c.x.scalar_type(), [&](auto tag) {
    using T = decltype(tag);
    check_cuda(launch_modalities_bwd<T>(c.p, static_cast<const T*>(c.x.const_data_ptr()), c.scale_ptr<acc_t<T>>(),
                                        static_cast<const T*>(c.grad->const_data_ptr()),
                                        static_cast<T*>(c.out.mutable_data_ptr()), current_stream(c.x)),
               "modalities_backward");
  });
  return c.out;
}

}  // namespace
}  // namespace skelfast

STABLE_TORCH_LIBRARY_IMPL(skelfast, CUDA, m) {
  m.impl("modalities", TORCH_BOX(&skelfast::modalities_cuda));
  m.impl("modalities_backward", TORCH_BOX(&skelfast::modalities_backward_cuda));
}
