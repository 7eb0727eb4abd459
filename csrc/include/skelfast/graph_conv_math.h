// Row kernels of the sparse graph aggregation in skelfast::graph_conv (method.md §4.1), shared by
// the CPU kernel and the CUDA kernels.
// Layer: torch-free header (compiles with g++ and with nvcc).
//
// The adjacency A (K, V, V) is ~96% zeros for NTU-25 (73 non-zeros of 1875), so the aggregation
// runs over a list of non-zero entries (k, v, w) of A with per-group values ae = A[k,v,w]·E[g,k,v,w].
// This is exact maths (zero entries contribute exactly 0) and works for any A, dense included.
//
// Layout used by the op ("post" ordering, pyskl conv_pos='post', performance.md §4): per group g
// the aggregated input z_g has shape (K*Cin, B*T*W) so the 1x1 projection is one plain GEMM
//   O_g (Cout, B*T*W) = Wp_g (Cout, K*Cin) @ z_g (K*Cin, B*T*W),  Wp_g[c, k*Cin+ci] = W[g,k,c,ci].
// A "row" is one (ci, b, t) of group g: x row x[b, g*Cin+ci, t, :] (V contiguous values) and the
// K rows z_g[k*Cin+ci, (b*T+t)*V : +V] (stride between k rows: Cin*B*T*V).
#pragma once

#include <cstdint>

#include "skelfast/hd.h"

namespace skelfast {

struct GraphEntry {
  int32_t k, v, w;  // A[k, v, w] != 0: source joint v, target joint w, subset k
};

// Storage conversion T <-> accumulation type A (CPU half/bfloat16 convert implicitly; the CUDA
// specialisations live in graph_conv_cuda_types.h).
template <typename T, typename A>
struct GcCvt {
  static SKELFAST_HD A load(T v) { return static_cast<A>(v); }
  static SKELFAST_HD T store(A v) { return static_cast<T>(v); }
};

// z[k][w] = sum over entries (k, v, w) of x[v] * ae; tmp has K*V accumulators.
template <typename T, typename A>
SKELFAST_HD void gc_aggregate_row(const T* x, T* z, int64_t z_kstride, const GraphEntry* e, const A* ae, int nnz,
                                  int K, int V, A* tmp) {
  for (int i = 0; i < K * V; ++i) tmp[i] = A(0);
  for (int i = 0; i < nnz; ++i) tmp[e[i].k * V + e[i].w] += GcCvt<T, A>::load(x[e[i].v]) * ae[i];
  for (int k = 0; k < K; ++k)
    for (int w = 0; w < V; ++w) z[k * z_kstride + w] = GcCvt<T, A>::store(tmp[k * V + w]);
}

// Backward of the aggregation for one row: dx[v] = sum over entries of dz[k][w] * ae and the
// edge-weight gradient accumulators dae[i] += x[v] * dz[k][w] (d(ae) for entry i, this row).
template <typename T, typename A>
SKELFAST_HD void gc_aggregate_row_backward(const T* x, const T* dz, int64_t dz_kstride, T* dx, const GraphEntry* e,
                                           const A* ae, int nnz, int V, A* tmp, A* dae) {
  for (int v = 0; v < V; ++v) tmp[v] = A(0);
  for (int i = 0; i < nnz; ++i) {
    const A g = GcCvt<T, A>::load(dz[e[i].k * dz_kstride + e[i].w]);
    tmp[e[i].v] += g * ae[i];
    dae[i] += GcCvt<T, A>::load(x[e[i].v]) * g;
  }
  for (int v = 0; v < V; ++v) dx[v] = GcCvt<T, A>::store(tmp[v]);
}

}  // namespace skelfast
