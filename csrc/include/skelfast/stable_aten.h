// ATen ops the CPU kernels call that torch::stable has no wrapper for, through the stable-ABI
// dispatcher: out-variant GEMMs (no allocation per queue chunk; the losses' float64 path), and
// aten::convolution / aten::convolution_backward for a 1x1, stride-1, grouped 2-d convolution
// (graph_conv's projection and the losses' float32 similarity GEMMs).
//
// Why the convolution: on CPU it dispatches to oneDNN, whose 1x1 convolution over a channels-last tensor runs the
// projection GEMM of skelfast::graph_conv at 2-2.6x the rate of aten::matmul (MKL sgemm) on the
// 2-core benchmark box (measured, fp32, ST-GCN block shapes: 453-479 vs 136-196 GFLOP/s forward).
// A channels-last (B, C, T, V) tensor is a row-major (B*T*V, C) matrix, so a 1x1 convolution is
// exactly out_rows = in_rows @ W^T per group. Layer: kernel helper (stable ABI only).
#pragma once

#include <torch/csrc/stable/ops.h>
#include <torch/csrc/stable/stableivalue_conversions.h>
#include <torch/csrc/stable/tensor.h>

#include <array>
#include <optional>
#include <tuple>
#include <vector>

// Older torch releases (the lent GPU machine's) name the stable-ABI error check without the
// STABLE_ prefix.
#ifndef STABLE_TORCH_ERROR_CODE_CHECK
#define STABLE_TORCH_ERROR_CODE_CHECK TORCH_ERROR_CODE_CHECK
#endif

namespace skelfast {

// Runs aten op `op`.`overload` on `stack` (arguments in, results out from stack[0]).
inline void call_aten(const char* op, const char* overload, StableIValue* stack) {
  STABLE_TORCH_ERROR_CODE_CHECK(torch_call_dispatcher(op, overload, stack, TORCH_ABI_VERSION));
}

// out = a @ b (2-d) / out = bmm(a, b) (3-d), into an existing tensor.
inline void mm_out(torch::stable::Tensor out, const torch::stable::Tensor& a, const torch::stable::Tensor& b) {
  using torch::stable::detail::from;
  std::array<StableIValue, 3> stack{from(a), from(b), from(out)};
  call_aten("aten::mm", "out", stack.data());
}
inline void bmm_out(torch::stable::Tensor out, const torch::stable::Tensor& a, const torch::stable::Tensor& b) {
  using torch::stable::detail::from;
  std::array<StableIValue, 3> stack{from(a), from(b), from(out)};
  call_aten("aten::bmm", "out", stack.data());
}

// out (B, groups*Cout, T, V) = conv2d(x (B, groups*Cin, T, V), weight (groups*Cout, Cin, 1, 1),
// no bias, groups).
inline torch::stable::Tensor conv1x1(const torch::stable::Tensor& x, const torch::stable::Tensor& weight,
                                     int64_t groups) {
  using torch::stable::detail::from;
  const std::vector<int64_t> one{1, 1}, zero{0, 0};
  std::array<StableIValue, 9> stack{from(x), from(weight), from(std::optional<torch::stable::Tensor>()),
                                    from(one), from(zero), from(one), from(false), from(zero), from(groups)};
  call_aten("aten::convolution", "", stack.data());
  return torch::stable::detail::to<torch::stable::Tensor>(stack[0]);
}

// (d input, d weight) of conv1x1 for the output gradient `grad`; no bias gradient. With
// input_grad = false only d weight is computed (d input is then an undefined tensor).
inline std::tuple<torch::stable::Tensor, torch::stable::Tensor> conv1x1_backward(const torch::stable::Tensor& grad,
                                                                                 const torch::stable::Tensor& x,
                                                                                 const torch::stable::Tensor& weight,
                                                                                 int64_t groups,
                                                                                 bool input_grad = true) {
  using torch::stable::detail::from;
  const std::vector<int64_t> one{1, 1}, zero{0, 0};
  const bool mask[3] = {input_grad, true, false};
  std::array<StableIValue, 11> stack{from(grad),  from(x),     from(weight), from(std::optional<std::vector<int64_t>>()),
                                     from(one),   from(zero),  from(one),    from(false),
                                     from(zero),  from(groups), from(torch::headeronly::HeaderOnlyArrayRef<bool>(mask, 3))};
  call_aten("aten::convolution_backward", "", stack.data());
  // every returned tensor (undefined ones included) arrives as an owned handle: wrap all three so
  // that each is released
  torch::stable::Tensor dx = torch::stable::detail::to<torch::stable::Tensor>(stack[0]);
  torch::stable::Tensor dw = torch::stable::detail::to<torch::stable::Tensor>(stack[1]);
  (void)torch::stable::detail::to<torch::stable::Tensor>(stack[2]);
  return {dx, dw};
}

}  // namespace skelfast
