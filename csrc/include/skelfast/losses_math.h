// Shared numerics of the streaming contrastive log-sum-exp ops (method.md §5.3-§6.2,
// performance.md §1.4, §6). Layer: header-only maths, host (and device, via SKELFAST_HD).
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#include "skelfast/hd.h"

namespace skelfast {
namespace losses {

// Static shift of every exponent (performance.md §1.4): with unit queries and queue columns every
// similarity s and every context product s_a*s_b lies in [-1, 1], so each logit l = s/tau is at
// most 1/tau and exp(l - 1/tau) in [e^{-2/tau}, 1] never overflows. Inputs that break this
// (not normalised, or tau so small that the row maximum sits far below 1/tau) are detected from the
// running row maximum and re-run with the exact per-row maximum as the shift (kShiftWindow).
//
// kShiftWindow: a row whose maximum logit m satisfies |m - shift| <= 40 has its largest term
// e^{m-shift} in [4e-18, 2.4e17] and a sum below 1.6e23 for K <= 2^20 columns: normal fp32, no
// overflow, terms down to e^{-40} of the maximum kept. Outside the window the op recomputes.
constexpr double kShiftWindow = 40.0;

// Cephes-style expf: x = n*ln2 + r, |r| <= ln2/2, degree-6 polynomial for e^r, 2^n by exponent
// bits. Max relative error about 2 ulp over [-87, 88]; branch-free so the CPU loops vectorise
// (the standard library expf does not vectorise without -ffast-math).
SKELFAST_HD float fast_expf(float x) {
  x = x < -87.0f ? -87.0f : (x > 88.0f ? 88.0f : x);
  float fx = x * 1.44269504088896341f + 0.5f;
  // floor via truncation toward zero, corrected for negatives (vectorises as cvttps + compare).
  float tf = static_cast<float>(static_cast<int32_t>(fx));
  fx = tf > fx ? tf - 1.0f : tf;
  x = x - fx * 0.693359375f;
  x = x - fx * -2.12194440e-4f;
  const float z = x * x;
  float y = 1.9875691500e-4f;
  y = y * x + 1.3981999507e-3f;
  y = y * x + 8.3334519073e-3f;
  y = y * x + 4.1665795894e-2f;
  y = y * x + 1.6666665459e-1f;
  y = y * x + 5.0000001201e-1f;
  y = y * z + x + 1.0f;
  const int32_t e = (static_cast<int32_t>(fx) + 127) << 23;
  float scale;
  std::memcpy(&scale, &e, sizeof(scale));
  return y * scale;
}

SKELFAST_HD double fast_exp(double x) { return std::exp(x); }
SKELFAST_HD float fast_exp(float x) { return fast_expf(x); }

// log-sum-exp from a shifted sum: lse = shift + log(sum exp(l - shift)).
SKELFAST_HD double lse_from_sum(double shift, double sum) { return shift + std::log(sum); }

// True when the running maximum logit of a row lies inside the window around the shift used.
SKELFAST_HD bool shift_ok(double max_logit, double shift) {
  return max_logit - shift <= kShiftWindow && max_logit - shift >= -kShiftWindow;
}

}  // namespace losses
}  // namespace skelfast
