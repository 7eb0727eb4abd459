// The six skeleton modalities (method.md §3.3): forward per output element, backward per frame.
// Layer: torch-free header shared verbatim by the C++ CPU kernel and the CUDA kernel, so both
// backends compute the same floating-point expression in the same order.
//
// Layouts (contiguous): x (N, 3, T, V, M); out / grad_out (N, G, 3, T, V, M); scale (N,) or null.
#pragma once

#include "skelfast/hd.h"

namespace skelfast {

constexpr int kMaxJoints = 64;
enum Modality : int32_t { kJoint = 0, kMotion, kBone, kAcceleration, kRotationAxis, kOmega, kNumModalities };

// Topology arrives by value (no device tables, no host->device copies, CUDA-graph friendly).
struct ModalitiesParams {
  int64_t N, T, V, M;
  int32_t num_out;                  // G, the number of requested modalities
  int32_t slot[kNumModalities];     // output slot of each modality id, -1 if not requested
  int32_t normal_joint;             // -1: no torso normal (method.md §3.4)
  int32_t normal_a, normal_b, normal_c;
  int16_t bone_parent[kMaxJoints];  // P[v]
  int16_t axis_partner[kMaxJoints]; // A[v]
};

// Scalar conversion to/from the accumulation type; CUDA half types are specialised in the .cu
// file because torch builds nvcc code with the implicit half conversions disabled.
template <typename T, typename A>
struct Cvt {
  static SKELFAST_HD A load(T v) { return static_cast<A>(v); }
  static SKELFAST_HD T store(A v) { return static_cast<T>(v); }
};

// Joints of one (n, t, m) frame; channel stride cs = T*V*M, joint stride M.
template <typename T, typename A>
struct FrameView {
  const T* base;
  int64_t cs, js;
  SKELFAST_HD Vec3<A> joint(int v) const {
    const T* q = base + v * js;
    return {Cvt<T, A>::load(q[0]), Cvt<T, A>::load(q[cs]), Cvt<T, A>::load(q[2 * cs])};
  }
};

template <typename T, typename A>
SKELFAST_HD FrameView<T, A> frame_view(const ModalitiesParams& p, const T* x, int64_t n, int64_t t, int64_t m) {
  const int64_t vm = p.V * p.M, cs = p.T * vm;
  return {x + n * 3 * cs + t * vm + m, cs, p.M};
}

// method.md §3.3 Bone: x[v] - x[P[v]], except the torso normal at the normal joint.
template <typename T, typename A>
SKELFAST_HD Vec3<A> bone_at(const ModalitiesParams& p, const FrameView<T, A>& f, int v) {
  if (v == p.normal_joint) {
    const Vec3<A> b = f.joint(p.normal_b);
    return nrm(cross(f.joint(p.normal_a) - b, f.joint(p.normal_c) - b));
  }
  return f.joint(v) - f.joint(p.bone_parent[v]);
}

// Angle between unit bones (atan2 of |cross| and dot; atan2(0, 0) = 0). "+ A(0)": a zero bone
// normalises to +0s, and its dot with a bone of all-negative components is -0, where
// atan2(+0, -0) = pi; adding +0 turns -0 into +0 (method.md §3.3: theta = 0 for a zero bone).
template <typename A>
SKELFAST_HD A bone_angle(Vec3<A> b, Vec3<A> a) {
  const Vec3<A> bh = nrm(b), ah = nrm(a);
  return std::atan2(norm(cross(bh, ah)), dot(bh, ah) + A(0));
}

template <typename T, typename A>
SKELFAST_HD void modalities_forward_element(const ModalitiesParams& p, const T* __restrict__ x,
                                            const A* __restrict__ scale, T* __restrict__ out, int64_t idx) {
  const int64_t M = p.M, V = p.V, T_ = p.T;
  const int64_t m = idx % M, v = (idx / M) % V, t = (idx / (M * V)) % T_, n = idx / (M * V * T_);
  const A f = scale ? scale[n] : A(1);
  const int64_t vm = V * M, cs = T_ * vm;
  T* o = out + n * p.num_out * 3 * cs + t * vm + v * M + m;
  auto write = [&](int32_t mod, Vec3<A> val) {
    T* q = o + p.slot[mod] * 3 * cs;
    q[0] = Cvt<T, A>::store(val.x);
    q[cs] = Cvt<T, A>::store(val.y);
    q[2 * cs] = Cvt<T, A>::store(val.z);
  };
  const FrameView<T, A> f0 = frame_view<T, A>(p, x, n, t, m);
  const int vi = static_cast<int>(v);
  const Vec3<A> x0 = f0.joint(vi);
  if (p.slot[kJoint] >= 0) write(kJoint, x0);
  if (p.slot[kMotion] >= 0 || p.slot[kAcceleration] >= 0) {
    Vec3<A> mo = zero3<A>(), ac = zero3<A>();
    if (t + 1 < T_) {
      const Vec3<A> x1 = frame_view<T, A>(p, x, n, t + 1, m).joint(vi);
      const Vec3<A> m0 = f * (x1 - x0);
      mo = m0;
      // Acceleration differences the scaled motion and scales again (method.md §3.3).
      if (t + 2 < T_) ac = f * (f * (frame_view<T, A>(p, x, n, t + 2, m).joint(vi) - x1) - m0);
    }
    if (p.slot[kMotion] >= 0) write(kMotion, mo);
    if (p.slot[kAcceleration] >= 0) write(kAcceleration, ac);
  }
  if (p.slot[kBone] >= 0 || p.slot[kRotationAxis] >= 0 || p.slot[kOmega] >= 0) {
    const int a = p.axis_partner[vi];
    const Vec3<A> b0 = bone_at(p, f0, vi), pb0 = bone_at(p, f0, a);
    const Vec3<A> axis = cross(b0, pb0);
    if (p.slot[kBone] >= 0) write(kBone, b0);
    if (p.slot[kRotationAxis] >= 0) write(kRotationAxis, axis);
    if (p.slot[kOmega] >= 0) {
      Vec3<A> om = zero3<A>();
      if (t + 1 < T_) {
        const FrameView<T, A> f1 = frame_view<T, A>(p, x, n, t + 1, m);
        const A dtheta = f * (bone_angle(bone_at(p, f1, vi), bone_at(p, f1, a)) - bone_angle(b0, pb0));
        om = dtheta * nrm(axis);  // the axis at time t, not t+1 (method.md §3.3)
      }
      write(kOmega, om);
    }
  }
}

// Gradient w.r.t. x of all joints of frame (n, t, m). One caller per frame writes gx exclusively:
// temporal terms (motion, acceleration, omega's theta[t+1]) are gathered from neighbouring frames'
// output gradients, so no atomics are needed. Degenerate points (zero bones) get gradient 0 where
// autograd would give atan2'(0, 0) = NaN.
template <typename T, typename A>
SKELFAST_HD void modalities_backward_frame(const ModalitiesParams& p, const T* __restrict__ x,
                                           const A* __restrict__ scale, const T* __restrict__ gout,
                                           T* __restrict__ gx, int64_t frame) {
  const int64_t M = p.M, V = p.V, T_ = p.T;
  const int64_t m = frame % M, t = (frame / M) % T_, n = frame / (M * T_);
  const A f = scale ? scale[n] : A(1);
  const int64_t vm = V * M, cs = T_ * vm;
  // grad_out of modality `mod` at time tt, joint v (tt must be in range).
  auto g = [&](int32_t mod, int64_t tt, int v) -> Vec3<A> {
    const T* q = gout + (n * p.num_out + p.slot[mod]) * 3 * cs + tt * vm + v * M + m;
    return {Cvt<T, A>::load(q[0]), Cvt<T, A>::load(q[cs]), Cvt<T, A>::load(q[2 * cs])};
  };
  const bool want_j = p.slot[kJoint] >= 0, want_mo = p.slot[kMotion] >= 0, want_ac = p.slot[kAcceleration] >= 0;
  const bool want_b = p.slot[kBone] >= 0, want_r = p.slot[kRotationAxis] >= 0, want_om = p.slot[kOmega] >= 0;

  Vec3<A> dx[kMaxJoints];
  for (int v = 0; v < V; ++v) {
    Vec3<A> d = zero3<A>();
    if (want_j) d += g(kJoint, t, v);
    if (want_mo) {  // Mo[s] = f (x[s+1] - x[s]), s <= T-2
      if (t >= 1) d += f * g(kMotion, t - 1, v);
      if (t + 1 < T_) d -= f * g(kMotion, t, v);
    }
    if (want_ac) {  // Ac[s] = f (f (x[s+2] - x[s+1]) - f (x[s+1] - x[s])), s <= T-3
      const A ff = f * f;
      if (t + 2 < T_) d += ff * g(kAcceleration, t, v);
      if (t >= 1 && t + 1 < T_) d -= (A(2) * ff) * g(kAcceleration, t - 1, v);
      if (t >= 2) d += ff * g(kAcceleration, t - 2, v);
    }
    dx[v] = d;
  }

  if (want_b || want_r || want_om) {
    const FrameView<T, A> f0 = frame_view<T, A>(p, x, n, t, m);
    Vec3<A> B[kMaxJoints], gB[kMaxJoints], gBh[kMaxJoints];
    for (int v = 0; v < V; ++v) {
      B[v] = bone_at(p, f0, v);
      gB[v] = want_b ? g(kBone, t, v) : zero3<A>();
      gBh[v] = zero3<A>();
    }
    for (int v = 0; v < V; ++v) {
      const int a = p.axis_partner[v];
      const Vec3<A> R = cross(B[v], B[a]);
      Vec3<A> gR = want_r ? g(kRotationAxis, t, v) : zero3<A>();
      A gtheta = A(0);
      if (want_om) {
        if (t + 1 < T_) {  // Om[t] = f (theta[t+1] - theta[t]) nrm(R[t])
          const FrameView<T, A> f1 = frame_view<T, A>(p, x, n, t + 1, m);
          const Vec3<A> gom = g(kOmega, t, v);
          const A dtheta = f * (bone_angle(bone_at(p, f1, v), bone_at(p, f1, a)) - bone_angle(B[v], B[a]));
          gR += nrm_backward(R, dtheta * gom);
          gtheta -= f * dot(gom, nrm(R));
        }
        if (t >= 1) {  // Om[t-1] = f (theta[t] - theta[t-1]) nrm(R[t-1])
          const FrameView<T, A> fm = frame_view<T, A>(p, x, n, t - 1, m);
          const Vec3<A> Rm = cross(bone_at(p, fm, v), bone_at(p, fm, a));
          gtheta += f * dot(g(kOmega, t - 1, v), nrm(Rm));
        }
      }
      // R = B[v] x B[a]
      gB[v] += cross(B[a], gR);
      gB[a] += cross(gR, B[v]);
      if (gtheta != A(0)) {  // theta = atan2(|bh x ah|, bh . ah)
        const Vec3<A> bh = nrm(B[v]), ah = nrm(B[a]);
        const Vec3<A> c = cross(bh, ah);
        const A s = norm(c), d = dot(bh, ah), r = s * s + d * d;
        if (r > A(0)) {
          const A gs = gtheta * d / r, gd = -gtheta * s / r;
          const Vec3<A> gc = s > A(0) ? (gs / s) * c : zero3<A>();
          gBh[v] += cross(ah, gc) + gd * ah;
          gBh[a] += cross(gc, bh) + gd * bh;
        }
      }
    }
    for (int v = 0; v < V; ++v) {
      gB[v] += nrm_backward(B[v], gBh[v]);
      if (v == p.normal_joint) {  // B = nrm((x[a]-x[b]) x (x[c]-x[b]))
        const Vec3<A> xb = f0.joint(p.normal_b);
        const Vec3<A> u = f0.joint(p.normal_a) - xb, w = f0.joint(p.normal_c) - xb;
        const Vec3<A> gn = nrm_backward(cross(u, w), gB[v]);
        const Vec3<A> gu = cross(w, gn), gw = cross(gn, u);
        dx[p.normal_a] += gu;
        dx[p.normal_c] += gw;
        dx[p.normal_b] -= gu + gw;
      } else if (p.bone_parent[v] != v) {  // a self-parent bone is identically 0: no gradient
        dx[v] += gB[v];
        dx[p.bone_parent[v]] -= gB[v];
      }
    }
  }

  T* o = gx + n * 3 * cs + t * vm + m;
  for (int v = 0; v < V; ++v) {
    o[v * M] = Cvt<T, A>::store(dx[v].x);
    o[cs + v * M] = Cvt<T, A>::store(dx[v].y);
    o[2 * cs + v * M] = Cvt<T, A>::store(dx[v].z);
  }
}

}  // namespace skelfast
