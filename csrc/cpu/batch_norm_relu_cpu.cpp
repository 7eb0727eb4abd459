// CPU kernels of skelfast::batch_norm_relu and its backward. Eager PyTorch runs a block's
// BatchNorm, dropout, residual add and ReLU as separate passes over the activation (BN forward
// writes its output and the epilogue reads it back; BN backward re-reads the gradient the ReLU
// backward just wrote). Here the forward is a statistics pass (training) plus one pass that
// normalises, drops, adds and rectifies; the backward is a reduction pass (the ReLU and dropout
// gradient with the BN sums) plus one pass writing grad_x. Layer: kernel + binding (stable ABI).
//
// Reductions are deterministic: rows are split into a fixed number of blocks whatever the thread
// count, each block sums in double, and the blocks are added in order.
#include <torch/csrc/stable/library.h>
#include <torch/csrc/stable/ops.h>
#include <torch/csrc/stable/tensor.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <optional>
#include <tuple>
#include <type_traits>
#include <vector>

#include "skelfast/cpu_clones.h"
#include "skelfast/cpu_elementwise.h"
#include "skelfast/dropout_math.h"

namespace skelfast {
namespace {

using torch::stable::Tensor;
using torch::headeronly::ScalarType;

constexpr int64_t kBlocks = 64;           // reduction blocks (fixed: results independent of threads)
constexpr int64_t kGrainElems = 32768;    // elements per parallel task in the elementwise passes

// x in memory order as rows of `inner` elements. `all_channels`: a row holds the C channels of
// one position (channels-last, or 2-d (B, C)); otherwise a row lies in channel
// (r / rows_per_channel) % C (contiguous (B, C, ..., W): rows of W).
struct Geometry {
  bool all_channels = true;
  int64_t C = 0, M = 0, rows = 0, inner = 0, rows_per_channel = 1;
  int64_t channel(int64_t r) const { return (r / rows_per_channel) % C; }
};

Geometry geometry(const Tensor& x) {
  Geometry g;
  g.C = x.size(1);
  const int64_t n = x.numel();
  g.M = g.C > 0 ? n / g.C : 0;
  g.all_channels = x.dim() == 2 || channels_last_order(x);
  if (g.all_channels) {
    g.inner = g.C;
  } else {
    g.inner = x.size(x.dim() - 1);
    for (int64_t d = 2; d < x.dim() - 1; ++d) g.rows_per_channel *= x.size(d);
  }
  g.rows = g.inner > 0 ? n / g.inner : 0;
  return g;
}

// Per-channel sums over all rows: fn(r0, r1, partial) adds the sums of rows [r0, r1) into `width`
// zeroed doubles; the kBlocks fixed row ranges run in parallel and their partials are added in
// block order. Returns the `width` totals (zeros when there are no rows).
template <typename Fn>
std::vector<double> blocked_sums(int64_t rows, int64_t width, Fn&& fn) {
  const int64_t nb = std::min(kBlocks, rows);
  std::vector<double> partial(nb * width, 0.0), total(width, 0.0);
  torch::stable::parallel_for(0, nb, 1, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) fn(rows * b / nb, rows * (b + 1) / nb, partial.data() + b * width);
  });
  for (int64_t b = 0; b < nb; ++b)
    for (int64_t c = 0; c < width; ++c) total[c] += partial[b * width + c];
  return total;
}

// ------------------------------------------------------------------------------------------------
// Forward
// ------------------------------------------------------------------------------------------------

// s1[c] += sum (x - shift[c]), s2[c] += sum (x - shift[c])^2 over rows [r0, r1): a per-channel shift
// (one of the channel's values) keeps the one-pass variance free of cancellation.
template <typename T>
SKELFAST_CPU_CLONES void stats_rows(const T* x, const Geometry g, const T* shift, int64_t r0, int64_t r1, double* s1,
                                    double* s2) {
  for (int64_t r = r0; r < r1; ++r) {
    const T* row = x + r * g.inner;
    if (g.all_channels) {
      for (int64_t c = 0; c < g.C; ++c) {
        const double v = static_cast<double>(row[c]) - static_cast<double>(shift[c]);
        s1[c] += v;
        s2[c] += v * v;
      }
    } else {
      const int64_t c = g.channel(r);
      const double sh = static_cast<double>(shift[c]);
      double a = 0.0, b = 0.0;
      for (int64_t j = 0; j < g.inner; ++j) {
        const double v = static_cast<double>(row[j]) - sh;
        a += v;
        b += v * v;
      }
      s1[c] += a;
      s2[c] += b;
    }
  }
}

