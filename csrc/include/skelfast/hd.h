// Host/device qualifiers and small 3-vector maths shared by the CPU and CUDA kernels.
// Layer: torch-free header (compiles with g++ and with nvcc on a CPU-only machine).
#pragma once

#include <cmath>
#include <cstdint>

#if defined(__CUDACC__)
#define SKELFAST_HD __host__ __device__ __forceinline__
#else
#define SKELFAST_HD inline
#endif

namespace skelfast {

template <typename A>
struct Vec3 {
  A x, y, z;
};

template <typename A> SKELFAST_HD Vec3<A> operator+(Vec3<A> a, Vec3<A> b) { return {a.x + b.x, a.y + b.y, a.z + b.z}; }
template <typename A> SKELFAST_HD Vec3<A> operator-(Vec3<A> a, Vec3<A> b) { return {a.x - b.x, a.y - b.y, a.z - b.z}; }
template <typename A> SKELFAST_HD Vec3<A> operator*(A s, Vec3<A> a) { return {s * a.x, s * a.y, s * a.z}; }
template <typename A> SKELFAST_HD void operator+=(Vec3<A>& a, Vec3<A> b) { a.x += b.x; a.y += b.y; a.z += b.z; }
template <typename A> SKELFAST_HD void operator-=(Vec3<A>& a, Vec3<A> b) { a.x -= b.x; a.y -= b.y; a.z -= b.z; }
template <typename A> SKELFAST_HD A dot(Vec3<A> a, Vec3<A> b) { return a.x * b.x + a.y * b.y + a.z * b.z; }
template <typename A> SKELFAST_HD Vec3<A> cross(Vec3<A> a, Vec3<A> b) {
  return {a.y * b.z - a.z * b.y, a.z * b.x - a.x * b.z, a.x * b.y - a.y * b.x};
}
template <typename A> SKELFAST_HD A norm(Vec3<A> a) { return std::sqrt(dot(a, a)); }
template <typename A> SKELFAST_HD Vec3<A> zero3() { return {A(0), A(0), A(0)}; }

// method.md §3.1: nrm(u) = u / max(||u||, 1e-12) (F.normalize's eps); a zero vector maps to zero.
constexpr double kNormEps = 1e-12;
template <typename A> SKELFAST_HD Vec3<A> nrm(Vec3<A> u) {
  A n = norm(u);
  A d = n > A(kNormEps) ? n : A(kNormEps);
  return (A(1) / d) * u;
}
// Vector-Jacobian product of nrm, matching autograd through F.normalize: below eps the
// denominator is the constant eps, so the gradient is g / eps.
template <typename A> SKELFAST_HD Vec3<A> nrm_backward(Vec3<A> u, Vec3<A> g) {
  A n = norm(u);
  if (!(n > A(kNormEps))) return (A(1) / A(kNormEps)) * g;
  Vec3<A> y = (A(1) / n) * u;
  return (A(1) / n) * (g - dot(y, g) * y);
}

}  // namespace skelfast
