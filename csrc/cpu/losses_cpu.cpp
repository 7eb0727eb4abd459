// CPU kernels of skelfast::contrastive_lse and its backward: streaming log-sum-exps over MoCo
// queues in column chunks (similarity GEMMs per chunk, oneDNN for float32 and BLAS for float64,
// fused vectorised row loops), O(N * chunk) memory. Layer: kernel + binding (stable ABI); numerics in csrc/include/skelfast/losses_math.h.
#include <torch/csrc/stable/library.h>
#include <torch/csrc/stable/ops.h>
#include <torch/csrc/stable/tensor.h>
#include <torch/headeronly/util/Exception.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <optional>
#include <string>
#include <tuple>
#include <type_traits>
#include <vector>

#include "skelfast/losses_math.h"
#include "skelfast/stable_aten.h"

namespace skelfast {
namespace {

using torch::stable::Tensor;
using torch::headeronly::ScalarType;

// Queue columns per chunk: the per-chunk similarity block of one source is N x kChunk (4 MiB at
// N=128, fp32; one row is 32 KiB, so a row of every source stays in L2 during the row loops).
// Measured on 2 cores: 8192-column chunks ran the BLAS GEMMs 1.3-1.5x faster than 2048-column ones
// (especially the K-reduction dS . Q^T), at O(N * 8192) memory per source; the oneDNN GEMMs that
// replaced them for float32 vary by less than 20% between 2048 and 16384 columns.
constexpr int64_t kChunk = 8192;
// Large batches shrink the chunk so the per-chunk buffers stay near 64 MiB (never below 512 columns).
constexpr int64_t kChunkBufferBytes = int64_t(64) << 20;
constexpr int64_t kMinChunk = 512;

// Columns per chunk for a problem whose per-column buffers hold `rows` values of `elem` bytes.
int64_t chunk_columns(int64_t rows, int64_t elem) {
  const int64_t fit = kChunkBufferBytes / std::max<int64_t>(1, rows * elem);
  return std::max(kMinChunk, std::min(kChunk, fit));
}

// ------------------------------------------------------------------------------------------------
// Row primitives. float: explicit GCC vector code (csrc/cpu/losses_rows_simd.h) built for AVX-512
// (16 lanes), AVX2+FMA (8) and the x86-64 baseline (4); the widest the CPU runs is picked once
// (SKELFAST_LOSS_ISA=avx512|avx2|baseline narrows it, for tests and A/Bs). double: plain loops
// with std::exp (tests).
// ------------------------------------------------------------------------------------------------
// The vector helpers are always inlined; their by-value vector ABI never crosses a call.
#pragma GCC diagnostic ignored "-Wpsabi"
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define SKELFAST_ROWS_MULTI_ISA 1
#pragma GCC push_options
#pragma GCC target("avx512f,avx2,fma")
namespace rows_avx512 {
constexpr int kW = 16;
#include "losses_rows_simd.h"
}  // namespace rows_avx512
#pragma GCC pop_options
#pragma GCC push_options
#pragma GCC target("avx2,fma")
namespace rows_avx2 {
constexpr int kW = 8;
#include "losses_rows_simd.h"
}  // namespace rows_avx2
#pragma GCC pop_options
namespace rows_baseline {
constexpr int kW = 4;
#include "losses_rows_simd.h"
}  // namespace rows_baseline
#else
namespace rows_baseline {
constexpr int kW = 8;
#include "losses_rows_simd.h"
}  // namespace rows_baseline
#endif

struct FloatRows {
  // float32 dq += X . chunk^T as oneDNN's 1x1 weight gradient (AVX-512) or BLAS mm (otherwise):
  // on the 2-core Zen 3 (AVX2) host MKL's mm ran it 1.2-1.3x faster (N=128, D=128 / 384 x 768 per
  // 8192 columns: 2.24 vs 2.80 ms, 31.7 vs 35.9 ms); the similarities stay on oneDNN everywhere.
  bool onednn_weight_grad;
  decltype(&rows_baseline::row_sum_exp) sum_exp;
  decltype(&rows_baseline::row_sum_exp_prod) sum_exp_prod;
  decltype(&rows_baseline::row_exp_store) exp_store;
  decltype(&rows_baseline::row_max) max;
  decltype(&rows_baseline::row_grad_exp) grad_exp;
  decltype(&rows_baseline::row_grad_exp_prod) grad_exp_prod;
};
#define SKELFAST_FLOAT_ROWS(ns, onednn_weight_grad)                                                         \
  FloatRows {                                                                                              \
    onednn_weight_grad, &ns::row_sum_exp, &ns::row_sum_exp_prod, &ns::row_exp_store, &ns::row_max,         \
        &ns::row_grad_exp, &ns::row_grad_exp_prod                                                          \
  }

FloatRows pick_float_rows() {
  const char* env = std::getenv("SKELFAST_LOSS_ISA");
  const std::string want = env ? env : "";
  STD_TORCH_CHECK(want.empty() || want == "avx512" || want == "avx2" || want == "baseline",
                  "SKELFAST_LOSS_ISA must be avx512, avx2 or baseline, got '", want, "'");
#ifdef SKELFAST_ROWS_MULTI_ISA
  __builtin_cpu_init();
  const bool has512 = __builtin_cpu_supports("avx512f");
  const bool has2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  STD_TORCH_CHECK(want != "avx512" || has512, "SKELFAST_LOSS_ISA=avx512, but this CPU has no AVX-512");
  STD_TORCH_CHECK(want != "avx2" || has2, "SKELFAST_LOSS_ISA=avx2, but this CPU has no AVX2+FMA");
  if (has512 && (want.empty() || want == "avx512")) return SKELFAST_FLOAT_ROWS(rows_avx512, true);
  if (has2 && want != "baseline") return SKELFAST_FLOAT_ROWS(rows_avx2, false);
#else
  STD_TORCH_CHECK(want.empty() || want == "baseline", "SKELFAST_LOSS_ISA=", want, " needs an x86-64 GCC build");
#endif
  return SKELFAST_FLOAT_ROWS(rows_baseline, false);
}

const FloatRows& float_rows() {
  static const FloatRows rows = pick_float_rows();
  return rows;
}

inline double row_sum_exp(const float* s, int64_t n, float it, float shift, float* mx) {
  return float_rows().sum_exp(s, n, it, shift, mx);
}
inline double row_sum_exp_prod(const float* a, const float* b, int64_t n, float it, float shift, float* mx) {
  return float_rows().sum_exp_prod(a, b, n, it, shift, mx);
}
inline double row_exp_store(float* s, int64_t n, float it, float shift, const float* sc, float* mx) {
  return float_rows().exp_store(s, n, it, shift, sc, mx);
}
inline float row_max(const float* s, int64_t n) { return float_rows().max(s, n); }
inline void row_grad_exp(float* d, const float* s, int64_t n, float coef, float it, float shift) {
  float_rows().grad_exp(d, s, n, coef, it, shift);
}
inline void row_grad_exp_prod(float* da, float* db, const float* a, const float* b, int64_t n, float coef, float it,
                              float shift) {
  float_rows().grad_exp_prod(da, db, a, b, n, coef, it, shift);
}

double row_sum_exp(const double* s, int64_t n, double it, double shift, double* mx) {
  double total = 0.0, mm = *mx;
  for (int64_t j = 0; j < n; ++j) {
    mm = std::max(mm, s[j]);
    total += std::exp(s[j] * it - shift);
  }
  *mx = mm;
  return total;
}
double row_sum_exp_prod(const double* a, const double* b, int64_t n, double it, double shift, double* mx) {
  double total = 0.0, mm = *mx;
  for (int64_t j = 0; j < n; ++j) {
    const double v = a[j] * b[j];
    mm = std::max(mm, v);
    total += std::exp(v * it - shift);
  }
  *mx = mm;
  return total;
}
double row_exp_store(double* s, int64_t n, double it, double shift, const double* sc, double* mx) {
  double total = 0.0;
  for (int64_t j = 0; j < n; ++j) {
    *mx = std::max(*mx, s[j]);
    const double e = std::exp(s[j] * it - shift);
    total += e;
    s[j] = sc ? e * sc[j] : e;
  }
  return total;
}
double row_max(const double* s, int64_t n) {
  double mm = -std::numeric_limits<double>::infinity();
  for (int64_t j = 0; j < n; ++j) mm = std::max(mm, s[j]);
  return mm;
}
void row_grad_exp(double* d, const double* s, int64_t n, double coef, double it, double shift) {
  for (int64_t j = 0; j < n; ++j) d[j] += coef * std::exp(s[j] * it - shift);
}
void row_grad_exp_prod(double* da, double* db, const double* a, const double* b, int64_t n, double coef, double it,
                       double shift) {
  for (int64_t j = 0; j < n; ++j) {
    const double e = coef * std::exp(a[j] * b[j] * it - shift);
    if (da) da[j] += e * b[j];
    if (db) db[j] += e * a[j];
  }
}

template <typename T>
void row_scale(T* s, const T* sc, int64_t n) {
  for (int64_t j = 0; j < n; ++j) s[j] *= sc[j];
}

// Keeps vals[0..k) sorted descending with their column indices; ties keep the earlier column.
template <typename T>
void topk_update(const T* s, int64_t n, int64_t col0, int64_t k, T* vals, int64_t* idx) {
  for (int64_t j = 0; j < n; ++j) {
    const T v = s[j];
    if (!(v > vals[k - 1])) continue;
    int64_t pos = k - 1;
    while (pos > 0 && v > vals[pos - 1]) {
      vals[pos] = vals[pos - 1];
      idx[pos] = idx[pos - 1];
      --pos;
    }
    vals[pos] = v;
    idx[pos] = col0 + j;
  }
}

// ------------------------------------------------------------------------------------------------
// Problem description and argument checks (shared by forward and backward).
// ------------------------------------------------------------------------------------------------
struct Problem {
  int64_t A = 0, B = 0, M = 0, N = 0, K = 0, Da = 0, Db = 0, P = 0;
  bool shared_a = false;  // queue_a has a single (shared) queue for all A sources
  double tau = 1.0;
  std::vector<int64_t> pa, pb;
  ScalarType ct = ScalarType::Float;  // compute dtype (float32, or float64 for float64 queries)
};

bool is_queue_dtype(ScalarType t) {
  return t == ScalarType::Float || t == ScalarType::Double || t == ScalarType::BFloat16 || t == ScalarType::Half;
}

Problem make_problem(const Tensor& qa, const Tensor& lpos, const Tensor& queue_a, const std::optional<Tensor>& col_scale,
                     const std::optional<Tensor>& qb, const std::optional<Tensor>& queue_b,
                     const std::vector<int64_t>& pair_a, const std::vector<int64_t>& pair_b, double tau) {
  const char* op = "skelfast::contrastive_lse";
  Problem p;
  STD_TORCH_CHECK(qa.dim() == 3, op, ": qa must have shape (A, N, Da), got rank ", qa.dim());
  STD_TORCH_CHECK(qa.scalar_type() == ScalarType::Float || qa.scalar_type() == ScalarType::Double, op,
                  ": qa must be float32 or float64 (cast bf16/fp16 queries up; fp32 accumulation)");
  p.ct = qa.scalar_type();
  p.A = qa.size(0);
  p.N = qa.size(1);
  p.Da = qa.size(2);
  STD_TORCH_CHECK(lpos.dim() == 2 && lpos.size(0) == p.A && lpos.size(1) == p.N && lpos.scalar_type() == p.ct, op,
                  ": lpos must have shape (A, N) = (", p.A, ", ", p.N, ") and qa's dtype");
  STD_TORCH_CHECK(queue_a.dim() == 3 && (queue_a.size(0) == p.A || queue_a.size(0) == 1) && queue_a.size(1) == p.Da,
                  op, ": queue_a must have shape (A or 1, Da, K) with A=", p.A, ", Da=", p.Da);
  STD_TORCH_CHECK(is_queue_dtype(queue_a.scalar_type()), op, ": queues must be float32, float64, bfloat16 or float16");
  p.shared_a = queue_a.size(0) == 1 && p.A != 1;
  p.K = queue_a.size(2);
  STD_TORCH_CHECK(p.K >= 1, op, ": the queue must have K >= 1 columns");
  if (col_scale.has_value()) {
    STD_TORCH_CHECK(col_scale->dim() == 1 && col_scale->size(0) == p.K && col_scale->scalar_type() == p.ct, op,
                    ": col_scale must have shape (K,) = (", p.K, ",) and qa's dtype");
  }
  STD_TORCH_CHECK(qb.has_value() == queue_b.has_value(), op, ": qb and queue_b must be given together");
  if (qb.has_value()) {
    STD_TORCH_CHECK(qb->dim() == 3 && qb->size(1) == p.N && qb->scalar_type() == p.ct, op,
                    ": qb must have shape (B, N, Db) with N=", p.N, " and qa's dtype");
    p.B = qb->size(0);
    p.Db = qb->size(2);
    STD_TORCH_CHECK(queue_b->dim() == 3 && queue_b->size(0) == p.B && queue_b->size(1) == p.Db &&
                        queue_b->size(2) == p.K && is_queue_dtype(queue_b->scalar_type()),
                    op, ": queue_b must have shape (B, Db, K) = (", p.B, ", ", p.Db, ", ", p.K, ") and a float dtype");
  }
  p.M = p.A + p.B;
  STD_TORCH_CHECK(pair_a.size() == pair_b.size(), op, ": pair_a and pair_b must have the same length");
  p.P = static_cast<int64_t>(pair_a.size());
  for (int64_t i = 0; i < p.P; ++i) {
    STD_TORCH_CHECK(pair_a[i] >= 0 && pair_a[i] < p.M && pair_b[i] >= 0 && pair_b[i] < p.M && pair_a[i] != pair_b[i],
                    op, ": pair ", i, " = (", pair_a[i], ", ", pair_b[i], ") must index two distinct sources in [0, ",
                    p.M, ")");
  }
  STD_TORCH_CHECK(std::isfinite(tau) && tau > 0.0, op, ": tau must be a finite positive number, got ", tau);
  p.tau = tau;
  p.pa = pair_a;
  p.pb = pair_b;
  return p;
}

// Per-call buffers, reallocated only when the chunk width changes (the last, narrower chunk):
// the op allocates O((A + B) * N * chunk) once instead of per chunk.
struct Workspace {
  int64_t cs = -1;
  Tensor conv_a, conv_b;  // contiguous (and upcast, for bf16/fp16 queues) queue chunks
  Tensor sa, sb;          // (A, N, cs), (B, N, cs) similarities of the BLAS path (float64)
  Tensor part;            // (A, N, Da) GEMM result accumulated into dq / the forward Jacobian
};

// float32 GEMMs run as oneDNN 1x1 convolutions (csrc/include/skelfast/stable_aten.h): a queue chunk
// (D, cs) is an NCHW image (1, D, cs, 1) and the queries q (N, D) the weight (N, D, 1, 1), so the
// similarities q . chunk are the convolution's output (1, N, cs, 1) = (N, cs) row-major, and
// X . chunk^T (X (N, cs)) is its weight gradient for the output gradient X. Measured on the 2-core
// box (N = D = 128, 6 sources, K = 32768, both GEMMs of a step): 55 ms, against 84 ms for MKL's
// bmm (MKL takes its generic code path on this AMD CPU; oneDNN its AVX-512 kernels), the chunk
// copy that the image needs included. float64 (tests) stays on BLAS.
template <typename T>
bool use_onednn(int64_t D) {
  return std::is_same<T, float>::value && D > 0;
}
template <typename T>
bool onednn_weight_grad(int64_t D) {
  return use_onednn<T>(D) && float_rows().onednn_weight_grad;
}

// Columns [c0, c0 + cs) of a (G, D, K) queue in the compute dtype; copied into a reused buffer
// when the chunk must be upcast (bf16/fp16 queues: fp32 accumulation) or made contiguous (the
// oneDNN path).
Tensor queue_chunk(Tensor queue, int64_t c0, int64_t cs, ScalarType ct, bool contiguous, Tensor& conv) {
  Tensor c = torch::stable::narrow(queue, 2, c0, cs);
  if (c.scalar_type() == ct && (!contiguous || c.is_contiguous())) return c;
  if (conv.dim() != 3 || conv.size(2) != cs)
    conv = torch::stable::new_empty(c, {c.size(0), c.size(1), cs}, std::optional<ScalarType>(ct));
  torch::stable::copy_(conv, c);
  return conv;
}

Tensor as_image(const Tensor& t, int64_t rows, int64_t cols) { return torch::stable::view(t, {1, rows, cols, 1}); }

// One chunk's similarities of G sources: row n of source g is rows(g, n), cs values.
template <typename T>
struct SimRows {
  std::vector<Tensor> parts;      // per source, (N, cs) contiguous data (keeps the GEMM outputs alive)
  std::optional<Tensor> stacked;  // all sources as one contiguous (G, N, cs) block, when they are one
  std::vector<T*> base;
  int64_t cs = 0;
  T* rows(int64_t g, int64_t n) const { return base[g] + n * cs; }

