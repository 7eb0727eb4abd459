// CPU kernels of skelfast::graph_conv and its backward: the sparse graph aggregation and the
// layout/bias epilogues in parallel loops, then the 1x1 projection ("post" ordering: aggregate x
// over the graph, then project; see csrc/include/skelfast/graph_conv_math.h). Channels-last input
// (what the models use): one grouped oneDNN 1x1 convolution for all groups (stable_aten.h);
// contiguous input: one BLAS GEMM per group through torch::stable::matmul. Layer: kernel + binding
// (stable ABI only).
#include <torch/csrc/stable/library.h>
#include <torch/csrc/stable/ops.h>
#include <torch/csrc/stable/tensor.h>
#include <torch/headeronly/util/BFloat16.h>
#include <torch/headeronly/util/Half.h>

#include <algorithm>
#include <tuple>
#include <vector>

#include "skelfast/cpu_clones.h"
#include "skelfast/graph_conv_binding.h"
#include "skelfast/stable_aten.h"

namespace skelfast {
namespace {

using torch::stable::Tensor;
using torch::headeronly::ScalarType;

template <typename Fn>
void dispatch_gc_types(ScalarType st, Fn&& fn) {
  switch (st) {
    case ScalarType::Float: fn(float{}, float{}); break;
    case ScalarType::Double: fn(double{}, double{}); break;
    case ScalarType::Half: fn(c10::Half{}, float{}); break;
    case ScalarType::BFloat16: fn(c10::BFloat16{}, float{}); break;
    default: STD_TORCH_CHECK(false, "skelfast::graph_conv: x must be float16, bfloat16, float32 or float64");
  }
}

// Accumulation dtype and the (A, E) pair converted to it, contiguous.
std::pair<Tensor, std::optional<Tensor>> edges_acc(const Tensor& A, const std::optional<Tensor>& importance,
                                                   ScalarType acc) {
  Tensor a = torch::stable::contiguous(torch::stable::to(A, acc));
  std::optional<Tensor> e;
  if (importance.has_value()) e = torch::stable::contiguous(torch::stable::to(*importance, acc));
  return {a, e};
}

// Wp (G, Cout, K*Cin) with Wp[g, c, k*Cin + ci] = weight[(g*K + k)*Cout + c, ci].
Tensor packed_weight(const Tensor& weight, const GraphConvDims& d) {
  Tensor w = torch::stable::reshape(weight, {d.G, d.K, d.Cout, d.Cin});
  return torch::stable::reshape(torch::stable::contiguous(torch::stable::transpose(w, 1, 2)), {d.G, d.Cout, d.K * d.Cin});
}

// z (K*Cin, B*T*V) of group g from x (B, G*Cin, T, V).
template <typename T, typename Acc>
void aggregate_group(const T* x, T* z, const GraphConvDims& d, int64_t g, const HostEdges<Acc>& h) {
  const int64_t rows = d.Cin * d.B * d.T, tv = d.tv(), btv = d.B * tv;
  const Acc* ae = h.ae.data() + g * h.nnz();
  torch::stable::parallel_for(0, rows, 64, [&](int64_t begin, int64_t end) {
    std::vector<Acc> tmp(d.K * d.V);
    for (int64_t r = begin; r < end; ++r) {
      const int64_t t = r % d.T, b = (r / d.T) % d.B, ci = r / (d.T * d.B);
      const T* xr = x + ((b * d.G + g) * d.Cin + ci) * tv + t * d.V;
      T* zr = z + ci * btv + b * tv + t * d.V;
      gc_aggregate_row<T, Acc>(xr, zr, d.Cin * btv, h.entries.data(), ae, h.nnz(), static_cast<int>(d.K),
                               static_cast<int>(d.V), tmp.data());
    }
  });
}

// s[g, k, w] = sum_v ae[g, k, v, w]: the bias of subset k reaches joint w with this weight.
template <typename Acc>
std::vector<Acc> column_sums(const HostEdges<Acc>& h, const GraphConvDims& d) {
  std::vector<Acc> s(d.G * d.K * d.V, Acc(0));
  for (int64_t g = 0; g < d.G; ++g)
    for (int i = 0; i < h.nnz(); ++i) s[(g * d.K + h.entries[i].k) * d.V + h.entries[i].w] += h.ae[g * h.nnz() + i];
  return s;
}

template <typename T, typename Acc>
std::vector<Acc> bias_values(const std::optional<Tensor>& bias, const GraphConvDims& d) {
  std::vector<Acc> bv(d.G * d.K * d.Cout, Acc(0));
  if (bias.has_value()) {
    Tensor bc = torch::stable::contiguous(*bias);
    const T* bp = static_cast<const T*>(bc.const_data_ptr());
    for (size_t i = 0; i < bv.size(); ++i) bv[i] = static_cast<Acc>(bp[i]);
  }
  return bv;
}


// ---------------------------------------------------------------------------------------------
// Channels-last path: x, out, grad_out and dx are (B, C, T, V) tensors with channels-last strides
// (memory order b, t, v, c). The aggregated input of all groups is z (B, G*K*Cin, T, V), also
// channels-last, i.e. a (B*T*W, G*K*Cin) matrix with group g in columns [g*K*Cin, (g+1)*K*Cin);
// the projection is then one groups=G 1x1 convolution, out = z_g @ Wp_g^T per group, and its
// backward one convolution_backward (per group on column slices from 32 output channels on;
// oneDNN: 1.4-2.6x the rate of per-group BLAS GEMMs here). The graph aggregation works on one
// frame (b, t) at a time: Z[w, g*K*Cin + k*Cin + ci] += ae[g] * X[v, g*Cin + ci] over the non-zero
// entries (k, v, w), contiguous in ci.

bool is_channels_last(const Tensor& t) {
  if (t.dim() != 4 || t.is_contiguous()) return false;
  const int64_t C = t.size(1), T = t.size(2), V = t.size(3);
  return t.stride(1) == 1 && t.stride(3) == C && t.stride(2) == V * C && t.stride(0) == T * V * C;
}

// A (B, C, T, V) view with channels-last strides over a fresh (B, T, V, C) buffer.
Tensor new_channels_last(const Tensor& like, int64_t B, int64_t C, int64_t T, int64_t V) {
  Tensor buf = torch::stable::new_empty(like, {B, T, V, C});
  return torch::stable::transpose(torch::stable::transpose(buf, 1, 3), 2, 3);
}

template <typename T, typename Acc>
SKELFAST_CPU_CLONES void aggregate_frame_cl(const T* xf, T* zf, const GraphConvDims& d, const HostEdges<Acc>& h,
                                            Acc* tmp) {
  // one frame (b, t): Z[w, g*K*Cin + k*Cin + ci] = sum over entries (k, v, w) of ae[g] * X[v, g*Cin + ci]
  const int64_t gcin = d.G * d.Cin, kc = d.K * d.Cin, gkc = d.G * kc, nnz = h.nnz();
  for (int64_t j = 0; j < d.V * gkc; ++j) tmp[j] = Acc(0);
  for (int64_t i = 0; i < nnz; ++i) {
    const GraphEntry& e = h.entries[i];
    for (int64_t g = 0; g < d.G; ++g) {
      const T* xv = xf + e.v * gcin + g * d.Cin;
      Acc* zt = tmp + e.w * gkc + g * kc + e.k * d.Cin;
      const Acc a = h.ae[g * nnz + i];
      for (int64_t ci = 0; ci < d.Cin; ++ci) zt[ci] += a * static_cast<Acc>(xv[ci]);
    }
  }
  for (int64_t j = 0; j < d.V * gkc; ++j) zf[j] = static_cast<T>(tmp[j]);
}

// z (B, G*K*Cin, T, V) channels-last: the graph-aggregated input of every group, the input of the
// grouped 1x1 projection.
template <typename T, typename Acc>
Tensor aggregate_cl(const Tensor& xc, const GraphConvDims& d, const HostEdges<Acc>& h) {
  const int64_t gkc = d.G * d.K * d.Cin;
  Tensor z = new_channels_last(xc, d.B, gkc, d.T, d.V);
  const T* xp = static_cast<const T*>(xc.const_data_ptr());
  T* zp = static_cast<T*>(z.mutable_data_ptr());
  torch::stable::parallel_for(0, d.B * d.T, 4, [&](int64_t begin, int64_t end) {
    std::vector<Acc> tmp(d.V * gkc);
    for (int64_t f = begin; f < end; ++f)
      aggregate_frame_cl<T, Acc>(xp + f * d.V * d.G * d.Cin, zp + f * d.V * gkc, d, h, tmp.data());
  });
  return z;
}

// (G*Cout, K*Cin, 1, 1): the projection of every group as a groups=G 1x1 convolution weight.
Tensor projection_weight(const Tensor& wp, const GraphConvDims& d) {
  return torch::stable::reshape(wp, {d.G * d.Cout, d.K * d.Cin, 1, 1});
}

template <typename T, typename Acc>
SKELFAST_CPU_CLONES void add_bias_rows(T* o, const Acc* beff_wc, int64_t begin, int64_t end, int64_t V, int64_t gcout) {
  for (int64_t r = begin; r < end; ++r) {
    const Acc* be = beff_wc + (r % V) * gcout;
    T* row = o + r * gcout;
    for (int64_t c = 0; c < gcout; ++c) row[c] = static_cast<T>(static_cast<Acc>(row[c]) + be[c]);
  }
}

// out = grouped 1x1 conv (oneDNN, skelfast/stable_aten.h) of the aggregated input, plus the
// effective bias beff[g, c, w] (depends on the target joint w, so it cannot ride in the conv).
template <typename T, typename Acc>
Tensor graph_conv_forward_cl(const Tensor& xc, const Tensor& wp, const GraphConvDims& d, const HostEdges<Acc>& h,
                             const std::vector<Acc>& beff, bool has_bias) {
  const int64_t rows = d.B * d.T * d.V, gcout = d.G * d.Cout;
  Tensor out;
  if (d.Cin == 0) {  // nothing to project: the output is the bias term alone
    out = new_channels_last(xc, d.B, gcout, d.T, d.V);
    torch::stable::zero_(out);
  } else {
    Tensor z = aggregate_cl<T, Acc>(xc, d, h);
    out = torch::stable::contiguous(conv1x1(z, projection_weight(wp, d), d.G),
                                    torch::headeronly::MemoryFormat::ChannelsLast);  // a no-op for oneDNN's output
  }
  if (has_bias) {
    std::vector<Acc> beff_wc(d.V * gcout);  // (w, g*Cout + c): contiguous along the output's channels
    for (int64_t gc = 0; gc < gcout; ++gc)
      for (int64_t w = 0; w < d.V; ++w) beff_wc[w * gcout + gc] = beff[gc * d.V + w];
    T* op = static_cast<T*>(out.mutable_data_ptr());
    torch::stable::parallel_for(0, rows, std::max<int64_t>(1, 32768 / std::max<int64_t>(1, gcout)),
                                [&](int64_t b, int64_t e) { add_bias_rows<T, Acc>(op, beff_wc.data(), b, e, d.V, gcout); });
  }
  return out;
}

// Chunk of frames [f0, f1) of the aggregation backward for every group: dx rows and the
// edge-weight gradient accumulators dae (G, nnz) of this chunk. dz[g]: group g's gradient of the
// aggregated input, B*T*W rows of K*Cin values, dz_stride apart.
template <typename T, typename Acc>
SKELFAST_CPU_CLONES void aggregate_backward_frames_cl(const T* xp, const T* const* dz, int64_t dz_stride, T* dxp,
                                                      const GraphConvDims& d, const HostEdges<Acc>& h, int64_t f0,
                                                      int64_t f1, Acc* tmp, Acc* dae) {
  const int64_t gcin = d.G * d.Cin, nnz = h.nnz();
  for (int64_t f = f0; f < f1; ++f) {
    const T* xf = xp + f * d.V * gcin;
    for (int64_t j = 0; j < d.V * gcin; ++j) tmp[j] = Acc(0);
    for (int64_t i = 0; i < nnz; ++i) {
      const GraphEntry& e = h.entries[i];
      for (int64_t g = 0; g < d.G; ++g) {
        const T* dzw = dz[g] + (f * d.V + e.w) * dz_stride + e.k * d.Cin;
        const T* xv = xf + e.v * gcin + g * d.Cin;
        Acc* dxv = tmp + e.v * gcin + g * d.Cin;
        const Acc a = h.ae[g * nnz + i];
        Acc dot = Acc(0);
        // a fixed-order SIMD reduction: deterministic, and not latency-bound like a serial sum
#pragma omp simd reduction(+ : dot)
        for (int64_t ci = 0; ci < d.Cin; ++ci) {
          const Acc gz = static_cast<Acc>(dzw[ci]);
          dxv[ci] += a * gz;
          dot += static_cast<Acc>(xv[ci]) * gz;
        }
        dae[g * nnz + i] += dot;
      }
    }
    T* dxf = dxp + f * d.V * gcin;
    for (int64_t j = 0; j < d.V * gcin; ++j) dxf[j] = static_cast<T>(tmp[j]);
  }
}

template <typename T, typename Acc>
SKELFAST_CPU_CLONES void sum_rows(const T* g, Acc* acc, int64_t r0, int64_t r1, int64_t width) {
  for (int64_t r = r0; r < r1; ++r)
    for (int64_t j = 0; j < width; ++j) acc[j] += static_cast<Acc>(g[r * width + j]);
}

// Fills dx, dwp, r[g, c, w] = sum_{b,t} grad_out (only with a bias: it feeds the bias terms) and
// dae (G, nnz).
template <typename T, typename Acc>
void graph_conv_backward_cl(const Tensor& xc, const Tensor& gc, const Tensor& wp, const GraphConvDims& d,
                            const HostEdges<Acc>& h, bool has_bias, Tensor& dx, T* dwp, std::vector<Acc>& r,
                            std::vector<Acc>& dae) {
  const int64_t frames = d.B * d.T, gcout = d.G * d.Cout, kc = d.K * d.Cin;
  const int nnz = h.nnz();
  const int64_t nchunks = frames < 64 ? frames : 64;  // fixed chunking: deterministic reductions
  if (has_bias) {
    const T* gp = static_cast<const T*>(gc.const_data_ptr());
    std::vector<Acc> part(nchunks * d.V * gcout, Acc(0));
    torch::stable::parallel_for(0, nchunks, 1, [&](int64_t cb, int64_t ce) {
      for (int64_t chunk = cb; chunk < ce; ++chunk)  // one frame = V rows of G*Cout values
        sum_rows<T, Acc>(gp, part.data() + chunk * d.V * gcout, frames * chunk / nchunks,
                         frames * (chunk + 1) / nchunks, d.V * gcout);
    });
    for (int64_t chunk = 0; chunk < nchunks; ++chunk)
      for (int64_t w = 0; w < d.V; ++w)
        for (int64_t j = 0; j < gcout; ++j) r[j * d.V + w] += part[(chunk * d.V + w) * gcout + j];
  }
  T* dxp = static_cast<T*>(dx.mutable_data_ptr());
  if (d.Cin == 0 || d.Cout == 0) {  // no projection: dx = 0 (dW has no elements)
    for (int64_t i = 0; i < dx.numel(); ++i) dxp[i] = T(0);
    return;
  }
  Tensor z = aggregate_cl<T, Acc>(xc, d, h);
  Tensor wproj = projection_weight(wp, d);
  // dz[g]: group g's gradient of z, rows of K*Cin values dz_stride apart. From 32 output channels
  // on, one convolution_backward per group on column slices beats oneDNN's grouped backward
  // (measured, 2 threads, B=32: 48 vs 58 ms at 64->256, 15 vs 19 ms at 32->32); at 16 it loses
  // (19 vs 15 ms), so narrow layers keep the grouped call.
  const bool per_group = d.G > 1 && d.Cout >= 32;
  std::vector<Tensor> dzs, dws;
  std::vector<const T*> dzp(d.G), dwb(d.G);  // dwb[g]: group g's (Cout, K*Cin) block of dW
  int64_t dz_stride = kc;
  if (per_group) {
    Tensor grad = gc;  // torch::stable::narrow takes a non-const handle
    for (int64_t g = 0; g < d.G; ++g) {
      auto [dzg, dwg] = conv1x1_backward(torch::stable::narrow(grad, 1, g * d.Cout, d.Cout),
                                         torch::stable::narrow(z, 1, g * kc, kc),
                                         torch::stable::narrow(wproj, 0, g * d.Cout, d.Cout), 1);
      dzs.push_back(torch::stable::contiguous(dzg, torch::headeronly::MemoryFormat::ChannelsLast));
      dws.push_back(torch::stable::contiguous(dwg));
      dzp[g] = static_cast<const T*>(dzs.back().const_data_ptr());
      dwb[g] = static_cast<const T*>(dws.back().const_data_ptr());
    }
  } else {
    auto [dz, dw4] = conv1x1_backward(gc, z, wproj, d.G);
    dzs.push_back(torch::stable::contiguous(dz, torch::headeronly::MemoryFormat::ChannelsLast));
    dws.push_back(torch::stable::contiguous(dw4));
    dz_stride = d.G * kc;
    for (int64_t g = 0; g < d.G; ++g) {
      dzp[g] = static_cast<const T*>(dzs[0].const_data_ptr()) + g * kc;
      dwb[g] = static_cast<const T*>(dws[0].const_data_ptr()) + g * d.Cout * kc;
    }
  }
  for (int64_t g = 0; g < d.G; ++g) {  // dW (G*Cout, K*Cin) -> the weight's (G*K*Cout, Cin) rows
    const T* dwgp = dwb[g];
    for (int64_t k = 0; k < d.K; ++k)
      for (int64_t c = 0; c < d.Cout; ++c)
        for (int64_t ci = 0; ci < d.Cin; ++ci)
          dwp[((g * d.K + k) * d.Cout + c) * d.Cin + ci] = dwgp[c * kc + k * d.Cin + ci];
  }
  const T* xp = static_cast<const T*>(xc.const_data_ptr());
  std::vector<Acc> part(nchunks * d.G * nnz, Acc(0));
  torch::stable::parallel_for(0, nchunks, 1, [&](int64_t cb, int64_t ce) {
    std::vector<Acc> tmp(d.V * d.G * d.Cin);
    for (int64_t chunk = cb; chunk < ce; ++chunk)
      aggregate_backward_frames_cl<T, Acc>(xp, dzp.data(), dz_stride, dxp, d, h, frames * chunk / nchunks,
                                           frames * (chunk + 1) / nchunks, tmp.data(), part.data() + chunk * d.G * nnz);
  });
  for (int64_t chunk = 0; chunk < nchunks; ++chunk)
    for (int64_t j = 0; j < d.G * nnz; ++j) dae[j] += part[chunk * d.G * nnz + j];
}

Tensor graph_conv_cpu(Tensor x, Tensor weight, std::optional<Tensor> bias, Tensor A, std::optional<Tensor> importance,
                      int64_t groups) {
  const GraphConvDims d = graph_conv_dims(x, weight, bias, A, importance, groups);
  const bool cl = is_channels_last(x);
  Tensor xc = cl ? x : torch::stable::contiguous(x);
  // (the channels-last path returns the projection's own output buffer)
  Tensor out = cl ? new_channels_last(xc, d.B, d.G * d.Cout, d.T, d.V)
                  : torch::stable::new_empty(xc, {d.B, d.G * d.Cout, d.T, d.V});
  if (out.numel() == 0) return out;
  const ScalarType acc_st = xc.scalar_type() == ScalarType::Double ? ScalarType::Double : ScalarType::Float;
  auto [a_acc, e_acc] = edges_acc(A, importance, acc_st);
  Tensor wp = packed_weight(weight, d);
  Tensor z = torch::stable::new_empty(xc, {cl ? 0 : d.K * d.Cin, d.B * d.tv()});
  dispatch_gc_types(xc.scalar_type(), [&](auto t_tag, auto a_tag) {
    using T = decltype(t_tag);
    using Acc = decltype(a_tag);
    const HostEdges<Acc> h = host_edges<Acc>(a_acc, e_acc, d);
    const std::vector<Acc> s = column_sums(h, d);
    const std::vector<Acc> bv = bias_values<T, Acc>(bias, d);
    // bias_eff[g, c, w] = sum_k bias[g, k, c] * s[g, k, w]
    std::vector<Acc> beff(d.G * d.Cout * d.V, Acc(0));
    for (int64_t g = 0; g < d.G; ++g)
      for (int64_t k = 0; k < d.K; ++k)
        for (int64_t c = 0; c < d.Cout; ++c)
          for (int64_t w = 0; w < d.V; ++w)
            beff[(g * d.Cout + c) * d.V + w] += bv[(g * d.K + k) * d.Cout + c] * s[(g * d.K + k) * d.V + w];
    if (cl) {
      out = graph_conv_forward_cl<T, Acc>(xc, wp, d, h, beff, bias.has_value());
      return;
    }
    const T* xp = static_cast<const T*>(xc.const_data_ptr());
    T* zp = static_cast<T*>(z.mutable_data_ptr());
    T* op = static_cast<T*>(out.mutable_data_ptr());
    const int64_t tv = d.tv(), btv = d.B * tv;
    for (int64_t g = 0; g < d.G; ++g) {
      aggregate_group<T, Acc>(xp, zp, d, g, h);
      Tensor o = torch::stable::matmul(torch::stable::select(wp, 0, g), z);  // (Cout, B*T*V)
      const T* oc = static_cast<const T*>(o.const_data_ptr());
      // epilogue: (Cout, B, T, V) -> out[:, g*Cout:(g+1)*Cout] plus the effective bias
      torch::stable::parallel_for(0, d.B * d.Cout, 16, [&](int64_t begin, int64_t end) {
        for (int64_t i = begin; i < end; ++i) {
          const int64_t c = i % d.Cout, b = i / d.Cout;
          const T* src = oc + c * btv + b * tv;
          T* dst = op + ((b * d.G + g) * d.Cout + c) * tv;
          const Acc* be = beff.data() + (g * d.Cout + c) * d.V;
          for (int64_t t = 0; t < d.T; ++t)
            for (int64_t w = 0; w < d.V; ++w)
              dst[t * d.V + w] = static_cast<T>(static_cast<Acc>(src[t * d.V + w]) + be[w]);
        }
      });
    }
  });
  return out;
}

std::tuple<Tensor, Tensor, Tensor, Tensor> graph_conv_backward_cpu(Tensor grad_out, Tensor x, Tensor weight,
                                                                   std::optional<Tensor> bias, Tensor A,
                                                                   std::optional<Tensor> importance, int64_t groups) {
  const GraphConvDims d = graph_conv_dims(x, weight, bias, A, importance, groups);
  STD_TORCH_CHECK(grad_out.dim() == 4 && grad_out.size(0) == d.B && grad_out.size(1) == d.G * d.Cout &&
                      grad_out.size(2) == d.T && grad_out.size(3) == d.V && grad_out.scalar_type() == x.scalar_type(),
                  "skelfast::graph_conv_backward: grad_out must be (B, G*Cout, T, V) with x's dtype");
  const bool cl = is_channels_last(x);
  const auto fmt = cl ? torch::headeronly::MemoryFormat::ChannelsLast : torch::headeronly::MemoryFormat::Contiguous;
  Tensor xc = cl ? x : torch::stable::contiguous(x);
  Tensor gc = torch::stable::contiguous(grad_out, fmt);
  const ScalarType acc_st = xc.scalar_type() == ScalarType::Double ? ScalarType::Double : ScalarType::Float;
  auto [a_acc, e_acc] = edges_acc(A, importance, acc_st);
  Tensor wp = packed_weight(weight, d);
  std::vector<int64_t> wsizes(weight.sizes().begin(), weight.sizes().end());
  Tensor dx = cl ? new_channels_last(xc, d.B, d.G * d.Cin, d.T, d.V)
                 : torch::stable::new_empty(xc, {d.B, d.G * d.Cin, d.T, d.V});
  Tensor dw = torch::stable::new_empty(xc, wsizes);
  Tensor db = torch::stable::new_empty(xc, {d.G * d.K * d.Cout});
  Tensor de_acc = torch::stable::new_zeros(a_acc, {d.G, d.K, d.V, d.V});
  Tensor z = torch::stable::new_empty(xc, {cl ? 0 : d.K * d.Cin, d.B * d.tv()});
  Tensor gg = torch::stable::new_empty(xc, {cl ? 0 : d.Cout, d.B * d.tv()});
  dispatch_gc_types(xc.scalar_type(), [&](auto t_tag, auto a_tag) {
    using T = decltype(t_tag);
    using Acc = decltype(a_tag);
    const HostEdges<Acc> h = host_edges<Acc>(a_acc, e_acc, d);
    const int nnz = h.nnz();
    const std::vector<Acc> s = column_sums(h, d);
    const std::vector<Acc> bv = bias_values<T, Acc>(bias, d);
    const int64_t tv = d.tv(), btv = d.B * tv;
    const T* xp = static_cast<const T*>(xc.const_data_ptr());
    const T* gp = static_cast<const T*>(gc.const_data_ptr());
    T* zp = static_cast<T*>(z.mutable_data_ptr());
    T* ggp = static_cast<T*>(gg.mutable_data_ptr());
    T* dxp = static_cast<T*>(dx.mutable_data_ptr());
    T* dwp = static_cast<T*>(dw.mutable_data_ptr());
    std::vector<Acc> r(d.G * d.Cout * d.V, Acc(0));  // r[g, c, w] = sum_{b, t} grad_out[b, g, c, t, w]
    std::vector<Acc> dae(d.G * nnz, Acc(0));          // d(A*E) at the non-zero entries
    if (cl && d.B * d.T > 0) {
      graph_conv_backward_cl<T, Acc>(xc, gc, wp, d, h, bias.has_value(), dx, dwp, r, dae);
    } else if (d.B * d.T > 0) {
      for (int64_t g = 0; g < d.G; ++g) {
        // grad_out[:, g] -> gg (Cout, B*T*V), and the (b, t) sums for the bias terms
        torch::stable::parallel_for(0, d.Cout, 1, [&](int64_t begin, int64_t end) {
          for (int64_t c = begin; c < end; ++c) {
            Acc* rr = r.data() + (g * d.Cout + c) * d.V;
            for (int64_t b = 0; b < d.B; ++b) {
              const T* src = gp + ((b * d.G + g) * d.Cout + c) * tv;
              T* dst = ggp + c * btv + b * tv;
              for (int64_t t = 0; t < d.T; ++t)
                for (int64_t w = 0; w < d.V; ++w) {
                  const T v = src[t * d.V + w];
                  dst[t * d.V + w] = v;
                  rr[w] += static_cast<Acc>(v);
                }
            }
          }
        });
        aggregate_group<T, Acc>(xp, zp, d, g, h);
        // dWp_g (Cout, K*Cin) = gg @ z^T; dz (K*Cin, B*T*V) = Wp_g^T @ gg
        Tensor dwg = torch::stable::matmul(gg, torch::stable::transpose(z, 0, 1));
        Tensor wpg = torch::stable::select(wp, 0, g);
        Tensor dz = torch::stable::matmul(torch::stable::transpose(wpg, 0, 1), gg);
        dz = torch::stable::contiguous(dz);
        const T* dwgp = static_cast<const T*>(dwg.const_data_ptr());
        for (int64_t k = 0; k < d.K; ++k)
          for (int64_t c = 0; c < d.Cout; ++c)
            for (int64_t ci = 0; ci < d.Cin; ++ci)
              dwp[((g * d.K + k) * d.Cout + c) * d.Cin + ci] = dwgp[c * d.K * d.Cin + k * d.Cin + ci];
        // dx and the edge-weight gradient; fixed chunking so the dae sum is deterministic
        const T* dzp = static_cast<const T*>(dz.const_data_ptr());
        const int64_t rows = d.Cin * d.B * d.T;
        const int64_t nchunks = rows < 64 ? rows : 64;
        std::vector<Acc> part(nchunks * nnz, Acc(0));
        const Acc* ae = h.ae.data() + g * nnz;
        torch::stable::parallel_for(0, nchunks, 1, [&](int64_t cb, int64_t ce) {
          std::vector<Acc> tmp(d.V);
          for (int64_t chunk = cb; chunk < ce; ++chunk) {
            Acc* acc = part.data() + chunk * nnz;
            for (int64_t row = rows * chunk / nchunks; row < rows * (chunk + 1) / nchunks; ++row) {
              const int64_t t = row % d.T, b = (row / d.T) % d.B, ci = row / (d.T * d.B);
              const int64_t xo = ((b * d.G + g) * d.Cin + ci) * tv + t * d.V;
              gc_aggregate_row_backward<T, Acc>(xp + xo, dzp + ci * btv + b * tv + t * d.V, d.Cin * btv, dxp + xo,
                                                h.entries.data(), ae, nnz, static_cast<int>(d.V), tmp.data(), acc);
            }
          }
        });
        for (int64_t chunk = 0; chunk < nchunks; ++chunk)
          for (int i = 0; i < nnz; ++i) dae[g * nnz + i] += part[chunk * nnz + i];
      }
    } else {
      for (int64_t i = 0; i < dx.numel(); ++i) dxp[i] = T(0);
      for (int64_t i = 0; i < dw.numel(); ++i) dwp[i] = T(0);
    }
    // bias terms: dbias[g,k,c] = sum_w r[g,c,w] s[g,k,w]; d(ae)[g,i] += sum_c bias[g,k_i,c] r[g,c,w_i]
    T* dbp = static_cast<T*>(db.mutable_data_ptr());
    for (int64_t g = 0; g < d.G; ++g)
      for (int64_t k = 0; k < d.K; ++k)
        for (int64_t c = 0; c < d.Cout; ++c) {
          Acc acc = Acc(0);
          for (int64_t w = 0; w < d.V; ++w) acc += r[(g * d.Cout + c) * d.V + w] * s[(g * d.K + k) * d.V + w];
          dbp[(g * d.K + k) * d.Cout + c] = static_cast<T>(acc);
        }
    // dE[g,k,v,w] = A[k,v,w] * d(ae); zero where A is zero (as the reference's A * E product gives)
    const Acc* ap = static_cast<const Acc*>(a_acc.const_data_ptr());
    Acc* dep = static_cast<Acc*>(de_acc.mutable_data_ptr());
    for (int64_t g = 0; g < d.G; ++g)
      for (int i = 0; i < nnz; ++i) {
        const GraphEntry& en = h.entries[i];
        Acc v = dae[g * nnz + i];
        for (int64_t c = 0; c < d.Cout; ++c) v += bv[(g * d.K + en.k) * d.Cout + c] * r[(g * d.Cout + c) * d.V + en.w];
        const int64_t idx = (static_cast<int64_t>(en.k) * d.V + en.v) * d.V + en.w;
        dep[g * d.K * d.V * d.V + idx] = ap[idx] * v;
      }
  });
  Tensor de = de_acc;
  if (importance.has_value()) {
    std::vector<int64_t> esizes(importance->sizes().begin(), importance->sizes().end());
    de = torch::stable::reshape(torch::stable::to(de_acc, importance->scalar_type()), esizes);
  }
  return {dx, dw, db, de};
}

}  // namespace
}  // namespace skelfast

STABLE_TORCH_LIBRARY_IMPL(skelfast, CPU, m) {
  m.impl("graph_conv", TORCH_BOX(&skelfast::graph_conv_cpu));
  m.impl("graph_conv_backward", TORCH_BOX(&skelfast::graph_conv_backward_cpu));
}
