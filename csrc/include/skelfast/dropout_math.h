// Counter-based dropout mask of skelfast::dropout_add_relu: element i of a call with seed s is kept
// iff hash(s, i) >= threshold. No mask tensor is stored: the backward recomputes it from (s, i),
// and the same seed gives the same mask on every thread count. i is the element's offset in the
// tensor's memory order (contiguous or channels-last). Layer: torch-free header (CPU and CUDA).
#pragma once

#include <cstdint>

#include "skelfast/hd.h"

namespace skelfast {

// "lowbias32": xorshift-multiply 32-bit integer hash with low avalanche bias (constants from
// Chris Wellons' hash-prospector search). 32-bit multiplies vectorise on AVX2.
SKELFAST_HD uint32_t hash32(uint32_t x) {
  x ^= x >> 16;
  x *= 0x7feb352dU;
  x ^= x >> 15;
  x *= 0x846ca68bU;
  x ^= x >> 16;
  return x;
}

struct DropoutParams {
  uint32_t key0 = 0, key1 = 0;  // the 64-bit seed
  uint32_t threshold = 0;       // keep iff hash >= threshold; P(drop) = threshold / 2^32 ~= p
  bool active = false;          // p > 0
  double scale = 1.0;           // 1 / (1 - p) for kept elements; 0 when p == 1 (all dropped)
};

inline DropoutParams dropout_params(double p, int64_t seed) {
  DropoutParams d;
  const uint64_t s = static_cast<uint64_t>(seed);
  d.key0 = static_cast<uint32_t>(s);
  d.key1 = static_cast<uint32_t>(s >> 32);
  d.active = p > 0.0;
  if (p >= 1.0) {
    d.threshold = 0xffffffffU;
    d.scale = 0.0;  // hash == 2^32 - 1 would be "kept", but with weight 0: every element is dropped
  } else if (d.active) {
    const double t = p * 4294967296.0;
    d.threshold = t >= 4294967295.0 ? 0xffffffffU : static_cast<uint32_t>(t);
    d.scale = 1.0 / (1.0 - p);
  }
  return d;
}

// Multiplier of element i: scale if kept, 0 if dropped. Two hash rounds mix all 64 bits of the
// seed and of i (tensors past 2^32 elements get distinct masks per 2^32 block).
template <typename T>
SKELFAST_HD T dropout_weight(const DropoutParams& d, uint64_t i, T scale) {
  uint32_t h = hash32(static_cast<uint32_t>(i) ^ d.key0);
  h = hash32(h + (d.key1 ^ (static_cast<uint32_t>(i >> 32) * 0x9e3779b9U)));
  return h >= d.threshold ? scale : T(0);
}

}  // namespace skelfast
