// Float row primitives of the streaming losses as explicit GCC vector code of kW lanes. Included
// once per x86 ISA by losses_cpu.cpp, inside a namespace that defines kW and under a matching
// `#pragma GCC target`: the lane count must match the register width, because GCC lowers a
// 16-lane vector on AVX2 partly to scalar code (measured, 2-core Zen 3: the phase-1 row loops
// took ~90 ms where torch.exp over the same 25M values takes 27 ms). Deliberately no include
// guard. Layer: torch-free header (numerics as losses::fast_expf).

typedef float vf __attribute__((vector_size(kW * sizeof(float))));
typedef int32_t vi __attribute__((vector_size(kW * sizeof(int32_t))));

__attribute__((always_inline)) inline vf splat(float a) { return vf{} + a; }
__attribute__((always_inline)) inline vf loadu(const float* p) {
  vf v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}
__attribute__((always_inline)) inline void storeu(float* p, vf v) { std::memcpy(p, &v, sizeof(v)); }
__attribute__((always_inline)) inline vf vmax(vf a, vf b) { return a > b ? a : b; }
__attribute__((always_inline)) inline float hsum(vf v) {
  float s = 0.f;
  for (int l = 0; l < kW; ++l) s += v[l];
  return s;
}
__attribute__((always_inline)) inline float hmax(vf v) {
  float s = v[0];
  for (int l = 1; l < kW; ++l) s = v[l] > s ? v[l] : s;
  return s;
}
// Lane-wise losses::fast_expf (same constants, same rounding). The clamps are written so that a
// NaN fails both compares and passes through, as in fast_expf: a NaN similarity must make the sum,
// hence the loss, NaN (a clamp to -87 would add ~1e-38 and report a finite loss).
__attribute__((always_inline)) inline vf vexp(vf x) {
  x = x < splat(-87.0f) ? splat(-87.0f) : x;
  x = x > splat(88.0f) ? splat(88.0f) : x;
  vf fx = x * 1.44269504088896341f + 0.5f;
  vf tf = __builtin_convertvector(__builtin_convertvector(fx, vi), vf);
  fx = tf > fx ? tf - 1.0f : tf;
  x = x - fx * 0.693359375f;
  x = x - fx * -2.12194440e-4f;
  const vf z = x * x;
  vf y = splat(1.9875691500e-4f);
  y = y * x + 1.3981999507e-3f;
  y = y * x + 8.3334519073e-3f;
  y = y * x + 4.1665795894e-2f;
  y = y * x + 1.6666665459e-1f;
  y = y * x + 5.0000001201e-1f;
  y = y * z + x + 1.0f;
  const vi e = (__builtin_convertvector(fx, vi) + 127) << 23;
  return y * (vf)e;  // GCC vector cast: bit reinterpretation
}

// sum_j exp(s_j * it - shift); *mx = max(*mx, max_j s_j).
double row_sum_exp(const float* s, int64_t n, float it, float shift, float* mx) {
  vf acc = splat(0.f), m = splat(-std::numeric_limits<float>::infinity());
  int64_t j = 0;
  for (; j + kW <= n; j += kW) {
    const vf v = loadu(s + j);
    m = vmax(m, v);
    acc += vexp(v * it - shift);
  }
  double total = hsum(acc);
  float mm = hmax(m);
  for (; j < n; ++j) {
    mm = std::max(mm, s[j]);
    total += losses::fast_expf(s[j] * it - shift);
  }
  *mx = std::max(*mx, mm);
  return total;
}

// sum_j exp(a_j * b_j * it - shift); *mx = max(*mx, max_j a_j * b_j).
double row_sum_exp_prod(const float* a, const float* b, int64_t n, float it, float shift, float* mx) {
  vf acc = splat(0.f), m = splat(-std::numeric_limits<float>::infinity());
  int64_t j = 0;
  for (; j + kW <= n; j += kW) {
    const vf v = loadu(a + j) * loadu(b + j);
    m = vmax(m, v);
    acc += vexp(v * it - shift);
  }
  double total = hsum(acc);
  float mm = hmax(m);
  for (; j < n; ++j) {
    const float v = a[j] * b[j];
    mm = std::max(mm, v);
    total += losses::fast_expf(v * it - shift);
  }
  *mx = std::max(*mx, mm);
  return total;
}

// s_j <- exp(s_j * it - shift) * sc_j (sc may be null); returns the sum of the exps and updates
// *mx = max(*mx, max_j s_j) in the same pass.
double row_exp_store(float* s, int64_t n, float it, float shift, const float* sc, float* mx) {
  vf acc = splat(0.f), m = splat(-std::numeric_limits<float>::infinity());
  int64_t j = 0;
  for (; j + kW <= n; j += kW) {
    const vf v = loadu(s + j);
    m = vmax(m, v);
    const vf e = vexp(v * it - shift);
    acc += e;
    storeu(s + j, sc ? e * loadu(sc + j) : e);
  }
  double total = hsum(acc);
  float mm = hmax(m);
  for (; j < n; ++j) {
    mm = std::max(mm, s[j]);
    const float e = losses::fast_expf(s[j] * it - shift);
    total += e;
    s[j] = sc ? e * sc[j] : e;
  }
  *mx = std::max(*mx, mm);
  return total;
}

float row_max(const float* s, int64_t n) {
  vf m = splat(-std::numeric_limits<float>::infinity());
  int64_t j = 0;
  for (; j + kW <= n; j += kW) m = vmax(m, loadu(s + j));
  float mm = hmax(m);
  for (; j < n; ++j) mm = std::max(mm, s[j]);
  return mm;
}

// d_j += coef * exp(s_j * it - shift)
void row_grad_exp(float* d, const float* s, int64_t n, float coef, float it, float shift) {
  int64_t j = 0;
  for (; j + kW <= n; j += kW) storeu(d + j, loadu(d + j) + coef * vexp(loadu(s + j) * it - shift));
  for (; j < n; ++j) d[j] += coef * losses::fast_expf(s[j] * it - shift);
}

// e_j = coef * exp(a_j b_j it - shift); da_j += e_j b_j; db_j += e_j a_j (either may be null).
void row_grad_exp_prod(float* da, float* db, const float* a, const float* b, int64_t n, float coef,
                                       float it, float shift) {
  int64_t j = 0;
  for (; j + kW <= n; j += kW) {
    const vf va = loadu(a + j), vb = loadu(b + j);
    const vf e = coef * vexp(va * vb * it - shift);
    if (da) storeu(da + j, loadu(da + j) + e * vb);
    if (db) storeu(db + j, loadu(db + j) + e * va);
  }
  for (; j < n; ++j) {
    const float e = coef * losses::fast_expf(a[j] * b[j] * it - shift);
    if (da) da[j] += e * b[j];
    if (db) db[j] += e * a[j];
  }
}
