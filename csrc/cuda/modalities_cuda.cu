// CUDA binding of skelfast::modalities: checks, allocation, stream, launch.
// Layer: binding (stable ABI only, so it compiles with nvcc against CPU-only torch headers).
#include <torch/csrc/inductor/aoti_torch/c/shim.h>
#include <torch/csrc/stable/library.h>
#include <torch/csrc/stable/ops.h>
#include <torch/csrc/stable/tensor.h>

#include "../kernels/modalities.cuh"
#include "binding_utils.cuh"
#include "../modalities_common.h"

namespace skelfast {
namespace {

using torch::stable::Tensor;
using torch::headeronly::ScalarType;

Tensor modalities_cuda(Tensor x, std::optional<Tensor> scale, std::vector<int64_t> select,
                       std::vector<int64_t> bone_parent, std::vector<int64_t> axis_partner,
                       std::vector<int64_t> normal) {
  const DeviceGuard guard(x.get_device_index());
  ModalitiesCall c = prepare_modalities_forward(x, scale, select, bone_parent, axis_partner, normal);
  dispatch_cuda_float_types(c.x.scalar_type(), "modalities", [&](auto tag) {
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
  const DeviceGuard guard(x.get_device_index());
  ModalitiesCall c = prepare_modalities_backward(grad_out, x, scale, select, bone_parent, axis_partner, normal);
  dispatch_cuda_float_types(c.x.scalar_type(), "modalities", [&](auto tag) {
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
