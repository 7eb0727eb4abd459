// Launchers of the graph_conv CUDA kernels (method.md §4.1); the 1x1 projections are cuBLAS GEMMs
// issued by the binding. Layer: torch-free kernel interface; T in {float, double, __half,
// __nv_bfloat16}, accumulation acc_t<T> (float, double for double).
//
// Shapes (G groups, K subsets, V joints, R = B*T rows):
//   x (B, G*Cin, T, V); ae (G, K, V, V) = A * E in acc_t<T>; z (K*Cin, R*V) for ONE group g;
//   out (B, G*Cout, T, V); o (Cout, R*V) for one group; beff (G, Cout, V) in acc_t<T>.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "skelfast/cuda_types.h"

namespace skelfast {

struct GcShape {
  int64_t B, G, Cin, Cout, K, T, V;
};

// ae[g,k,v,w] = A[k,v,w] * (E ? E[g,k,v,w] : 1); E may be shared over g (e_group_stride = 0).
template <typename A>
cudaError_t launch_gc_edge_weights(const GcShape& s, const A* adj, const A* imp, int64_t e_group_stride, A* ae,
                                   cudaStream_t stream);
// beff[g,c,w] = sum_k bias[g,k,c] * sum_v ae[g,k,v,w]  (bias may be null: beff = 0)
template <typename T>
cudaError_t launch_gc_bias_eff(const GcShape& s, const T* bias, const acc_t<T>* ae, acc_t<T>* beff,
                               cudaStream_t stream);
// z[k*Cin+ci, r*V + w] = sum_v x[b, g*Cin+ci, t, v] * ae[g,k,v,w]   (group g)
template <typename T>
cudaError_t launch_gc_aggregate(const GcShape& s, int64_t g, const T* x, const acc_t<T>* ae, T* z,
                                cudaStream_t stream);
// out[b, g*Cout+c, t, w] = o[c, r*V + w] + beff[g,c,w]   (group g)
template <typename T>
cudaError_t launch_gc_epilogue(const GcShape& s, int64_t g, const T* o, const acc_t<T>* beff, T* out,
                               cudaStream_t stream);
// gg[c, r*V + w] = grad_out[b, g*Cout+c, t, w]   (group g)
template <typename T>
cudaError_t launch_gc_gather_grad(const GcShape& s, int64_t g, const T* grad_out, T* gg, cudaStream_t stream);
// rsum[g,c,w] = sum_{b,t} grad_out[b, g*Cout+c, t, w]   (all groups)
template <typename T>
cudaError_t launch_gc_grad_colsum(const GcShape& s, const T* grad_out, acc_t<T>* rsum, cudaStream_t stream);
// dx[b, g*Cin+ci, t, v] = sum_k sum_w dz[k*Cin+ci, r*V + w] * ae[g,k,v,w]   (group g)
template <typename T>
cudaError_t launch_gc_aggregate_backward(const GcShape& s, int64_t g, const T* dz, const acc_t<T>* ae, T* dx,
                                         cudaStream_t stream);
// db[g,k,c] = sum_w rsum[g,c,w] * sum_v ae[g,k,v,w];
// de[g,k,v,w] = A[k,v,w] * (dae[g,k,v,w] + sum_c bias[g,k,c] rsum[g,c,w])
template <typename T>
cudaError_t launch_gc_finalize(const GcShape& s, const T* bias, const acc_t<T>* adj, const acc_t<T>* ae,
                               const acc_t<T>* rsum, const acc_t<T>* dae, T* db, acc_t<T>* de, cudaStream_t stream);

}  // namespace skelfast