// out = relu(dropout(x * scale[c] + shift[c]) + res) over rows [r0, r1).
template <typename T, bool kDrop, bool kResidual>
SKELFAST_CPU_CLONES void apply_rows(const T* x, const T* res, T* out, const T* scale, const T* shift, const Geometry g,
                                    const DropoutParams d, int64_t r0, int64_t r1) {
  const T keep = static_cast<T>(d.scale);
  for (int64_t r = r0; r < r1; ++r) {
    const int64_t i0 = r * g.inner;
    const int64_t c0 = g.all_channels ? 0 : g.channel(r);
    for (int64_t j = 0; j < g.inner; ++j) {
      const int64_t i = i0 + j, c = g.all_channels ? j : c0;
      T v = x[i] * scale[c] + shift[c];
      if constexpr (kDrop) v *= dropout_weight<T>(d, static_cast<uint64_t>(i), keep);
      if constexpr (kResidual) v += res[i];
      out[i] = v < T(0) ? T(0) : v;  // NaN passes through, as torch.relu
    }
  }
}

Tensor channel_vector(const Tensor& like, const std::vector<double>& v) {
  Tensor t = torch::stable::new_empty(like, {static_cast<int64_t>(v.size())});
  dispatch_float(like.scalar_type(), "skelfast::batch_norm_relu", [&](auto tag) {
    using T = decltype(tag);
    T* p = t.mutable_data_ptr<T>();
    for (size_t c = 0; c < v.size(); ++c) p[c] = static_cast<T>(v[c]);
  });
  return t;
}

std::vector<double> read_vector(const Tensor& t) {
  std::vector<double> v(t.numel());
  dispatch_float(t.scalar_type(), "skelfast::batch_norm_relu", [&](auto tag) {
    using T = decltype(tag);
    const T* p = t.const_data_ptr<T>();
    for (size_t c = 0; c < v.size(); ++c) v[c] = static_cast<double>(p[c]);
  });
  return v;
}

void check_channel_vector(const Tensor& t, const Tensor& x, const char* what, const char* op) {
  STD_TORCH_CHECK(t.dim() == 1 && t.size(0) == x.size(1) && t.scalar_type() == x.scalar_type() && t.is_contiguous(),
                  op, ": ", what, " must be a contiguous (C,) tensor with x's dtype, C = ", x.size(1));
}