  // Views a contiguous (G, N, cs) tensor.
  static SimRows of(const Tensor& all) {
    SimRows r;
    r.stacked = all;
    r.cs = all.size(2);
    for (int64_t g = 0; g < all.size(0); ++g) {
      r.parts.push_back(torch::stable::select(all, 0, g));
      r.base.push_back(static_cast<T*>(r.parts.back().mutable_data_ptr()));
    }
    return r;
  }
};

// out = q . chunk: (G, N, D) x (G or 1, D, cs), per source g. A shared chunk (IKEM's and the
// distillation's concatenated queue) is one convolution for all sources: weight (G*N, D).
template <typename T>
void chunk_sims(const Tensor& q, const Tensor& chunk, bool shared, Tensor& buf, SimRows<T>& out) {
  const int64_t G = q.size(0), N = q.size(1), D = q.size(2), cs = chunk.size(2);
  if (!use_onednn<T>(D)) {
    if (shared) {
      mm_out(torch::stable::view(buf, {G * N, cs}), torch::stable::view(q, {G * N, D}),
             torch::stable::select(chunk, 0, 0));
    } else {
      bmm_out(buf, q, chunk);
    }
    out = SimRows<T>::of(buf);
  } else if (shared) {
    out = SimRows<T>::of(torch::stable::view(conv1x1(as_image(torch::stable::select(chunk, 0, 0), D, cs),
                                                     torch::stable::view(q, {G * N, D, 1, 1}), 1),
                                             {G, N, cs}));
  } else {
    out = SimRows<T>();
    out.cs = cs;
    for (int64_t g = 0; g < G; ++g) {
      out.parts.push_back(conv1x1(as_image(torch::stable::select(chunk, 0, g), D, cs),
                                  torch::stable::view(torch::stable::select(q, 0, g), {N, D, 1, 1}), 1));
      out.base.push_back(static_cast<T*>(out.parts.back().mutable_data_ptr()));
    }
  }
}

// acc += X . chunk^T: X (G, N, cs) rows, chunk (G or 1, D, cs), acc (G, N, D); `part` (G, N, D)
// scratch. A shared chunk: one weight gradient for all sources (see chunk_sims).
template <typename T>
void accumulate_xqt(T* acc, const SimRows<T>& X, const Tensor& chunk, bool shared, Tensor& part) {
  const int64_t G = part.size(0), N = part.size(1), D = part.size(2), cs = chunk.size(2);
  auto add = [&](const Tensor& r, int64_t offset) {
    const T* rp = static_cast<const T*>(r.const_data_ptr());
    T* a = acc + offset;
    const int64_t n = r.numel();
    for (int64_t i = 0; i < n; ++i) a[i] += rp[i];
  };
  if (shared && X.stacked.has_value()) {
    const Tensor c0 = torch::stable::select(chunk, 0, 0);
    if (onednn_weight_grad<T>(D)) {
      add(std::get<1>(conv1x1_backward(as_image(*X.stacked, G * N, cs), as_image(c0, D, cs),
                                       torch::stable::view(part, {G * N, D, 1, 1}), 1, /*input_grad=*/false)),
          0);
    } else {
      mm_out(torch::stable::view(part, {G * N, D}), torch::stable::view(*X.stacked, {G * N, cs}),
             torch::stable::transpose(c0, 0, 1));
      add(part, 0);
    }
    return;
  }
  for (int64_t g = 0; g < G; ++g) {
    const Tensor cg = torch::stable::select(chunk, 0, shared ? 0 : g);
    const Tensor pg = torch::stable::select(part, 0, g);
    if (onednn_weight_grad<T>(D)) {
      add(std::get<1>(conv1x1_backward(as_image(X.parts[g], N, cs), as_image(cg, D, cs),
                                       torch::stable::view(pg, {N, D, 1, 1}), 1, /*input_grad=*/false)),
          g * N * D);
    } else {
      mm_out(pg, torch::stable::view(X.parts[g], {N, cs}), torch::stable::transpose(cg, 0, 1));
      add(pg, g * N * D);
    }
  }
}

// Whether a source set computes its similarities with BLAS into the workspace's sa / sb buffers.
template <typename T>
bool needs_blas_buffers(const Problem& p) {
  return !use_onednn<T>(p.Da) || (p.B > 0 && !use_onednn<T>(p.Db));
}

void ensure_workspace(Workspace& ws, const Tensor& like, int64_t A, int64_t B, int64_t N, int64_t Da, int64_t cs,
                      bool blas) {
  if (ws.cs == cs) return;
  ws.cs = cs;
  if (blas) {
    ws.sa = torch::stable::new_empty(like, {A, N, cs});
    if (B > 0) ws.sb = torch::stable::new_empty(like, {B, N, cs});
  }
  if (ws.part.dim() != 3) ws.part = torch::stable::new_empty(like, {A, N, Da});
}

// ------------------------------------------------------------------------------------------------
// Forward
// ------------------------------------------------------------------------------------------------
template <typename T>
struct FwdState {
  std::vector<double> sum1, sum2, shift1, shift2;  // (A*N), (P*N)
  std::vector<T> max1, max2;                       // running maxima of similarities / products
  std::vector<T> topv;                             // (M*N*topk)
  std::vector<int64_t> topi;
  T* jac = nullptr;                                // (A, N, Da) sum_j e_j scale_j Q_j, or null
};

// One streaming pass over all queue chunks: accumulates the shifted sums (and the top-k when
// do_topk, and the unnormalised Jacobian of lse1 when st.jac). shift1 / shift2 hold the exponent
// shift of every row.
template <typename T>
void forward_pass(const Problem& p, const Tensor& qa, const T* lpos, Tensor queue_a, const T* scale,
                  const std::optional<Tensor>& qb, std::optional<Tensor> queue_b, int64_t topk, bool do_topk,
                  FwdState<T>& st) {
  const int64_t A = p.A, N = p.N, P = p.P, M = p.M;
  const T it = static_cast<T>(1.0 / p.tau);
  const bool mine = do_topk && topk > 0;
  st.sum1.assign(A * N, 0.0);
  st.sum2.assign(P * N, 0.0);
  st.max1.assign(A * N, -std::numeric_limits<T>::infinity());
  st.max2.assign(P * N, -std::numeric_limits<T>::infinity());
  for (int64_t i = 0; i < A * N; ++i) {
    st.sum1[i] = std::exp(static_cast<double>(lpos[i]) * (1.0 / p.tau) - st.shift1[i]);  // the positive logit
    st.max1[i] = lpos[i];
  }
  if (mine) {
    st.topv.assign(M * N * topk, -std::numeric_limits<T>::infinity());
    st.topi.assign(M * N * topk, 0);
  }
  if (st.jac) std::fill(st.jac, st.jac + A * N * p.Da, T(0));
  Workspace ws;
  SimRows<T> sa, sb;
  const bool blas = needs_blas_buffers<T>(p);
  const int64_t chunk = chunk_columns((2 * A + p.B) * N, sizeof(T));  // sims A + B, and A for exp weights
  for (int64_t c0 = 0; c0 < p.K; c0 += chunk) {
    const int64_t cs = std::min(chunk, p.K - c0);
    ensure_workspace(ws, qa, A, p.B, N, p.Da, cs, blas);
    Tensor ca = queue_chunk(queue_a, c0, cs, p.ct, use_onednn<T>(p.Da), ws.conv_a);
    if (A > 0) chunk_sims(qa, ca, p.shared_a, ws.sa, sa);  // no sources of group A: a conv with 0 outputs fails
    if (p.B > 0) {
      Tensor cb = queue_chunk(*queue_b, c0, cs, p.ct, use_onednn<T>(p.Db), ws.conv_b);
      chunk_sims(*qb, cb, false, ws.sb, sb);
    }
    auto src = [&](int64_t m, int64_t n) -> const T* { return m < A ? sa.rows(m, n) : sb.rows(m - A, n); };
    torch::stable::parallel_for(0, N, 1, [&](int64_t n0, int64_t n1) {
      for (int64_t n = n0; n < n1; ++n) {
        for (int64_t a = 0; a < A; ++a) {
          T* s = sa.rows(a, n);
          if (scale) row_scale(s, scale + c0, cs);
          const int64_t r = a * N + n;
          if (st.jac) {
            // Gradient in the forward (performance.md §6 (5)): the exp weights replace the
            // similarities in place, then one GEMM per chunk accumulates sum_j e_j scale_j Q_j.
            // Mining reads the similarities before they are overwritten (extra pass only then).
            if (mine) {
              const T cmax = row_max(s, cs);
              if (cmax > st.topv[r * topk + topk - 1])
                topk_update(s, cs, c0, topk, st.topv.data() + r * topk, st.topi.data() + r * topk);
            }
            st.sum1[r] += row_exp_store(s, cs, it, static_cast<T>(st.shift1[r]), scale ? scale + c0 : nullptr,
                                        &st.max1[r]);
            continue;
          }
          T cmax = -std::numeric_limits<T>::infinity();
          st.sum1[r] += row_sum_exp(s, cs, it, static_cast<T>(st.shift1[r]), &cmax);
          st.max1[r] = std::max(st.max1[r], cmax);
          if (mine && cmax > st.topv[r * topk + topk - 1])
            topk_update(s, cs, c0, topk, st.topv.data() + r * topk, st.topi.data() + r * topk);
        }
        if (mine) {
          for (int64_t m = A; m < M; ++m) {
            const T* s = src(m, n);
            T* tv = st.topv.data() + (m * N + n) * topk;
            if (row_max(s, cs) > tv[topk - 1]) topk_update(s, cs, c0, topk, tv, st.topi.data() + (m * N + n) * topk);
          }
        }
        for (int64_t q = 0; q < P; ++q) {
          st.sum2[q * N + n] += row_sum_exp_prod(src(p.pa[q], n), src(p.pb[q], n), cs, it,
                                                 static_cast<T>(st.shift2[q * N + n]), &st.max2[q * N + n]);
        }
      }
    });
    if (st.jac) accumulate_xqt<T>(st.jac, sa, ca, p.shared_a, ws.part);
  }
}

std::tuple<Tensor, Tensor, Tensor, Tensor> contrastive_lse_cpu(Tensor qa, Tensor lpos, Tensor queue_a,
                                                               std::optional<Tensor> col_scale,
                                                               std::optional<Tensor> qb, std::optional<Tensor> queue_b,
                                                               std::vector<int64_t> pair_a,
                                                               std::vector<int64_t> pair_b, double tau, int64_t topk,
                                                               bool jacobian) {
  Problem p = make_problem(qa, lpos, queue_a, col_scale, qb, queue_b, pair_a, pair_b, tau);
  float_rows();  // the ISA pick (and its SKELFAST_LOSS_ISA errors) outside parallel_for, which would mask them
  STD_TORCH_CHECK(topk >= 0 && topk <= p.K, "skelfast::contrastive_lse: topk must be in [0, K=", p.K, "], got ", topk);
  STD_TORCH_CHECK(!jacobian || p.P == 0, "skelfast::contrastive_lse: jacobian=True needs an empty pair list");
  Tensor qac = torch::stable::contiguous(qa);
  Tensor lpc = torch::stable::contiguous(lpos);
  std::optional<Tensor> qbc, scc;
  if (qb.has_value()) qbc = torch::stable::contiguous(*qb);
  if (col_scale.has_value()) scc = torch::stable::contiguous(*col_scale);
  Tensor lse1 = torch::stable::new_empty(qac, {p.A, p.N});
  Tensor lse2 = torch::stable::new_empty(qac, {p.P, p.N});
  Tensor idx = torch::stable::new_empty(qac, {p.M, p.N, topk}, std::optional<ScalarType>(ScalarType::Long));
  Tensor jac = jacobian ? torch::stable::new_empty(qac, {p.A, p.N, p.Da}) : torch::stable::new_empty(qac, {0});
  if (p.N == 0) return {lse1, lse2, idx, jac};
  auto run = [&](auto tag) {
    using T = decltype(tag);
    const T* lp = static_cast<const T*>(lpc.const_data_ptr());
    const T* sc = scc.has_value() ? static_cast<const T*>(scc->const_data_ptr()) : nullptr;
    const double it = 1.0 / p.tau;
    FwdState<T> st;
    st.jac = jacobian ? static_cast<T*>(jac.mutable_data_ptr()) : nullptr;
    // Pass 1: static shift 1/tau (performance.md §1.4) plus the top-k.
    st.shift1.assign(p.A * p.N, it);
    st.shift2.assign(p.P * p.N, it);
    forward_pass<T>(p, qac, lp, queue_a, sc, qbc, queue_b, topk, true, st);
    // Rows whose maximum logit left the window around the shift (non-unit inputs, tiny tau) are
    // recomputed with their exact maximum as the shift: never a silently wrong (inf/0) sum.
    bool redo = false;
    std::vector<double> ex1(p.A * p.N), ex2(p.P * p.N);
    for (int64_t i = 0; i < p.A * p.N; ++i) {
      ex1[i] = static_cast<double>(st.max1[i]) * it;
      redo |= !losses::shift_ok(ex1[i], st.shift1[i]) || !std::isfinite(ex1[i]);
    }
    for (int64_t i = 0; i < p.P * p.N; ++i) {
      ex2[i] = static_cast<double>(st.max2[i]) * it;
      redo |= !losses::shift_ok(ex2[i], st.shift2[i]) || !std::isfinite(ex2[i]);
    }
    if (redo) {
      std::vector<T> topv = std::move(st.topv);
      std::vector<int64_t> topi = std::move(st.topi);
      st.shift1 = ex1;
      st.shift2 = ex2;
      forward_pass<T>(p, qac, lp, queue_a, sc, qbc, queue_b, topk, false, st);
      st.topv = std::move(topv);
      st.topi = std::move(topi);
    }
    T* l1 = static_cast<T*>(lse1.mutable_data_ptr());
    T* l2 = static_cast<T*>(lse2.mutable_data_ptr());
    for (int64_t i = 0; i < p.A * p.N; ++i) l1[i] = static_cast<T>(losses::lse_from_sum(st.shift1[i], st.sum1[i]));
    for (int64_t i = 0; i < p.P * p.N; ++i) l2[i] = static_cast<T>(losses::lse_from_sum(st.shift2[i], st.sum2[i]));
    if (topk > 0) std::memcpy(idx.mutable_data_ptr(), st.topi.data(), sizeof(int64_t) * p.M * p.N * topk);
    if (st.jac) {
      // d lse1 / d qa[a, n] = sum_j e_j scale_j Q_j / (tau * Z[a, n]) with the same shift in e and Z.
      for (int64_t i = 0; i < p.A * p.N; ++i) {
        const T f = static_cast<T>(it / st.sum1[i]);
        for (int64_t d = 0; d < p.Da; ++d) st.jac[i * p.Da + d] *= f;
      }
    }
  };
  if (p.ct == ScalarType::Double) run(double{}); else run(float{});
  return {lse1, lse2, idx, jac};
}

// ------------------------------------------------------------------------------------------------
// Backward: recompute each chunk's similarities, form dS in the row loops, dq += dS . chunk^T.
//   d lse1[a]/d S_a[j]        = exp(S_a[j]/tau - lse1[a]) / tau
//   d lse1[a]/d lpos[a]       = exp(lpos[a]/tau - lse1[a]) / tau
//   d lse2[p]/d S_{pa}[j]     = exp(S_pa[j] S_pb[j]/tau - lse2[p]) S_pb[j] / tau   (and symmetric)
// With col_scale, S_a = (q_a . Q[:, j]) * scale[j], so dS is multiplied by scale before the GEMM.
// ------------------------------------------------------------------------------------------------
std::tuple<Tensor, Tensor> contrastive_lse_backward_cpu(Tensor grad_lse1, Tensor grad_lse2, Tensor qa, Tensor lpos,
                                                        Tensor queue_a, std::optional<Tensor> col_scale,
                                                        std::optional<Tensor> qb, std::optional<Tensor> queue_b,
                                                        std::vector<int64_t> pair_a, std::vector<int64_t> pair_b,
                                                        double tau, Tensor lse1, Tensor lse2) {
  Problem p = make_problem(qa, lpos, queue_a, col_scale, qb, queue_b, pair_a, pair_b, tau);
  const char* op = "skelfast::contrastive_lse_backward";
  float_rows();
  STD_TORCH_CHECK(grad_lse1.dim() == 2 && grad_lse1.size(0) == p.A && grad_lse1.size(1) == p.N &&
                      grad_lse1.scalar_type() == p.ct && lse1.dim() == 2 && lse1.size(0) == p.A &&
                      lse1.size(1) == p.N && lse1.scalar_type() == p.ct,
                  op, ": grad_lse1 and lse1 must have shape (A, N) and qa's dtype");
  STD_TORCH_CHECK(grad_lse2.dim() == 2 && grad_lse2.size(0) == p.P && grad_lse2.size(1) == p.N &&
                      grad_lse2.scalar_type() == p.ct && lse2.dim() == 2 && lse2.size(0) == p.P &&
                      lse2.size(1) == p.N && lse2.scalar_type() == p.ct,
                  op, ": grad_lse2 and lse2 must have shape (P, N) and qa's dtype");
  Tensor qac = torch::stable::contiguous(qa);
  Tensor lpc = torch::stable::contiguous(lpos);
  Tensor g1c = torch::stable::contiguous(grad_lse1), g2c = torch::stable::contiguous(grad_lse2);
  Tensor l1c = torch::stable::contiguous(lse1), l2c = torch::stable::contiguous(lse2);
  std::optional<Tensor> qbc, scc;
  if (qb.has_value()) qbc = torch::stable::contiguous(*qb);
  if (col_scale.has_value()) scc = torch::stable::contiguous(*col_scale);
  Tensor dqa = torch::stable::new_zeros(qac, {p.A, p.N, p.Da});
  Tensor dlpos = torch::stable::new_empty(qac, {p.A, p.N});
  if (p.N == 0 || p.A == 0) return {dqa, dlpos};  // both empty: nothing has a gradient
  auto run = [&](auto tag) {
    using T = decltype(tag);
    const T it = static_cast<T>(1.0 / p.tau);
    const T* lp = static_cast<const T*>(lpc.const_data_ptr());
    const T* g1 = static_cast<const T*>(g1c.const_data_ptr());
    const T* g2 = static_cast<const T*>(g2c.const_data_ptr());
    const T* l1 = static_cast<const T*>(l1c.const_data_ptr());
    const T* l2 = static_cast<const T*>(l2c.const_data_ptr());
    const T* sc = scc.has_value() ? static_cast<const T*>(scc->const_data_ptr()) : nullptr;
    T* dq = static_cast<T*>(dqa.mutable_data_ptr());
    T* dl = static_cast<T*>(dlpos.mutable_data_ptr());
    for (int64_t i = 0; i < p.A * p.N; ++i) {
      dl[i] = static_cast<T>(static_cast<double>(g1[i]) * (1.0 / p.tau) *
                             std::exp(static_cast<double>(lp[i]) / p.tau - static_cast<double>(l1[i])));
    }
    const int64_t A = p.A, N = p.N;
    Workspace ws;
    SimRows<T> sa, sb;
    const bool blas = needs_blas_buffers<T>(p);
    Tensor dS;
    SimRows<T> dS_rows;
    const int64_t chunk = chunk_columns((2 * A + p.B) * N, sizeof(T));  // sims A + B, dS A
    for (int64_t c0 = 0; c0 < p.K; c0 += chunk) {
      const int64_t cs = std::min(chunk, p.K - c0);
      if (ws.cs != cs) {
        dS = torch::stable::new_empty(qac, {A, N, cs});
        dS_rows = SimRows<T>::of(dS);
      }
      ensure_workspace(ws, qac, A, p.B, N, p.Da, cs, blas);
      Tensor ca = queue_chunk(queue_a, c0, cs, p.ct, use_onednn<T>(p.Da), ws.conv_a);
      chunk_sims(qac, ca, p.shared_a, ws.sa, sa);
      if (p.B > 0) {
        Tensor cb = queue_chunk(*queue_b, c0, cs, p.ct, use_onednn<T>(p.Db), ws.conv_b);
        chunk_sims(*qbc, cb, false, ws.sb, sb);
      }
      T* dsp = static_cast<T*>(dS.mutable_data_ptr());
      std::fill(dsp, dsp + A * N * cs, T(0));
      auto src = [&](int64_t m, int64_t n) -> const T* { return m < A ? sa.rows(m, n) : sb.rows(m - A, n); };
      torch::stable::parallel_for(0, N, 1, [&](int64_t n0, int64_t n1) {
        for (int64_t n = n0; n < n1; ++n) {
          if (sc) {
            for (int64_t a = 0; a < A; ++a) row_scale(sa.rows(a, n), sc + c0, cs);
          }
          for (int64_t a = 0; a < A; ++a) {
            const T g = g1[a * N + n];
            if (g != T(0)) row_grad_exp(dsp + (a * N + n) * cs, sa.rows(a, n), cs, g * it, it, l1[a * N + n]);
          }
          for (int64_t q = 0; q < p.P; ++q) {
            const T g = g2[q * N + n];
            if (g == T(0)) continue;
            const int64_t ma = p.pa[q], mb = p.pb[q];
            T* da = ma < A ? dsp + (ma * N + n) * cs : nullptr;
            T* db = mb < A ? dsp + (mb * N + n) * cs : nullptr;
            if (da || db) row_grad_exp_prod(da, db, src(ma, n), src(mb, n), cs, g * it, it, l2[q * N + n]);
          }
          if (sc) {
            for (int64_t a = 0; a < A; ++a) row_scale(dsp + (a * N + n) * cs, sc + c0, cs);
          }
        }
      });
      accumulate_xqt<T>(dq, dS_rows, ca, p.shared_a, ws.part);
    }
  };
  if (p.ct == ScalarType::Double) run(double{}); else run(float{});
  return {dqa, dlpos};
}

}  // namespace
}  // namespace skelfast

STABLE_TORCH_LIBRARY_IMPL(skelfast, CPU, m) {
  m.impl("contrastive_lse", TORCH_BOX(&skelfast::contrastive_lse_cpu));
  m.impl("contrastive_lse_backward", TORCH_BOX(&skelfast::contrastive_lse_backward_cpu));
}
