// CUDA kernels of skelfast::graph_conv (method.md §4.1): the graph aggregation and its backward,
// layout epilogues, bias terms. One thread per output element; the group's (K, V, V) edge weights
// sit in shared memory (dense: on the GPU the 25-wide dense dot is cheaper than an edge-list
// gather and the kernels are bandwidth-bound). Layer: torch-free kernel.
#include "graph_conv.cuh"
#include "skelfast/cuda_check.h"

namespace skelfast {
namespace {

constexpr int kThreads = 256;
constexpr size_t kMaxSmem = 48 * 1024;  // default dynamic shared-memory limit: ae of one group must fit

inline unsigned grid_for(int64_t work) {
  const int64_t blocks = (work + kThreads - 1) / kThreads;
  return static_cast<unsigned>(blocks < 65535 * 32 ? blocks : 65535 * 32);
}

template <typename T>
__device__ __forceinline__ acc_t<T> ld(const T* p) {
  return Cvt<T, acc_t<T>>::load(*p);
}
template <>
__device__ __forceinline__ double ld<double>(const double* p) {
  return *p;
}
template <>
__device__ __forceinline__ float ld<float>(const float* p) {
  return *p;
}
template <typename T>
__device__ __forceinline__ T st(acc_t<T> v) {
  return Cvt<T, acc_t<T>>::store(v);
}
template <>
__device__ __forceinline__ float st<float>(float v) {
  return v;
}
template <>
__device__ __forceinline__ double st<double>(double v) {
  return v;
}

template <typename A>
__global__ void edge_weights_kernel(GcShape s, const A* __restrict__ adj, const A* __restrict__ imp,
                                    int64_t e_group_stride, A* __restrict__ ae) {
  const int64_t kvv = s.K * s.V * s.V, total = s.G * kvv;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t g = i / kvv, j = i % kvv;
    ae[i] = adj[j] * (imp ? imp[g * e_group_stride + j] : A(1));
  }
}

template <typename T>
__global__ void bias_eff_kernel(GcShape s, const T* __restrict__ bias, const acc_t<T>* __restrict__ ae,
                                acc_t<T>* __restrict__ beff) {
  using A = acc_t<T>;
  const int64_t total = s.G * s.Cout * s.V;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t w = i % s.V, c = (i / s.V) % s.Cout, g = i / (s.V * s.Cout);
    A acc = A(0);
    if (bias)
      for (int64_t k = 0; k < s.K; ++k) {
        A col = A(0);
        for (int64_t v = 0; v < s.V; ++v) col += ae[((g * s.K + k) * s.V + v) * s.V + w];
        acc += ld(bias + (g * s.K + k) * s.Cout + c) * col;
      }
    beff[i] = acc;
  }
}

template <typename A>
__device__ void load_group_ae(const A* ae, A* sh, int64_t g, int64_t kvv) {
  for (int64_t i = threadIdx.x; i < kvv; i += blockDim.x) sh[i] = ae[g * kvv + i];
  __syncthreads();
}

template <typename T>
__global__ void aggregate_kernel(GcShape s, int64_t g, const T* __restrict__ x, const acc_t<T>* __restrict__ ae,
                                 T* __restrict__ z) {
  using A = acc_t<T>;
  extern __shared__ unsigned char smem[];
  A* sae = reinterpret_cast<A*>(smem);
  load_group_ae(ae, sae, g, s.K * s.V * s.V);
  const int64_t R = s.B * s.T, total = s.K * s.Cin * R * s.V;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t w = i % s.V, r = (i / s.V) % R, kc = i / (s.V * R);
    const int64_t ci = kc % s.Cin, k = kc / s.Cin, t = r % s.T, b = r / s.T;
    const T* xr = x + ((b * s.G + g) * s.Cin + ci) * s.T * s.V + t * s.V;
    const A* a = sae + k * s.V * s.V + w;
    A acc = A(0);
    for (int64_t v = 0; v < s.V; ++v) acc += ld(xr + v) * a[v * s.V];
    z[i] = st<T>(acc);
  }
}

