// Vectorisable CPU forward of the six modalities (method.md §3.3) for one (n, m) sequence.
// Layer: torch-free CPU kernel. The sequence is transposed into structure-of-arrays buffers
// buf[c][v][t] (time innermost, contiguous), every modality is computed by simple loops over t
// that the compiler vectorises, and the results are transposed back into (N, G, 3, T, V, M).
// Same formulas as csrc/include/skelfast/modalities_math.h (the CUDA path); for float the angle
// uses a vectorisable atan2 (Cephes atanf reduction, ~2e-7 abs), for double std::atan2.
#pragma once

#include <cmath>
#include <cstdint>
#include <vector>

#include "skelfast/modalities_math.h"

namespace skelfast {
namespace cpu {

inline float atan01(float z) {  // z in [0, 1]
  const bool big = z > 0.41421356237309503f;
  const float reduced = (z - 1.0f) / (z + 1.0f);  // computed unconditionally: a select, not a branch
  const float w = big ? reduced : z;
  const float w2 = w * w;
  const float p = (((8.05374449538e-2f * w2 - 1.38776856032e-1f) * w2 + 1.99777106478e-1f) * w2 - 3.33329491539e-1f) *
                      w2 * w + w;
  return big ? 0.7853981633974483f + p : p;
}

// atan2(y, x) for y >= 0 (a norm), with atan2(0, 0) = 0; branch-free so loops vectorise.
inline float angle_atan2(float y, float x) {
  const float ax = std::fabs(x);
  const float hi = y > ax ? y : ax, lo = y > ax ? ax : y;
  float a = atan01(lo / (hi > 0.0f ? hi : 1.0f));  // hi = 0 only when lo = 0
  a = y > ax ? 1.5707963267948966f - a : a;
  return x < 0.0f ? 3.141592653589793f - a : a;
}
inline double angle_atan2(double y, double x) { return std::atan2(y, x + 0.0); }  // -0 -> +0: see bone_angle

template <typename A>
struct SeqBuffers {
  std::vector<A> x, bone, axis, theta, out;  // [3][V][T], [3][V][T], [3][V][T], [V][T], [3][V][T]
  void resize(int64_t V, int64_t T) {
    x.resize(3 * V * T);
    bone.resize(3 * V * T);
    axis.resize(3 * V * T);
    theta.resize(V * T);
    out.resize(3 * V * T);
  }
};

// u <- u / max(|u|, eps) over t for 3 channel rows.
template <typename A>
inline void normalise_rows(A* __restrict__ ux, A* __restrict__ uy, A* __restrict__ uz, int64_t T) {
  for (int64_t t = 0; t < T; ++t) {
    const A n = std::sqrt(ux[t] * ux[t] + uy[t] * uy[t] + uz[t] * uz[t]);
    const A inv = A(1) / (n > A(kNormEps) ? n : A(kNormEps));
    ux[t] *= inv;
    uy[t] *= inv;
    uz[t] *= inv;
  }
}

template <typename T, typename A>
void modalities_forward_sequence_simd(const ModalitiesParams& p, const T* __restrict__ x, const A* __restrict__ scale,
                                      T* __restrict__ out, int64_t seq, SeqBuffers<A>& b) {
  const int64_t M = p.M, V = p.V, TT = p.T;
  const int64_t m = seq % M, n = seq / M;
  const A f = scale ? scale[n] : A(1);
  const int64_t vm = V * M, cs = TT * vm;
  b.resize(V, TT);
  const int64_t VT = V * TT;
  A* __restrict__ X = b.x.data();
  // gather the sequence into [c][v][t]
  const T* xs = x + n * 3 * cs + m;
  for (int c = 0; c < 3; ++c)
    for (int64_t t = 0; t < TT; ++t)
      for (int64_t v = 0; v < V; ++v) X[c * VT + v * TT + t] = Cvt<T, A>::load(xs[c * cs + t * vm + v * M]);

  T* o_base = out + n * p.num_out * 3 * cs + m;
  // scatter buf[c][v][t] into output slot of `mod`
  auto emit = [&](int32_t mod, const A* buf) {
    T* o = o_base + p.slot[mod] * 3 * cs;
    for (int c = 0; c < 3; ++c)
      for (int64_t t = 0; t < TT; ++t)
        for (int64_t v = 0; v < V; ++v) o[c * cs + t * vm + v * M] = Cvt<T, A>::store(buf[c * VT + v * TT + t]);
  };
  A* __restrict__ O = b.out.data();

  if (p.slot[kJoint] >= 0) emit(kJoint, X);
  if (p.slot[kMotion] >= 0 || p.slot[kAcceleration] >= 0) {
    for (int64_t r = 0; r < 3 * V; ++r) {  // Mo[t] = f (x[t+1] - x[t]); zero at T-1
      const A* xr = X + r * TT;
      A* mr = O + r * TT;
      for (int64_t t = 0; t + 1 < TT; ++t) mr[t] = f * (xr[t + 1] - xr[t]);
      mr[TT - 1] = A(0);
    }
    if (p.slot[kMotion] >= 0) emit(kMotion, O);
    if (p.slot[kAcceleration] >= 0) {
      for (int64_t r = 0; r < 3 * V; ++r) {  // Ac[t] = f (f (x[t+2] - x[t+1]) - Mo[t]); zero at T-2, T-1
        const A* xr = X + r * TT;
        A* ar = O + r * TT;
        for (int64_t t = 0; t + 2 < TT; ++t) ar[t] = f * (f * (xr[t + 2] - xr[t + 1]) - ar[t]);
        for (int64_t t = TT >= 2 ? TT - 2 : 0; t < TT; ++t) ar[t] = A(0);
      }
      emit(kAcceleration, O);
    }
  }
  if (p.slot[kBone] < 0 && p.slot[kRotationAxis] < 0 && p.slot[kOmega] < 0) return;

  A* __restrict__ B = b.bone.data();
  for (int64_t v = 0; v < V; ++v) {
    A *bx = B + v * TT, *by = B + VT + v * TT, *bz = B + 2 * VT + v * TT;
    if (v == p.normal_joint) {  // nrm((x[a] - x[b]) x (x[c] - x[b]))
      const int64_t ja = p.normal_a * TT, jb = p.normal_b * TT, jc = p.normal_c * TT;
      for (int64_t t = 0; t < TT; ++t) {
        const A ux = X[ja + t] - X[jb + t], uy = X[VT + ja + t] - X[VT + jb + t], uz = X[2 * VT + ja + t] - X[2 * VT + jb + t];
        const A wx = X[jc + t] - X[jb + t], wy = X[VT + jc + t] - X[VT + jb + t], wz = X[2 * VT + jc + t] - X[2 * VT + jb + t];
        bx[t] = uy * wz - uz * wy;
        by[t] = uz * wx - ux * wz;
        bz[t] = ux * wy - uy * wx;
      }
      normalise_rows(bx, by, bz, TT);
    } else {
      const int64_t pv = p.bone_parent[v] * TT;
      for (int c = 0; c < 3; ++c) {
        const A* xc = X + c * VT;
        A* bc = B + c * VT + v * TT;
        for (int64_t t = 0; t < TT; ++t) bc[t] = xc[v * TT + t] - xc[pv + t];
      }
    }
  }
  if (p.slot[kBone] >= 0) emit(kBone, B);

  A* __restrict__ R = b.axis.data();
  for (int64_t v = 0; v < V; ++v) {  // R[v] = B[v] x B[A[v]]
    const int64_t a = p.axis_partner[v] * TT, vv = v * TT;
    for (int64_t t = 0; t < TT; ++t) {
      const A b0 = B[vv + t], b1 = B[VT + vv + t], b2 = B[2 * VT + vv + t];
      const A a0 = B[a + t], a1 = B[VT + a + t], a2 = B[2 * VT + a + t];
      R[vv + t] = b1 * a2 - b2 * a1;
      R[VT + vv + t] = b2 * a0 - b0 * a2;
      R[2 * VT + vv + t] = b0 * a1 - b1 * a0;
    }
  }
  if (p.slot[kRotationAxis] >= 0) emit(kRotationAxis, R);
  if (p.slot[kOmega] < 0) return;

  // theta[v][t] = atan2(|bh x ah|, bh . ah) on unit bones; unit bones go into O as scratch.
  A* __restrict__ Bh = O;
  for (int64_t i = 0; i < 3 * VT; ++i) Bh[i] = B[i];
  for (int64_t v = 0; v < V; ++v) normalise_rows(Bh + v * TT, Bh + VT + v * TT, Bh + 2 * VT + v * TT, TT);
  A* __restrict__ TH = b.theta.data();
  for (int64_t v = 0; v < V; ++v) {
    const int64_t a = p.axis_partner[v] * TT, vv = v * TT;
    for (int64_t t = 0; t < TT; ++t) {
      const A b0 = Bh[vv + t], b1 = Bh[VT + vv + t], b2 = Bh[2 * VT + vv + t];
      const A a0 = Bh[a + t], a1 = Bh[VT + a + t], a2 = Bh[2 * VT + a + t];
      const A c0 = b1 * a2 - b2 * a1, c1 = b2 * a0 - b0 * a2, c2 = b0 * a1 - b1 * a0;
      TH[vv + t] = angle_atan2(std::sqrt(c0 * c0 + c1 * c1 + c2 * c2), b0 * a0 + b1 * a1 + b2 * a2);
    }
  }
  // Om[t] = f (theta[t+1] - theta[t]) nrm(R[t]); the axis at time t; zero at T-1.
  for (int64_t i = 0; i < 3 * VT; ++i) O[i] = R[i];
  for (int64_t v = 0; v < V; ++v) {
    A *ox = O + v * TT, *oy = O + VT + v * TT, *oz = O + 2 * VT + v * TT;
    normalise_rows(ox, oy, oz, TT);
    const A* th = TH + v * TT;
    for (int64_t t = 0; t + 1 < TT; ++t) {
      const A d = f * (th[t + 1] - th[t]);
      ox[t] *= d;
      oy[t] *= d;
      oz[t] *= d;
    }
    ox[TT - 1] = oy[TT - 1] = oz[TT - 1] = A(0);
  }
  emit(kOmega, O);
}

}  // namespace cpu
}  // namespace skelfast
