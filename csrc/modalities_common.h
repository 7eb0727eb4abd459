// Argument checks and ModalitiesParams construction shared by the CPU and CUDA bindings.
// Layer: binding helper (stable ABI headers only).
#pragma once

#include <torch/csrc/stable/ops.h>
#include <torch/csrc/stable/tensor.h>
#include <torch/headeronly/util/Exception.h>

#include <optional>
#include <vector>

#include "skelfast/modalities_math.h"

namespace skelfast {

inline ModalitiesParams make_modalities_params(const torch::stable::Tensor& x, const std::vector<int64_t>& select,
                                               const std::vector<int64_t>& bone_parent,
                                               const std::vector<int64_t>& axis_partner,
                                               const std::vector<int64_t>& normal) {
  STD_TORCH_CHECK(x.dim() == 5, "skelfast::modalities: x must have shape (N, 3, T, V, M), got rank ", x.dim());
  STD_TORCH_CHECK(x.size(1) == 3, "skelfast::modalities: x must have C=3, got ", x.size(1));
  ModalitiesParams p{};
  p.N = x.size(0);
  p.T = x.size(2);
  p.V = x.size(3);
  p.M = x.size(4);
  STD_TORCH_CHECK(p.V <= kMaxJoints, "skelfast::modalities: at most ", kMaxJoints, " joints supported, got V=", p.V);
  STD_TORCH_CHECK(static_cast<int64_t>(bone_parent.size()) == p.V && static_cast<int64_t>(axis_partner.size()) == p.V,
                  "skelfast::modalities: bone_parent and axis_partner must have V=", p.V, " entries");
  for (int64_t v = 0; v < p.V; ++v) {
    STD_TORCH_CHECK(bone_parent[v] >= 0 && bone_parent[v] < p.V && axis_partner[v] >= 0 && axis_partner[v] < p.V,
                    "skelfast::modalities: topology index out of range at joint ", v);
    p.bone_parent[v] = static_cast<int16_t>(bone_parent[v]);
    p.axis_partner[v] = static_cast<int16_t>(axis_partner[v]);
  }
  STD_TORCH_CHECK(normal.empty() || normal.size() == 4, "skelfast::modalities: normal must be [] or [joint, a, b, c]");
  p.normal_joint = -1;
  if (normal.size() == 4) {
    for (int64_t j : normal) STD_TORCH_CHECK(j >= 0 && j < p.V, "skelfast::modalities: normal joint index out of range");
    p.normal_joint = static_cast<int32_t>(normal[0]);
    p.normal_a = static_cast<int32_t>(normal[1]);
    p.normal_b = static_cast<int32_t>(normal[2]);
    p.normal_c = static_cast<int32_t>(normal[3]);
  }
  STD_TORCH_CHECK(!select.empty() && select.size() <= kNumModalities, "skelfast::modalities: select must list 1..6 modalities");
  for (int i = 0; i < kNumModalities; ++i) p.slot[i] = -1;
  for (size_t g = 0; g < select.size(); ++g) {
    STD_TORCH_CHECK(select[g] >= 0 && select[g] < kNumModalities, "skelfast::modalities: modality id out of range: ", select[g]);
    STD_TORCH_CHECK(p.slot[select[g]] < 0, "skelfast::modalities: modality id listed twice: ", select[g]);
    p.slot[select[g]] = static_cast<int32_t>(g);
  }
  p.num_out = static_cast<int32_t>(select.size());
  return p;
}

// scale: (N,) in the accumulation dtype (float64 for float64 x, else float32), on x's device.
inline void check_modalities_scale(const torch::stable::Tensor& x, const std::optional<torch::stable::Tensor>& scale) {
  if (!scale.has_value()) return;
  const auto& s = *scale;
  const auto want = x.scalar_type() == torch::headeronly::ScalarType::Double ? torch::headeronly::ScalarType::Double
                                                                              : torch::headeronly::ScalarType::Float;
  STD_TORCH_CHECK(s.scalar_type() == want, "skelfast::modalities: scale must be float32 (float64 for float64 x)");
  STD_TORCH_CHECK(s.dim() == 1 && s.size(0) == x.size(0), "skelfast::modalities: scale must have shape (N,)");
  STD_TORCH_CHECK(s.get_device_index() == x.get_device_index() && s.is_cpu() == x.is_cpu(),
                  "skelfast::modalities: scale must be on x's device");
}

// Checked, contiguous inputs and the allocated result of one forward or backward call; shared by
// the CPU and CUDA bindings so both validate and lay out memory identically.
struct ModalitiesCall {
  ModalitiesParams p;
  torch::stable::Tensor x;                     // contiguous (N, 3, T, V, M)
  std::optional<torch::stable::Tensor> scale;  // contiguous (N,) or none
  std::optional<torch::stable::Tensor> grad;   // contiguous (N, G, 3, T, V, M), backward only
  torch::stable::Tensor out;                   // forward: (N, G, 3, T, V, M); backward: like x

  template <typename A>
  const A* scale_ptr() const { return scale ? static_cast<const A*>(scale->const_data_ptr()) : nullptr; }
};

inline ModalitiesCall prepare_modalities_forward(const torch::stable::Tensor& x,
                                                 const std::optional<torch::stable::Tensor>& scale,
                                                 const std::vector<int64_t>& select, const std::vector<int64_t>& bone_parent,
                                                 const std::vector<int64_t>& axis_partner, const std::vector<int64_t>& normal) {
  ModalitiesCall c{make_modalities_params(x, select, bone_parent, axis_partner, normal), torch::stable::contiguous(x),
                   std::nullopt, std::nullopt, torch::stable::Tensor()};
  check_modalities_scale(x, scale);
  if (scale) c.scale = torch::stable::contiguous(*scale);
  c.out = torch::stable::new_empty(c.x, {c.p.N, c.p.num_out, 3, c.p.T, c.p.V, c.p.M});
  return c;
}

inline ModalitiesCall prepare_modalities_backward(const torch::stable::Tensor& grad_out, const torch::stable::Tensor& x,
                                                  const std::optional<torch::stable::Tensor>& scale,
                                                  const std::vector<int64_t>& select, const std::vector<int64_t>& bone_parent,
                                                  const std::vector<int64_t>& axis_partner, const std::vector<int64_t>& normal) {
  ModalitiesCall c = prepare_modalities_forward(x, scale, select, bone_parent, axis_partner, normal);
  const ModalitiesParams& p = c.p;
  STD_TORCH_CHECK(grad_out.dim() == 6 && grad_out.size(0) == p.N && grad_out.size(1) == p.num_out &&
                      grad_out.size(2) == 3 && grad_out.size(3) == p.T && grad_out.size(4) == p.V &&
                      grad_out.size(5) == p.M && grad_out.scalar_type() == x.scalar_type(),
                  "skelfast::modalities_backward: grad_out must have shape (N, G, 3, T, V, M) and x's dtype");
  c.grad = torch::stable::contiguous(grad_out);
  c.out = torch::stable::new_empty(c.x, {p.N, 3, p.T, p.V, p.M});
  return c;
}

}  // namespace skelfast