template <typename T>
__global__ void epilogue_kernel(GcShape s, int64_t g, const T* __restrict__ o, const acc_t<T>* __restrict__ beff,
                                T* __restrict__ out) {
  const int64_t R = s.B * s.T, total = s.Cout * R * s.V;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    // i enumerates out[b, g*Cout + c, t, w] in (b, c, t, w) order: coalesced writes
    const int64_t w = i % s.V, t = (i / s.V) % s.T, c = (i / (s.V * s.T)) % s.Cout, b = i / (s.V * s.T * s.Cout);
    const acc_t<T> v = ld(o + c * R * s.V + (b * s.T + t) * s.V + w) + beff[(g * s.Cout + c) * s.V + w];
    out[((b * s.G + g) * s.Cout + c) * s.T * s.V + t * s.V + w] = st<T>(v);
  }
}

template <typename T>
__global__ void gather_grad_kernel(GcShape s, int64_t g, const T* __restrict__ grad_out, T* __restrict__ gg) {
  const int64_t R = s.B * s.T, total = s.Cout * R * s.V;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t w = i % s.V, t = (i / s.V) % s.T, c = (i / (s.V * s.T)) % s.Cout, b = i / (s.V * s.T * s.Cout);
    gg[c * R * s.V + (b * s.T + t) * s.V + w] = grad_out[((b * s.G + g) * s.Cout + c) * s.T * s.V + t * s.V + w];
  }
}

template <typename T>
__global__ void grad_colsum_kernel(GcShape s, const T* __restrict__ grad_out, acc_t<T>* __restrict__ rsum) {
  // one block per (g, c); threads stride over (b, t, w), shared-memory reduction per w
  using A = acc_t<T>;
  extern __shared__ unsigned char smem[];
  A* part = reinterpret_cast<A*>(smem);  // (blockDim.x) partials, reduced per w below
  const int64_t gc = blockIdx.x, g = gc / s.Cout, c = gc % s.Cout;
  for (int64_t w = 0; w < s.V; ++w) {
    A acc = A(0);
    for (int64_t r = threadIdx.x; r < s.B * s.T; r += blockDim.x) {
      const int64_t b = r / s.T, t = r % s.T;
      acc += ld(grad_out + ((b * s.G + g) * s.Cout + c) * s.T * s.V + t * s.V + w);
    }
    part[threadIdx.x] = acc;
    __syncthreads();
    for (int step = blockDim.x / 2; step > 0; step >>= 1) {
      if (threadIdx.x < step) part[threadIdx.x] += part[threadIdx.x + step];
      __syncthreads();
    }
    if (threadIdx.x == 0) rsum[gc * s.V + w] = part[0];
    __syncthreads();
  }
}

template <typename T>
__global__ void aggregate_backward_kernel(GcShape s, int64_t g, const T* __restrict__ dz,
                                          const acc_t<T>* __restrict__ ae, T* __restrict__ dx) {
  using A = acc_t<T>;
  extern __shared__ unsigned char smem[];
  A* sae = reinterpret_cast<A*>(smem);
  load_group_ae(ae, sae, g, s.K * s.V * s.V);
  const int64_t R = s.B * s.T, total = s.B * s.Cin * s.T * s.V;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    // i enumerates dx[b, g*Cin + ci, t, v] in (b, ci, t, v) order
    const int64_t v = i % s.V, t = (i / s.V) % s.T, ci = (i / (s.V * s.T)) % s.Cin, b = i / (s.V * s.T * s.Cin);
    const int64_t r = b * s.T + t;
    A acc = A(0);
    for (int64_t k = 0; k < s.K; ++k) {
      const T* dzr = dz + (k * s.Cin + ci) * R * s.V + r * s.V;
      const A* a = sae + (k * s.V + v) * s.V;
      for (int64_t w = 0; w < s.V; ++w) acc += ld(dzr + w) * a[w];
    }
    dx[((b * s.G + g) * s.Cin + ci) * s.T * s.V + t * s.V + v] = st<T>(acc);
  }
}