std::tuple<Tensor, Tensor, Tensor, Tensor> batch_norm_relu_cpu(Tensor x, Tensor weight, Tensor bias,
                                                               std::optional<Tensor> mean_in,
                                                               std::optional<Tensor> var_in,
                                                               std::optional<Tensor> residual, double eps, double p,
                                                               int64_t seed) {
  const char* op = "skelfast::batch_norm_relu";
  check_p(p, op);
  STD_TORCH_CHECK(x.dim() >= 2, op, ": x must have a channel dimension (B, C, ...), got rank ", x.dim());
  STD_TORCH_CHECK(dense_layout(x), op, ": x must be contiguous or channels-last");
  STD_TORCH_CHECK(std::isfinite(eps) && eps >= 0.0, op, ": eps must be finite and >= 0, got ", eps);
  check_channel_vector(weight, x, "weight", op);
  check_channel_vector(bias, x, "bias", op);
  STD_TORCH_CHECK(mean_in.has_value() == var_in.has_value(), op, ": mean and var must be given together");
  if (mean_in.has_value()) {
    check_channel_vector(*mean_in, x, "mean", op);
    check_channel_vector(*var_in, x, "var", op);
  }
  if (residual.has_value()) {
    STD_TORCH_CHECK(residual->scalar_type() == x.scalar_type(), op, ": residual must have x's dtype");
    STD_TORCH_CHECK(same_geometry(x, *residual), op, ": residual must have x's shape and strides");
  }
  const Geometry g = geometry(x);
  const bool batch_stats = !mean_in.has_value();
  STD_TORCH_CHECK(!batch_stats || g.M > 0, op, ": batch statistics need at least one value per channel");
  Tensor out = torch::stable::empty_like(x);
  std::vector<double> mean(g.C), var(g.C), invstd(g.C), scale(g.C), shift(g.C);
  if (batch_stats) {
    dispatch_float(x.scalar_type(), op, [&](auto tag) {
      using T = decltype(tag);
      const T* xp = x.const_data_ptr<T>();
      std::vector<T> ref(g.C);  // each channel's first value (memory order)
      for (int64_t c = 0; c < g.C; ++c) ref[c] = g.all_channels ? xp[c] : xp[c * g.rows_per_channel * g.inner];
      const std::vector<double> s = blocked_sums(g.rows, 2 * g.C, [&](int64_t r0, int64_t r1, double* ps) {
        stats_rows<T>(xp, g, ref.data(), r0, r1, ps, ps + g.C);
      });
      for (int64_t c = 0; c < g.C; ++c) {
        const double m1 = s[c] / g.M;
        mean[c] = static_cast<double>(ref[c]) + m1;
        // clamp rounding below zero, but keep NaN (std::max(0, NaN) is 0): a non-finite batch
        // gives a NaN running variance, as F.batch_norm does
        const double v = s[g.C + c] / g.M - m1 * m1;
        var[c] = v < 0.0 ? 0.0 : v;
      }
    });
  } else {
    mean = read_vector(*mean_in);
    var = read_vector(*var_in);
  }
  const std::vector<double> w = read_vector(weight), bvec = read_vector(bias);
  for (int64_t c = 0; c < g.C; ++c) {
    invstd[c] = 1.0 / std::sqrt(var[c] + eps);
    scale[c] = w[c] * invstd[c];
    shift[c] = bvec[c] - mean[c] * scale[c];
  }
  if (x.numel() > 0) {
    const DropoutParams d = dropout_params(p, seed);
    dispatch_float(x.scalar_type(), op, [&](auto tag) {
      using T = decltype(tag);
      const std::vector<T> sc(scale.begin(), scale.end()), sh(shift.begin(), shift.end());
      const T* xp = x.const_data_ptr<T>();
      const T* rp = residual.has_value() ? residual->const_data_ptr<T>() : nullptr;
      T* o = out.mutable_data_ptr<T>();
      torch::stable::parallel_for(0, g.rows, std::max<int64_t>(1, kGrainElems / g.inner), [&](int64_t r0, int64_t r1) {
        if (d.active && rp) apply_rows<T, true, true>(xp, rp, o, sc.data(), sh.data(), g, d, r0, r1);
        else if (d.active) apply_rows<T, true, false>(xp, rp, o, sc.data(), sh.data(), g, d, r0, r1);
        else if (rp) apply_rows<T, false, true>(xp, rp, o, sc.data(), sh.data(), g, d, r0, r1);
        else apply_rows<T, false, false>(xp, rp, o, sc.data(), sh.data(), g, d, r0, r1);
      });
    });
  }
  return {out, channel_vector(x, mean), channel_vector(x, invstd), channel_vector(x, var)};
}

// ------------------------------------------------------------------------------------------------
// Backward. gz = grad_out * [out > 0] * dropout multiplier is the gradient at BN's output.
//   grad_bias[c] = sum gz, grad_weight[c] = invstd * sum gz (x - mean)
//   grad_x = w invstd (gz - [batch] (sum gz / M + (x - mean) invstd^2 sum gz (x - mean) / M))
// ------------------------------------------------------------------------------------------------

