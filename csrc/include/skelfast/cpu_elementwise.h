// Helpers shared by the elementwise CPU kernels (the block epilogue, BatchNorm+ReLU):
// they index a tensor by its offset in memory, which is defined for contiguous and channels-last
// (4-d) tensors, and read gradients row by row (rows of the innermost memory dimension, any outer
// strides: e.g. the stride-0 broadcast of a pooled gradient). Layer: kernel helper (stable ABI).
#pragma once

#include <torch/csrc/stable/tensor.h>
#include <torch/headeronly/util/Exception.h>

#include <cstdint>

#include "skelfast/dropout_math.h"

namespace skelfast {

// Contiguous, or channels-last (4-d): the memory orders whose offsets the kernels are defined on.
inline bool dense_layout(const torch::stable::Tensor& t) {
  if (t.is_contiguous()) return true;
  if (t.dim() != 4) return false;
  const int64_t C = t.size(1), H = t.size(2), W = t.size(3);
  const int64_t want[4] = {C * H * W, 1, W * C, C};
  for (int d = 0; d < 4; ++d)
    if (t.size(d) > 1 && t.stride(d) != want[d]) return false;
  return true;
}

// Channels-last and not also contiguous (the rule of skelfast/ops/_layout.py).
inline bool channels_last_order(const torch::stable::Tensor& t) { return !t.is_contiguous() && dense_layout(t); }

inline bool same_geometry(const torch::stable::Tensor& a, const torch::stable::Tensor& b) {
  if (a.dim() != b.dim()) return false;
  for (int64_t d = 0; d < a.dim(); ++d)
    if (a.size(d) != b.size(d) || (a.size(d) > 1 && a.stride(d) != b.stride(d))) return false;
  return true;
}

// out's dims in memory order (contiguous: as is; channels-last: N, H, W, C) with grad's strides
// permuted alike.
struct MemoryOrder {
  int64_t dims = 0;
  int64_t size[8];
  int64_t grad_stride[8];

  int64_t inner() const { return size[dims - 1]; }
  // grad's offset of row r (the outer coordinates of r times grad's strides)
  int64_t grad_offset(int64_t r) const {
    int64_t off = 0;
    for (int64_t k = dims - 2; k >= 0; --k) {
      off += (r % size[k]) * grad_stride[k];
      r /= size[k];
    }
    return off;
  }
};

// out must satisfy dense_layout; grad has out's shape (at most 8 dims).
inline MemoryOrder memory_order(const torch::stable::Tensor& out, const torch::stable::Tensor& grad) {
  MemoryOrder m;
  m.dims = out.dim();
  const bool cl = !out.is_contiguous();
  for (int64_t k = 0; k < m.dims; ++k) {
    const int64_t src = cl ? (k == 0 ? 0 : (k == 3 ? 1 : k + 1)) : k;
    m.size[k] = out.size(src);
    m.grad_stride[k] = grad.stride(src);
  }
  if (m.dims == 0) {  // a scalar: one row of one element
    m.dims = 1;
    m.size[0] = 1;
    m.grad_stride[0] = 1;
  }
  return m;
}

// The gradient through out = relu(dropout(z) + residual) of one row of n elements at memory offset
// i0: dz[j] = grad[j] * [out > 0] * dropout multiplier, and (kResidualGrad) gres[i0 + j] = the ReLU
// gradient. grad and dz are the row's own (contiguous) pointers. Kept a plain loop so that it
// vectorises in the SKELFAST_CPU_CLONES functions that inline it.
template <typename T, bool kDrop, bool kResidualGrad>
__attribute__((always_inline)) inline void relu_dropout_grad_row(const T* grad, const T* out, T* gres, T* dz,
                                                                 const DropoutParams d, int64_t i0, int64_t n) {
  const T keep = static_cast<T>(d.scale);
  for (int64_t j = 0; j < n; ++j) {
    const int64_t i = i0 + j;
    const T go = out[i] > T(0) ? grad[j] : T(0);  // ReLU'(0) = 0, as threshold_backward
    if constexpr (kResidualGrad) gres[i] = go;
    dz[j] = kDrop ? go * dropout_weight<T>(d, static_cast<uint64_t>(i), keep) : go;
  }
}

// Runs fn(float{}) or fn(double{}) for the tensor dtype st; other dtypes raise.
template <typename Fn>
inline void dispatch_float(torch::headeronly::ScalarType st, const char* op, Fn&& fn) {
  if (st == torch::headeronly::ScalarType::Float) {
    fn(float{});
  } else if (st == torch::headeronly::ScalarType::Double) {
    fn(double{});
  } else {
    STD_TORCH_CHECK(false, op, ": the CPU kernel takes float32 or float64 (other dtypes use the PyTorch path)");
  }
}

inline void check_p(double p, const char* op) {
  STD_TORCH_CHECK(p >= 0.0 && p <= 1.0, op, ": dropout probability p must be in [0, 1], got ", p);
}

}  // namespace skelfast