template <typename T>
__global__ void finalize_kernel(GcShape s, const T* __restrict__ bias, const acc_t<T>* __restrict__ adj,
                                const acc_t<T>* __restrict__ ae, const acc_t<T>* __restrict__ rsum,
                                const acc_t<T>* __restrict__ dae, T* __restrict__ db, acc_t<T>* __restrict__ de) {
  using A = acc_t<T>;
  const int64_t kvv = s.K * s.V * s.V, n_de = s.G * kvv, n_db = s.G * s.K * s.Cout;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n_de + n_db;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    if (i < n_de) {
      const int64_t g = i / kvv, j = i % kvv, k = j / (s.V * s.V), w = j % s.V;
      A acc = dae[i];
      if (bias)
        for (int64_t c = 0; c < s.Cout; ++c) acc += ld(bias + (g * s.K + k) * s.Cout + c) * rsum[(g * s.Cout + c) * s.V + w];
      de[i] = adj[j] * acc;
    } else {
      const int64_t q = i - n_de, c = q % s.Cout, k = (q / s.Cout) % s.K, g = q / (s.Cout * s.K);
      A acc = A(0);
      for (int64_t w = 0; w < s.V; ++w) {
        A col = A(0);
        for (int64_t v = 0; v < s.V; ++v) col += ae[((g * s.K + k) * s.V + v) * s.V + w];
        acc += rsum[(g * s.Cout + c) * s.V + w] * col;
      }
      db[q] = st<T>(acc);
    }
  }
}

}  // namespace

template <typename A>
cudaError_t launch_gc_edge_weights(const GcShape& s, const A* adj, const A* imp, int64_t e_group_stride, A* ae,
                                   cudaStream_t stream) {
  const int64_t total = s.G * s.K * s.V * s.V;
  if (total == 0) return cudaSuccess;
  edge_weights_kernel<A><<<grid_for(total), kThreads, 0, stream>>>(s, adj, imp, e_group_stride, ae);
  return cudaGetLastError();
}

template <typename T>
cudaError_t launch_gc_bias_eff(const GcShape& s, const T* bias, const acc_t<T>* ae, acc_t<T>* beff,
                               cudaStream_t stream) {
  const int64_t total = s.G * s.Cout * s.V;
  if (total == 0) return cudaSuccess;
  bias_eff_kernel<T><<<grid_for(total), kThreads, 0, stream>>>(s, bias, ae, beff);
  return cudaGetLastError();
}

template <typename T>
cudaError_t launch_gc_aggregate(const GcShape& s, int64_t g, const T* x, const acc_t<T>* ae, T* z,
                                cudaStream_t stream) {
  const int64_t total = s.K * s.Cin * s.B * s.T * s.V;
  if (total == 0) return cudaSuccess;
  const size_t smem = sizeof(acc_t<T>) * s.K * s.V * s.V;
  if (smem > kMaxSmem) return cudaErrorInvalidValue;
  aggregate_kernel<T><<<grid_for(total), kThreads, smem, stream>>>(s, g, x, ae, z);
  return cudaGetLastError();
}

template <typename T>
cudaError_t launch_gc_epilogue(const GcShape& s, int64_t g, const T* o, const acc_t<T>* beff, T* out,
                               cudaStream_t stream) {
  const int64_t total = s.Cout * s.B * s.T * s.V;
  if (total == 0) return cudaSuccess;
  epilogue_kernel<T><<<grid_for(total), kThreads, 0, stream>>>(s, g, o, beff, out);
  return cudaGetLastError();
}

