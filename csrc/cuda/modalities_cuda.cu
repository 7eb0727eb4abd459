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
  const ModalitiesParams p = make_modalities_params(x, select, bone_parent, axis_partner, normal);
  check_modalities_scale(x, scale);
  Tensor xc = torch::stable::contiguous(x);
  std::optional<Tensor> sc = scale.has_value() ? std::optional<Tensor>(torch::stable::contiguous(*scale)) : std::nullopt;
  Tensor out = torch::stable::new_empty(xc, {p.N, p.num_out, 3, p.T, p.V, p.M});
  dispatch_cuda_types(xc.scalar_type(), [&](auto tag) {
    using T = decltype(tag);
    check_cuda(launch_modalities_fwd<T>(p, static_cast<const T*>(xc.const_data_ptr()),
                                        sc ? static_cast<const acc_t<T>*>(sc->const_data_ptr()) : nullptr,
                                        static_cast<T*>(out.mutable_data_ptr()), current_stream(xc)),
               "modalities");
  });
  return out;
}

Tensor modalities_backward_cuda(Tensor grad_out, Tensor x, std::optional<Tensor> scale, std::vector<int64_t> select,
                                std::vector<int64_t> bone_parent, std::vector<int64_t> axis_partner,
                                std::vector<int64_t> normal) {
  const ModalitiesParams p = make_modalities_params(x, select, bone_parent, axis_partner, normal);
  check_modalities_scale(x, scale);
  STD_TORCH_CHECK(grad_out.dim() == 6 && grad_out.size(0) == p.N && grad_out.size(1) == p.num_out &&
                      grad_out.scalar_type() == x.scalar_type(),
                  "skelfast::modalities_backward: grad_out must have shape (N, G, 3, T, V, M) and x's dtype");
  Tensor xc = torch::stable::contiguous(x);
  Tensor gc = torch::stable::contiguous(grad_out);
  std::optional<Tensor> sc = scale.has_value() ? std::optional<Tensor>(torch::stable::contiguous(*scale)) : std::nullopt;
  Tensor gx = torch::stable::new_empty(xc, {p.N, 3, p.T, p.V, p.M});
  dispatch_cuda_types(xc.scalar_type(), [&](auto tag) {
    using T = decltype(tag);
    check_cuda(launch_modalities_bwd<T>(p, static_cast<const T*>(xc.const_data_ptr()),
                                        sc ? static_cast<const acc_t<T>*>(sc->const_data_ptr()) : nullptr,
                                        static_cast<const T*>(gc.const_data_ptr()),
                                        static_cast<T*>(gx.mutable_data_ptr()), current_stream(xc)),
               "modalities_backward");
  });
  return gx;
}

}  // namespace
}  // namespace skelfast

STABLE_TORCH_LIBRARY_IMPL(skelfast, CUDA, m) {
  m.impl("modalities", TORCH_BOX(&skelfast::modalities_cuda));
  m.impl("modalities_backward", TORCH_BOX(&skelfast::modalities_backward_cuda));
}
