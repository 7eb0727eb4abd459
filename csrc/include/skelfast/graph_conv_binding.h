// Argument checks, shapes and the host-side edge list of skelfast::graph_conv, shared by the CPU
// and CUDA bindings. Layer: binding helper (stable ABI headers only; no ATen).
#pragma once

#include <torch/csrc/stable/ops.h>
#include <torch/csrc/stable/tensor.h>
#include <torch/headeronly/util/Exception.h>

#include <optional>
#include <vector>

#include "skelfast/graph_conv_math.h"

namespace skelfast {

struct GraphConvDims {
  int64_t B, G, Cin, Cout, K, T, V;
  int64_t tv() const { return T * V; }
};

// x (B, G*Cin, T, V); weight (G*K*Cout, Cin) or (G*K*Cout, Cin, 1, 1); bias (G*K*Cout) or None;
// A (K, V, V); importance (G, K, V, V), (K, V, V) when G == 1, or None.
inline GraphConvDims graph_conv_dims(const torch::stable::Tensor& x, const torch::stable::Tensor& weight,
                                     const std::optional<torch::stable::Tensor>& bias, const torch::stable::Tensor& A,
                                     const std::optional<torch::stable::Tensor>& importance, int64_t groups) {
  STD_TORCH_CHECK(x.dim() == 4, "skelfast::graph_conv: x must be (B, G*Cin, T, V), got rank ", x.dim());
  STD_TORCH_CHECK(groups >= 1, "skelfast::graph_conv: groups must be >= 1");
  STD_TORCH_CHECK(A.dim() == 3 && A.size(1) == A.size(2), "skelfast::graph_conv: A must be (K, V, V)");
  // K = 0 would divide by zero below (SIGFPE ends the process instead of raising).
  STD_TORCH_CHECK(A.size(0) >= 1, "skelfast::graph_conv: A must have K >= 1 subsets, got K=0");
  GraphConvDims d{};
  d.B = x.size(0);
  d.G = groups;
  d.T = x.size(2);
  d.V = x.size(3);
  d.K = A.size(0);
  STD_TORCH_CHECK(A.size(1) == d.V, "skelfast::graph_conv: A is for V=", A.size(1), " joints but x has V=", d.V);
  STD_TORCH_CHECK(x.size(1) % d.G == 0, "skelfast::graph_conv: x channels ", x.size(1), " not divisible by groups");
  d.Cin = x.size(1) / d.G;
  STD_TORCH_CHECK(weight.dim() == 2 || (weight.dim() == 4 && weight.size(2) == 1 && weight.size(3) == 1),
                  "skelfast::graph_conv: weight must be (G*K*Cout, Cin) or (G*K*Cout, Cin, 1, 1)");
  STD_TORCH_CHECK(weight.size(1) == d.Cin, "skelfast::graph_conv: weight has Cin=", weight.size(1), ", x has ", d.Cin);
  STD_TORCH_CHECK(weight.size(0) % (d.G * d.K) == 0, "skelfast::graph_conv: weight rows must be G*K*Cout");
  d.Cout = weight.size(0) / (d.G * d.K);
  STD_TORCH_CHECK(weight.scalar_type() == x.scalar_type(), "skelfast::graph_conv: weight must have x's dtype");
  if (bias.has_value()) {
    STD_TORCH_CHECK(bias->dim() == 1 && bias->size(0) == weight.size(0), "skelfast::graph_conv: bias must be (G*K*Cout,)");
    STD_TORCH_CHECK(bias->scalar_type() == x.scalar_type(), "skelfast::graph_conv: bias must have x's dtype");
  }
  if (importance.has_value()) {
    const auto& e = *importance;
    const bool full = e.dim() == 4 && e.size(0) == d.G && e.size(1) == d.K && e.size(2) == d.V && e.size(3) == d.V;
    const bool shared = d.G == 1 && e.dim() == 3 && e.size(0) == d.K && e.size(1) == d.V && e.size(2) == d.V;
    STD_TORCH_CHECK(full || shared, "skelfast::graph_conv: importance must be (G, K, V, V) (or (K, V, V) if G == 1)");
  }
  STD_TORCH_CHECK(d.K * d.V <= 4096, "skelfast::graph_conv: K*V must be <= 4096");
  return d;
}

// Non-zero entries of A and the per-group values ae[g*nnz + i] = A[k,v,w] * E[g,k,v,w], computed
// on the host in the accumulation type Acc (A and E are tiny). A and E must be CPU tensors here;
// the CUDA binding copies them to the host first.
template <typename Acc>
struct HostEdges {
  std::vector<GraphEntry> entries;
  std::vector<Acc> ae;  // (G, nnz)
  int nnz() const { return static_cast<int>(entries.size()); }
};

template <typename Acc>
HostEdges<Acc> host_edges(const torch::stable::Tensor& A_acc, const std::optional<torch::stable::Tensor>& E_acc,
                          const GraphConvDims& d) {
  HostEdges<Acc> h;
  const Acc* a = static_cast<const Acc*>(A_acc.const_data_ptr());
  const Acc* e = E_acc.has_value() ? static_cast<const Acc*>(E_acc->const_data_ptr()) : nullptr;
  const int64_t kvv = d.K * d.V * d.V;
  for (int64_t i = 0; i < kvv; ++i)
    if (a[i] != Acc(0))
      h.entries.push_back({static_cast<int32_t>(i / (d.V * d.V)), static_cast<int32_t>((i / d.V) % d.V),
                           static_cast<int32_t>(i % d.V)});
  h.ae.resize(static_cast<size_t>(d.G) * h.entries.size());
  for (int64_t g = 0; g < d.G; ++g)
    for (size_t j = 0; j < h.entries.size(); ++j) {
      const GraphEntry& en = h.entries[j];
      const int64_t idx = (static_cast<int64_t>(en.k) * d.V + en.v) * d.V + en.w;
      h.ae[g * h.entries.size() + j] = a[idx] * (e ? e[g * kvv + idx] : Acc(1));
    }
  return h;
}

}  // namespace skelfast