// Pass 1 over rows [r0, r1): s1[c] += sum gz, s2[c] += sum gz (x - mean[c]); grad_residual = the
// ReLU gradient when kResidualGrad. kAll: rows hold all channels (Geometry::all_channels).
template <typename T, bool kAll, bool kDrop, bool kResidualGrad>
SKELFAST_CPU_CLONES void reduce_rows(const T* grad, const MemoryOrder m, const T* out, const T* x, const T* mean,
                                     T* gres, const Geometry g, const DropoutParams d, int64_t r0, int64_t r1,
                                     double* s1, double* s2, T* buf) {
  for (int64_t r = r0; r < r1; ++r) {
    const int64_t i0 = r * g.inner;
    relu_dropout_grad_row<T, kDrop, kResidualGrad>(grad + m.grad_offset(r), out, gres, buf, d, i0, g.inner);
    const T* xr = x + i0;
    if constexpr (kAll) {
      for (int64_t c = 0; c < g.inner; ++c) {
        s1[c] += static_cast<double>(buf[c]);
        s2[c] += static_cast<double>(buf[c]) * static_cast<double>(xr[c] - mean[c]);
      }
    } else {
      const int64_t c = g.channel(r);
      const T mc = mean[c];
      double a = 0.0, b = 0.0;
      for (int64_t j = 0; j < g.inner; ++j) {
        a += static_cast<double>(buf[j]);
        b += static_cast<double>(buf[j]) * static_cast<double>(xr[j] - mc);
      }
      s1[c] += a;
      s2[c] += b;
    }
  }
}

// Pass 2: grad_x = ka[c] gz + kb[c] + kc[c] (x - mean[c]).
template <typename T, bool kAll, bool kDrop>
SKELFAST_CPU_CLONES void grad_x_rows(const T* grad, const MemoryOrder m, const T* out, const T* x, const T* mean,
                                     const T* ka, const T* kb, const T* kc, T* gx, const Geometry g,
                                     const DropoutParams d, int64_t r0, int64_t r1, T* buf) {
  for (int64_t r = r0; r < r1; ++r) {
    const int64_t i0 = r * g.inner;
    relu_dropout_grad_row<T, kDrop, false>(grad + m.grad_offset(r), out, nullptr, buf, d, i0, g.inner);
    const T* xr = x + i0;
    T* gr = gx + i0;
    if constexpr (kAll) {
      for (int64_t c = 0; c < g.inner; ++c) gr[c] = ka[c] * buf[c] + kb[c] + kc[c] * (xr[c] - mean[c]);
    } else {
      const int64_t c = g.channel(r);
      const T a = ka[c], b = kb[c], k = kc[c], mc = mean[c];
      for (int64_t j = 0; j < g.inner; ++j) gr[j] = a * buf[j] + b + k * (xr[j] - mc);
    }
  }
}

// Calls fn(kAll, kDrop, kResidualGrad) as compile-time constants.
template <typename Fn>
void dispatch_flags(bool all, bool drop, bool res, Fn&& fn) {
  auto with_res = [&](auto a, auto dr) {
    if (res) fn(a, dr, std::true_type{}); else fn(a, dr, std::false_type{});
  };
  auto with_drop = [&](auto a) {
    if (drop) with_res(a, std::true_type{}); else with_res(a, std::false_type{});
  };
  if (all) with_drop(std::true_type{}); else with_drop(std::false_type{});
}

