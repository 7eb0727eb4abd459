// CUDA binding of skelfast::graph_conv and its backward: checks, allocation, stream; the graph
// aggregation and epilogues are the torch-free kernels of csrc/kernels/graph_conv.cu, the 1x1
// projections and the edge-weight gradient GEMMs go to cuBLAS through torch::stable::matmul.
// Layer: binding (stable ABI only, so it compiles with nvcc against CPU-only torch headers).
#include <torch/csrc/inductor/aoti_torch/c/shim.h>
#include <torch/csrc/stable/library.h>
#include <torch/csrc/stable/ops.h>
#include <torch/csrc/stable/tensor.h>

#include <tuple>
#include <vector>

#include "../kernels/graph_conv.cuh"
#include "binding_utils.cuh"
#include "skelfast/graph_conv_binding.h"

namespace skelfast {
namespace {

using torch::stable::Tensor;
using torch::headeronly::ScalarType;

inline void gc_check(cudaError_t err, const char* what) { check_cuda(err, "graph_conv", what); }

// All tensors on x's CUDA device; one group's edge weights must fit the 48 KiB of shared memory.
void check_cuda_inputs(const Tensor& x, const Tensor& weight, const std::optional<Tensor>& bias, const Tensor& A,
                       const std::optional<Tensor>& importance, const GraphConvDims& d) {
  const auto dev = x.get_device_index();
  STD_TORCH_CHECK(weight.is_cuda() && A.is_cuda() && weight.get_device_index() == dev && A.get_device_index() == dev &&
                      (!bias.has_value() || (bias->is_cuda() && bias->get_device_index() == dev)) &&
                      (!importance.has_value() || (importance->is_cuda() && importance->get_device_index() == dev)),
                  "skelfast::graph_conv (CUDA): weight, bias, A and importance must be on x's device");
  const int64_t acc_bytes = x.scalar_type() == ScalarType::Double ? 8 : 4;
  STD_TORCH_CHECK(d.K * d.V * d.V * acc_bytes <= 48 * 1024,
                  "skelfast::graph_conv (CUDA): K*V*V edge weights of one group must fit 48 KiB of shared memory");
}

GcShape to_shape(const GraphConvDims& d) { return {d.B, d.G, d.Cin, d.Cout, d.K, d.T, d.V}; }

Tensor packed_weight_cuda(const Tensor& weight, const GraphConvDims& d) {
  Tensor w = torch::stable::reshape(weight, {d.G, d.K, d.Cout, d.Cin});
  return torch::stable::reshape(torch::stable::contiguous(torch::stable::transpose(w, 1, 2)), {d.G, d.Cout, d.K * d.Cin});
}

// ae (G, K, V, V) = A * E in the accumulation dtype, on the device.
template <typename Acc>
Tensor edge_weights(const Tensor& A_acc, const std::optional<Tensor>& E_acc, const GraphConvDims& d, cudaStream_t s) {
  Tensor ae = torch::stable::new_empty(A_acc, {d.G, d.K, d.V, d.V});
  const int64_t e_stride = (E_acc.has_value() && E_acc->dim() == 4) ? d.K * d.V * d.V : 0;
  gc_check(launch_gc_edge_weights<Acc>(to_shape(d), static_cast<const Acc*>(A_acc.const_data_ptr()),
                                       E_acc ? static_cast<const Acc*>(E_acc->const_data_ptr()) : nullptr, e_stride,
                                       static_cast<Acc*>(ae.mutable_data_ptr()), s),
           "edge weights");
  return ae;
}

// What both passes read: A and importance in the accumulation dtype, bias contiguous.
struct ReadInputs {
  Tensor a_acc;
  std::optional<Tensor> e_acc;
  std::optional<Tensor> bias;
};

ReadInputs read_inputs(const Tensor& x, const Tensor& A, const std::optional<Tensor>& importance,
                       const std::optional<Tensor>& bias) {
  const ScalarType acc_st = x.scalar_type() == ScalarType::Double ? ScalarType::Double : ScalarType::Float;
  ReadInputs r{torch::stable::contiguous(torch::stable::to(A, acc_st)), std::nullopt, std::nullopt};
  if (importance.has_value()) r.e_acc = torch::stable::contiguous(torch::stable::to(*importance, acc_st));
  if (bias.has_value()) r.bias = torch::stable::contiguous(*bias);
  return r;
}

Tensor graph_conv_cuda(Tensor x, Tensor weight, std::optional<Tensor> bias, Tensor A, std::optional<Tensor> importance,
                       int64_t groups) {
  const DeviceGuard guard(x.get_device_index());
  const GraphConvDims d = graph_conv_dims(x, weight, bias, A, importance, groups);
  check_cuda_inputs(x, weight, bias, A, importance, d);
  Tensor xc = torch::stable::contiguous(x);
  Tensor out = torch::stable::new_empty(xc, {d.B, d.G * d.Cout, d.T, d.V});
  if (out.numel() == 0) return out;
  const ReadInputs in = read_inputs(xc, A, importance, bias);
  const Tensor& a_acc = in.a_acc;
  const std::optional<Tensor>& e_acc = in.e_acc;
  const std::optional<Tensor>& bc = in.bias;
  const cudaStream_t stream = current_stream(xc);
  Tensor wp = packed_weight_cuda(weight, d);
  Tensor z = torch::stable::new_empty(xc, {d.K * d.Cin, d.B * d.T * d.V});
  dispatch_cuda_float_types(xc.scalar_type(), "graph_conv", [&](auto tag) {
    using T = decltype(tag);
    using Acc = acc_t<T>;
    const GcShape s = to_shape(d);
    Tensor ae = edge_weights<Acc>(a_acc, e_acc, d, stream);
    Tensor beff = torch::stable::new_empty(ae, {d.G, d.Cout, d.V});
    gc_check(launch_gc_bias_eff<T>(s, bc ? static_cast<const T*>(bc->const_data_ptr()) : nullptr,
                                   static_cast<const Acc*>(ae.const_data_ptr()), static_cast<Acc*>(beff.mutable_data_ptr()),
                                   stream),
             "bias");
    for (int64_t g = 0; g < d.G; ++g) {
      gc_check(launch_gc_aggregate<T>(s, g, static_cast<const T*>(xc.const_data_ptr()),
                                      static_cast<const Acc*>(ae.const_data_ptr()), static_cast<T*>(z.mutable_data_ptr()),
                                      stream),
               "aggregate");
      Tensor o = torch::stable::matmul(torch::stable::select(wp, 0, g), z);  // (Cout, B*T*V), cuBLAS
      gc_check(launch_gc_epilogue<T>(s, g, static_cast<const T*>(o.const_data_ptr()),
                                     static_cast<const Acc*>(beff.const_data_ptr()), static_cast<T*>(out.mutable_data_ptr()),
                                     stream),
               "epilogue");
    }
  });
  return out;
}

std::tuple<Tensor, Tensor, Tensor, Tensor> graph_conv_backward_cuda(Tensor grad_out, Tensor x, Tensor weight,
                                                                    std::optional<Tensor> bias, Tensor A,
                                                                    std::optional<Tensor> importance, int64_t groups) {
  const DeviceGuard guard(x.get_device_index());
  const GraphConvDims d = graph_conv_dims(x, weight, bias, A, importance, groups);
  check_cuda_inputs(x, weight, bias, A, importance, d);
  STD_TORCH_CHECK(grad_out.dim() == 4 && grad_out.size(0) == d.B && grad_out.size(1) == d.G * d.Cout &&
                      grad_out.size(2) == d.T && grad_out.size(3) == d.V && grad_out.scalar_type() == x.scalar_type(),
                  "skelfast::graph_conv_backward: grad_out must be (B, G*Cout, T, V) with x's dtype");
  Tensor xc = torch::stable::contiguous(x);
  Tensor gc = torch::stable::contiguous(grad_out);
  const ReadInputs in = read_inputs(xc, A, importance, bias);
  const Tensor& a_acc = in.a_acc;
  const std::optional<Tensor>& e_acc = in.e_acc;
  const std::optional<Tensor>& bc = in.bias;
  const cudaStream_t stream = current_stream(xc);
  const int64_t R = d.B * d.T;
  Tensor wp = packed_weight_cuda(weight, d);
  Tensor dx = torch::stable::new_zeros(xc, {d.B, d.G * d.Cin, d.T, d.V});
  Tensor dwp = torch::stable::new_zeros(xc, {d.G, d.Cout, d.K * d.Cin});
  Tensor db = torch::stable::new_empty(xc, {d.G * d.K * d.Cout});
  Tensor dae = torch::stable::new_zeros(a_acc, {d.G, d.K, d.V, d.V});
  Tensor de = torch::stable::new_empty(a_acc, {d.G, d.K, d.V, d.V});
  Tensor z = torch::stable::new_empty(xc, {d.K * d.Cin, R * d.V});
  Tensor gg = torch::stable::new_empty(xc, {d.Cout, R * d.V});
  // x with rows (ci, b, t) per group, matching z / dz rows: (G, Cin*B*T, V)
  Tensor x5 = torch::stable::reshape(xc, {d.B, d.G, d.Cin, d.T * d.V});
  Tensor xr = torch::stable::reshape(
      torch::stable::contiguous(torch::stable::transpose(torch::stable::transpose(x5, 0, 1), 1, 2)),
      {d.G, d.Cin * R, d.V});
  dispatch_cuda_float_types(xc.scalar_type(), "graph_conv", [&](auto tag) {
    using T = decltype(tag);
    using Acc = acc_t<T>;
    const GcShape s = to_shape(d);
    Tensor ae = edge_weights<Acc>(a_acc, e_acc, d, stream);
    Tensor rsum = torch::stable::new_empty(ae, {d.G, d.Cout, d.V});
    gc_check(launch_gc_grad_colsum<T>(s, static_cast<const T*>(gc.const_data_ptr()), static_cast<Acc*>(rsum.mutable_data_ptr()),
                                      stream),
             "grad colsum");
    if (R > 0 && d.Cin > 0) {
      for (int64_t g = 0; g < d.G; ++g) {
        gc_check(launch_gc_gather_grad<T>(s, g, static_cast<const T*>(gc.const_data_ptr()), static_cast<T*>(gg.mutable_data_ptr()),
                                          stream),
                 "gather grad");
        gc_check(launch_gc_aggregate<T>(s, g, static_cast<const T*>(xc.const_data_ptr()),
                                        static_cast<const Acc*>(ae.const_data_ptr()), static_cast<T*>(z.mutable_data_ptr()),
                                        stream),
                 "aggregate");
        Tensor dwp_g = torch::stable::select(dwp, 0, g);
        torch::stable::copy_(dwp_g, torch::stable::matmul(gg, torch::stable::transpose(z, 0, 1)));
        Tensor dz = torch::stable::matmul(torch::stable::transpose(torch::stable::select(wp, 0, g), 0, 1), gg);
        gc_check(launch_gc_aggregate_backward<T>(s, g, static_cast<const T*>(dz.const_data_ptr()),
                                                 static_cast<const Acc*>(ae.const_data_ptr()),
                                                 static_cast<T*>(dx.mutable_data_ptr()), stream),
                 "aggregate backward");
        // d(ae)[g, k] = x_g^T (V, Cin*R) @ dz_k (Cin*R, V)
        Tensor xg_t = torch::stable::transpose(torch::stable::select(xr, 0, g), 0, 1);
        Tensor dae_g = torch::stable::select(dae, 0, g);
        for (int64_t k = 0; k < d.K; ++k) {
          Tensor dz_k = torch::stable::reshape(torch::stable::narrow(dz, 0, k * d.Cin, d.Cin), {d.Cin * R, d.V});
          Tensor dst = torch::stable::select(dae_g, 0, k);
          torch::stable::copy_(dst, torch::stable::matmul(xg_t, dz_k));
        }
      }
    }
    gc_check(launch_gc_finalize<T>(s, bc ? static_cast<const T*>(bc->const_data_ptr()) : nullptr,
                                   static_cast<const Acc*>(a_acc.const_data_ptr()), static_cast<const Acc*>(ae.const_data_ptr()),
                                   static_cast<const Acc*>(rsum.const_data_ptr()), static_cast<const Acc*>(dae.const_data_ptr()),
                                   static_cast<T*>(db.mutable_data_ptr()), static_cast<Acc*>(de.mutable_data_ptr()), stream),
             "finalize");
  });
  std::vector<int64_t> wsizes(weight.sizes().begin(), weight.sizes().end());
  Tensor dw = torch::stable::reshape(
      torch::stable::contiguous(torch::stable::transpose(torch::stable::reshape(dwp, {d.G, d.Cout, d.K, d.Cin}), 1, 2)),
      wsizes);
  Tensor de_out = de;
  if (importance.has_value()) {
    std::vector<int64_t> esizes(importance->sizes().begin(), importance->sizes().end());
    de_out = torch::stable::reshape(torch::stable::to(de, importance->scalar_type()), esizes);
  }
  return {dx, dw, db, de_out};
}

}  // namespace
}  // namespace skelfast

STABLE_TORCH_LIBRARY_IMPL(skelfast, CUDA, m) {
  m.impl("graph_conv", TORCH_BOX(&skelfast::graph_conv_cuda));
  m.impl("graph_conv_backward", TORCH_BOX(&skelfast::graph_conv_backward_cuda));
}
