// CPU kernels of skelfast::modalities and its backward, parallel over sequences / frames.
// Layer: kernel + binding (stable ABI); the maths is csrc/include/skelfast/modalities_math.h.
#include <torch/csrc/stable/library.h>
#include <torch/csrc/stable/ops.h>
#include <torch/csrc/stable/tensor.h>
#include <torch/headeronly/util/BFloat16.h>
#include <torch/headeronly/util/Half.h>

#include "../modalities_common.h"
#include "modalities_cpu_forward.h"
#include "skelfast/cpu_clones.h"

namespace skelfast {
namespace {

using torch::stable::Tensor;
using torch::headeronly::ScalarType;

// The forward over a range of (n, m) sequences, one clone per ISA (skelfast/cpu_clones.h), so the
// time loops vectorise on AVX2/AVX-512.
#define SKELFAST_FORWARD_RANGE(NAME, T, A)                                                                          \
  SKELFAST_CPU_CLONES void NAME(                                                                                    \
      const ModalitiesParams& p, const T* x, const A* s, T* o, int64_t begin, int64_t end) {                      \
    cpu::SeqBuffers<A> buffers;                                                                                     \
    for (int64_t i = begin; i < end; ++i) cpu::modalities_forward_sequence_simd<T, A>(p, x, s, o, i, buffers);     \
  }
SKELFAST_FORWARD_RANGE(forward_range_f32, float, float)
SKELFAST_FORWARD_RANGE(forward_range_f64, double, double)
SKELFAST_FORWARD_RANGE(forward_range_f16, c10::Half, float)
SKELFAST_FORWARD_RANGE(forward_range_bf16, c10::BFloat16, float)
#undef SKELFAST_FORWARD_RANGE

inline void forward_range(const ModalitiesParams& p, const float* x, const float* s, float* o, int64_t b, int64_t e) { forward_range_f32(p, x, s, o, b, e); }
inline void forward_range(const ModalitiesParams& p, const double* x, const double* s, double* o, int64_t b, int64_t e) { forward_range_f64(p, x, s, o, b, e); }
inline void forward_range(const ModalitiesParams& p, const c10::Half* x, const float* s, c10::Half* o, int64_t b, int64_t e) { forward_range_f16(p, x, s, o, b, e); }
inline void forward_range(const ModalitiesParams& p, const c10::BFloat16* x, const float* s, c10::BFloat16* o, int64_t b, int64_t e) { forward_range_bf16(p, x, s, o, b, e); }

template <typename Fn>
void dispatch_float_types(ScalarType st, Fn&& fn) {
  switch (st) {
    case ScalarType::Float: fn(float{}, float{}); break;
    case ScalarType::Double: fn(double{}, double{}); break;
    case ScalarType::Half: fn(c10::Half{}, float{}); break;
    case ScalarType::BFloat16: fn(c10::BFloat16{}, float{}); break;
    default: STD_TORCH_CHECK(false, "skelfast::modalities: x must be float16, bfloat16, float32 or float64");
  }
}

Tensor modalities_cpu(Tensor x, std::optional<Tensor> scale, std::vector<int64_t> select,
                      std::vector<int64_t> bone_parent, std::vector<int64_t> axis_partner,
                      std::vector<int64_t> normal) {
  ModalitiesCall c = prepare_modalities_forward(x, scale, select, bone_parent, axis_partner, normal);
  const ModalitiesParams& p = c.p;
  if (p.N * p.T * p.V * p.M == 0) return c.out;
  dispatch_float_types(c.x.scalar_type(), [&](auto t_tag, auto a_tag) {
    using T = decltype(t_tag);
    using A = decltype(a_tag);
    const T* xp = static_cast<const T*>(c.x.const_data_ptr());
    const A* sp = c.scale_ptr<A>();
    T* op = static_cast<T*>(c.out.mutable_data_ptr());
    // One task per (n, m) sequence, computed in time-contiguous buffers (modalities_cpu_forward.h).
    torch::stable::parallel_for(0, p.N * p.M, 1, [&](int64_t begin, int64_t end) {
      forward_range(p, xp, sp, op, begin, end);
    });
  });
  return c.out;
}

Tensor modalities_backward_cpu(Tensor grad_out, Tensor x, std::optional<Tensor> scale, std::vector<int64_t> select,
                               std::vector<int64_t> bone_parent, std::vector<int64_t> axis_partner,
                               std::vector<int64_t> normal) {
  ModalitiesCall c = prepare_modalities_backward(grad_out, x, scale, select, bone_parent, axis_partner, normal);
  const ModalitiesParams& p = c.p;
  const int64_t frames = p.N * p.T * p.M;
  if (frames == 0 || p.V == 0) return c.out;
  dispatch_float_types(c.x.scalar_type(), [&](auto t_tag, auto a_tag) {
    using T = decltype(t_tag);
    using A = decltype(a_tag);
    const T* xp = static_cast<const T*>(c.x.const_data_ptr());
    const T* gp = static_cast<const T*>(c.grad->const_data_ptr());
    const A* sp = c.scale_ptr<A>();
    T* op = static_cast<T*>(c.out.mutable_data_ptr());
    torch::stable::parallel_for(0, frames, 64, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) modalities_backward_frame<T, A>(p, xp, sp, gp, op, i);
    });
  });
  return c.out;
}

}  // namespace
}  // namespace skelfast

STABLE_TORCH_LIBRARY_IMPL(skelfast, CPU, m) {
  m.impl("modalities", TORCH_BOX(&skelfast::modalities_cpu));
  m.impl("modalities_backward", TORCH_BOX(&skelfast::modalities_backward_cpu));
}
