// CPU kernels of skelfast::dropout_add_relu and its backward: one pass over memory each (the eager
// block does dropout's bernoulli_ + mul, the add and the ReLU as four passes, and bernoulli_ alone
// costs ~13 ns per element on one core). Layer: kernel + binding (stable ABI only).
#include <torch/csrc/stable/library.h>
#include <torch/csrc/stable/ops.h>
#include <torch/csrc/stable/tensor.h>

#include <algorithm>
#include <cstdint>
#include <tuple>

#include "skelfast/cpu_clones.h"
#include "skelfast/cpu_elementwise.h"
#include "skelfast/dropout_math.h"

namespace skelfast {
namespace {

using torch::stable::Tensor;
using torch::headeronly::ScalarType;

constexpr int64_t kGrain = 32768;

template <typename T, bool kDrop, bool kResidual>
SKELFAST_CPU_CLONES void forward_range(const T* x, const T* res, T* out, const DropoutParams d, int64_t begin,
                                       int64_t end) {
  const T scale = static_cast<T>(d.scale);
  for (int64_t i = begin; i < end; ++i) {
    T v = x[i];
    if constexpr (kDrop) v *= dropout_weight<T>(d, static_cast<uint64_t>(i), scale);
    if constexpr (kResidual) v += res[i];
    out[i] = v < T(0) ? T(0) : v;  // NaN passes through, as torch.relu
  }
}

// One row of `inner` elements starting at memory offset i0 of out; grad's row is contiguous
// (stride 1) but may sit anywhere (e.g. the stride-0 broadcast of a pooled gradient).
template <typename T, bool kDrop, bool kResidualGrad>
SKELFAST_CPU_CLONES void backward_row(const T* grad, const T* out, T* gx, T* gres, const DropoutParams d,
                                      int64_t i0, int64_t inner) {
  relu_dropout_grad_row<T, kDrop, kResidualGrad>(grad, out, gres, gx + i0, d, i0, inner);
}

Tensor dropout_add_relu_cpu(Tensor x, std::optional<Tensor> residual, double p, int64_t seed) {
  const char* op = "skelfast::dropout_add_relu";
  check_p(p, op);
  STD_TORCH_CHECK(dense_layout(x), op, ": x must be contiguous or channels-last");
  if (residual.has_value()) {
    STD_TORCH_CHECK(residual->scalar_type() == x.scalar_type(), op, ": residual must have x's dtype");
    STD_TORCH_CHECK(same_geometry(x, *residual), op, ": residual must have x's shape and strides");
  }
  Tensor out = torch::stable::empty_like(x);
  const int64_t n = x.numel();
  if (n == 0) return out;
  const DropoutParams d = dropout_params(p, seed);
  dispatch_float(x.scalar_type(), op, [&](auto tag) {
    using T = decltype(tag);
    const T* xp = x.const_data_ptr<T>();
    const T* rp = residual.has_value() ? residual->const_data_ptr<T>() : nullptr;
    T* op_ = out.mutable_data_ptr<T>();
    torch::stable::parallel_for(0, n, kGrain, [&](int64_t b, int64_t e) {
      if (d.active && rp) forward_range<T, true, true>(xp, rp, op_, d, b, e);
      else if (d.active) forward_range<T, true, false>(xp, rp, op_, d, b, e);
      else if (rp) forward_range<T, false, true>(xp, rp, op_, d, b, e);
      else forward_range<T, false, false>(xp, rp, op_, d, b, e);
    });
  });
  return out;
}

std::tuple<Tensor, Tensor> dropout_add_relu_backward_cpu(Tensor grad_out, Tensor out, double p, int64_t seed,
                                                        bool residual_grad) {
  const char* op = "skelfast::dropout_add_relu_backward";
  check_p(p, op);
  STD_TORCH_CHECK(dense_layout(out), op, ": out must be contiguous or channels-last");
  STD_TORCH_CHECK(grad_out.scalar_type() == out.scalar_type(), op, ": grad_out must have out's dtype");
  STD_TORCH_CHECK(out.dim() <= 8, op, ": at most 8 dimensions");
  STD_TORCH_CHECK(grad_out.dim() == out.dim(), op, ": grad_out must have out's shape");
  for (int64_t k = 0; k < out.dim(); ++k) STD_TORCH_CHECK(grad_out.size(k) == out.size(k), op, ": grad_out must have out's shape");
  Tensor gx = torch::stable::empty_like(out);
  Tensor gres = residual_grad ? torch::stable::empty_like(out) : torch::stable::new_empty(out, {0});
  const int64_t n = out.numel();
  if (n == 0) return {gx, gres};
  const MemoryOrder m = memory_order(out, grad_out);
  const int64_t inner = m.inner();
  STD_TORCH_CHECK(inner == 1 || m.grad_stride[m.dims - 1] == 1, op,
                  ": grad_out must be contiguous along out's innermost memory dimension");
  const int64_t rows = n / inner;
  const DropoutParams d = dropout_params(p, seed);
  dispatch_float(out.scalar_type(), op, [&](auto tag) {
    using T = decltype(tag);
    const T* g = grad_out.const_data_ptr<T>();
    const T* o = out.const_data_ptr<T>();
    T* gxp = gx.mutable_data_ptr<T>();
    T* grp = residual_grad ? gres.mutable_data_ptr<T>() : nullptr;
    torch::stable::parallel_for(0, rows, std::max<int64_t>(1, kGrain / inner), [&](int64_t b, int64_t e) {
      for (int64_t r = b; r < e; ++r) {
        const T* gr = g + m.grad_offset(r);
        const int64_t i0 = r * inner;
        if (d.active && grp) backward_row<T, true, true>(gr, o, gxp, grp, d, i0, inner);
        else if (d.active) backward_row<T, true, false>(gr, o, gxp, grp, d, i0, inner);
        else if (grp) backward_row<T, false, true>(gr, o, gxp, grp, d, i0, inner);
        else backward_row<T, false, false>(gr, o, gxp, grp, d, i0, inner);
      }
    });
  });
  return {gx, gres};
}

}  // namespace
}  // namespace skelfast

STABLE_TORCH_LIBRARY_IMPL(skelfast, CPU, m) {
  m.impl("dropout_add_relu", TORCH_BOX(&skelfast::dropout_add_relu_cpu));
  m.impl("dropout_add_relu_backward", TORCH_BOX(&skelfast::dropout_add_relu_backward_cpu));
}