template <typename T>
cudaError_t launch_gc_gather_grad(const GcShape& s, int64_t g, const T* grad_out, T* gg, cudaStream_t stream) {
  const int64_t total = s.Cout * s.B * s.T * s.V;
  if (total == 0) return cudaSuccess;
  gather_grad_kernel<T><<<grid_for(total), kThreads, 0, stream>>>(s, g, grad_out, gg);
  return cudaGetLastError();
}

template <typename T>
cudaError_t launch_gc_grad_colsum(const GcShape& s, const T* grad_out, acc_t<T>* rsum, cudaStream_t stream) {
  const int64_t blocks = s.G * s.Cout;
  if (blocks == 0) return cudaSuccess;
  grad_colsum_kernel<T><<<static_cast<unsigned>(blocks), kThreads, sizeof(acc_t<T>) * kThreads, stream>>>(
      s, grad_out, rsum);
  return cudaGetLastError();
}

template <typename T>
cudaError_t launch_gc_aggregate_backward(const GcShape& s, int64_t g, const T* dz, const acc_t<T>* ae, T* dx,
                                         cudaStream_t stream) {
  const int64_t total = s.B * s.Cin * s.T * s.V;
  if (total == 0) return cudaSuccess;
  const size_t smem = sizeof(acc_t<T>) * s.K * s.V * s.V;
  if (smem > kMaxSmem) return cudaErrorInvalidValue;
  aggregate_backward_kernel<T><<<grid_for(total), kThreads, smem, stream>>>(s, g, dz, ae, dx);
  return cudaGetLastError();
}

template <typename T>
cudaError_t launch_gc_finalize(const GcShape& s, const T* bias, const acc_t<T>* adj, const acc_t<T>* ae,
                               const acc_t<T>* rsum, const acc_t<T>* dae, T* db, acc_t<T>* de, cudaStream_t stream) {
  const int64_t total = s.G * s.K * s.V * s.V + s.G * s.K * s.Cout;
  if (total == 0) return cudaSuccess;
  finalize_kernel<T><<<grid_for(total), kThreads, 0, stream>>>(s, bias, adj, ae, rsum, dae, db, de);
  return cudaGetLastError();
}

template cudaError_t launch_gc_edge_weights<float>(const GcShape&, const float*, const float*, int64_t, float*,
                                                   cudaStream_t);
template cudaError_t launch_gc_edge_weights<double>(const GcShape&, const double*, const double*, int64_t, double*,
                                                    cudaStream_t);

#define SKELFAST_GC_INSTANTIATE(T)                                                                                   \
  template cudaError_t launch_gc_bias_eff<T>(const GcShape&, const T*, const acc_t<T>*, acc_t<T>*, cudaStream_t);    \
  template cudaError_t launch_gc_aggregate<T>(const GcShape&, int64_t, const T*, const acc_t<T>*, T*, cudaStream_t); \
  template cudaError_t launch_gc_epilogue<T>(const GcShape&, int64_t, const T*, const acc_t<T>*, T*, cudaStream_t);  \
  template cudaError_t launch_gc_gather_grad<T>(const GcShape&, int64_t, const T*, T*, cudaStream_t);                \
  template cudaError_t launch_gc_grad_colsum<T>(const GcShape&, const T*, acc_t<T>*, cudaStream_t);                  \
  template cudaError_t launch_gc_aggregate_backward<T>(const GcShape&, int64_t, const T*, const acc_t<T>*, T*,       \
                                                       cudaStream_t);                                                \
  template cudaError_t launch_gc_finalize<T>(const GcShape&, const T*, const acc_t<T>*, const acc_t<T>*,             \
                                             const acc_t<T>*, const acc_t<T>*, T*, acc_t<T>*, cudaStream_t);
SKELFAST_GC_INSTANTIATE(float)
SKELFAST_GC_INSTANTIATE(double)
SKELFAST_GC_INSTANTIATE(__half)
SKELFAST_GC_INSTANTIATE(__nv_bfloat16)
#undef SKELFAST_GC_INSTANTIATE

}  // namespace skelfast