std::tuple<Tensor, Tensor, Tensor, Tensor> batch_norm_relu_backward_cpu(Tensor grad_out, Tensor out, Tensor x,
                                                                        Tensor weight, Tensor mean, Tensor invstd,
                                                                        bool batch_stats, double p, int64_t seed,
                                                                        bool residual_grad) {
  const char* op = "skelfast::batch_norm_relu_backward";
  check_p(p, op);
  STD_TORCH_CHECK(out.dim() >= 2 && out.dim() <= 8, op, ": out must have 2 to 8 dimensions");
  STD_TORCH_CHECK(dense_layout(out), op, ": out must be contiguous or channels-last");
  STD_TORCH_CHECK(x.scalar_type() == out.scalar_type() && same_geometry(x, out), op,
                  ": x must have out's dtype, shape and strides");
  STD_TORCH_CHECK(grad_out.scalar_type() == out.scalar_type() && grad_out.dim() == out.dim(), op,
                  ": grad_out must have out's dtype and shape");
  for (int64_t k = 0; k < out.dim(); ++k)
    STD_TORCH_CHECK(grad_out.size(k) == out.size(k), op, ": grad_out must have out's shape");
  check_channel_vector(weight, out, "weight", op);
  check_channel_vector(mean, out, "mean", op);
  check_channel_vector(invstd, out, "invstd", op);
  const Geometry g = geometry(out);
  Tensor gx = torch::stable::empty_like(out);
  Tensor gres = residual_grad ? torch::stable::empty_like(out) : torch::stable::new_empty(out, {0});
  std::vector<double> s;  // (sum gz, sum gz (x - mean)) per channel
  const std::vector<double> w = read_vector(weight), is = read_vector(invstd);
  const MemoryOrder m = memory_order(out, grad_out);
  STD_TORCH_CHECK(m.inner() == 1 || out.numel() == 0 || m.grad_stride[m.dims - 1] == 1, op,
                  ": grad_out must be contiguous along out's innermost memory dimension");
  const DropoutParams d = dropout_params(p, seed);
  dispatch_float(out.scalar_type(), op, [&](auto tag) {
    using T = decltype(tag);
    const T* gp = grad_out.const_data_ptr<T>();
    const T* o = out.const_data_ptr<T>();
    const T* xp = x.const_data_ptr<T>();
    const T* mp = mean.const_data_ptr<T>();
    T* grp = residual_grad ? gres.mutable_data_ptr<T>() : nullptr;
    s = blocked_sums(g.rows, 2 * g.C, [&](int64_t r0, int64_t r1, double* ps) {
      std::vector<T> buf(g.inner);
      dispatch_flags(g.all_channels, d.active, grp != nullptr, [&](auto all, auto drop, auto res) {
        reduce_rows<T, decltype(all)::value, decltype(drop)::value, decltype(res)::value>(
            gp, m, o, xp, mp, grp, g, d, r0, r1, ps, ps + g.C, buf.data());
      });
    });
    std::vector<T> ka(g.C), kb(g.C), kc(g.C);
    for (int64_t c = 0; c < g.C; ++c) {
      ka[c] = static_cast<T>(w[c] * is[c]);
      kb[c] = batch_stats ? static_cast<T>(-w[c] * is[c] * s[c] / g.M) : T(0);
      kc[c] = batch_stats ? static_cast<T>(-w[c] * is[c] * is[c] * is[c] * s[g.C + c] / g.M) : T(0);
    }
    T* gxp = gx.mutable_data_ptr<T>();
    torch::stable::parallel_for(0, g.rows, std::max<int64_t>(1, kGrainElems / std::max<int64_t>(1, g.inner)),
                                [&](int64_t r0, int64_t r1) {
      std::vector<T> buf(g.inner);
      dispatch_flags(g.all_channels, d.active, false, [&](auto all, auto drop, auto) {
        grad_x_rows<T, decltype(all)::value, decltype(drop)::value>(gp, m, o, xp, mp, ka.data(), kb.data(),
                                                                     kc.data(), gxp, g, d, r0, r1, buf.data());
      });
    });
  });
  const std::vector<double> gb(s.begin(), s.begin() + g.C);
  std::vector<double> gw(g.C);
  for (int64_t c = 0; c < g.C; ++c) gw[c] = s[g.C + c] * is[c];
  return {gx, channel_vector(out, gw), channel_vector(out, gb), gres};
}

}  // namespace
}  // namespace skelfast

STABLE_TORCH_LIBRARY_IMPL(skelfast, CPU, m) {
  m.impl("batch_norm_relu", TORCH_BOX(&skelfast::batch_norm_relu_cpu));
  m.impl("batch_norm_relu_backward", TORCH_BOX(&skelfast::batch_norm_relu_backward_cpu));
}
