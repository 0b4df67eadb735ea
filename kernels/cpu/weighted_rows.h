// Weighted sum of a few rows into one output row, float32 accumulation: out[h] = sum_j w[j] * rows[j][h],
// the pairs taken in order (acc = fma(w, row, acc) from acc = 0), rounded once to the output type.
//
// With AVX-512 (simd.h) bfloat16 and float32 rows take a vector
// path that keeps 32 columns of the sum in registers across all rows (the rows are read once, the sum is
// never spilled) and rounds to bfloat16 to nearest even in registers; tails use masked loads and stores, so
// no byte outside the rows and the output is touched. Every other case, and builds without AVX-512, take the
// portable loop, which gives the same result when the compiler contracts a*b+c into fma (gnu++17 with FMA).
#pragma once

#include <cstdint>

#include "convert.h"

#include "simd.h"

namespace moecomm::cpu {

// Portable: acc must hold `hidden` floats.
template <typename Type>
void weighted_rows_portable(const typename Type::Storage* const* rows, const float* weights, int64_t count,
                            int64_t hidden, float* acc, typename Type::Storage* out) {
  for (int64_t h = 0; h < hidden; ++h) acc[h] = 0.0f;
  for (int64_t j = 0; j < count; ++j) {
    const typename Type::Storage* src = rows[j];
    const float w = weights[j];
    for (int64_t h = 0; h < hidden; ++h) acc[h] += w * Type::load(src[h]);
  }
  for (int64_t h = 0; h < hidden; ++h) out[h] = Type::store(acc[h]);
}

#if defined(MOECOMM_SIMD_AVX512)
namespace simd {

template <typename Type>
void weighted_rows(const typename Type::Storage* const* rows, const float* weights, int64_t count,
                   int64_t hidden, typename Type::Storage* out) {
  using L = Lanes<Type>;
  int64_t h = 0;
  const __mmask16 all = kAllLanes;
  for (; h + 32 <= hidden; h += 32) {
    __m512 low = _mm512_setzero_ps(), high = _mm512_setzero_ps();
    for (int64_t j = 0; j < count; ++j) {
      const __m512 w = _mm512_set1_ps(weights[j]);
      low = _mm512_fmadd_ps(w, L::load(rows[j] + h, all), low);
      high = _mm512_fmadd_ps(w, L::load(rows[j] + h + 16, all), high);
    }
    L::store(out + h, low, all);
    L::store(out + h + 16, high, all);
  }
  for (; h < hidden; h += 16) {
    const __mmask16 m = first_lanes(hidden - h);
    __m512 sum = _mm512_setzero_ps();
    for (int64_t j = 0; j < count; ++j)
      sum = _mm512_fmadd_ps(_mm512_set1_ps(weights[j]), L::load(rows[j] + h, m), sum);
    L::store(out + h, sum, m);
  }
}

}  // namespace simd
#endif

// out = the weighted sum of rows[0..count) (contiguous rows of `hidden` elements); acc: `hidden` floats of
// scratch for the portable path.
template <typename Type>
void weighted_rows(const typename Type::Storage* const* rows, const float* weights, int64_t count,
                   int64_t hidden, float* acc, typename Type::Storage* out) {
#if defined(MOECOMM_SIMD_AVX512)
  if constexpr (simd::Lanes<Type>::kLoad && simd::Lanes<Type>::kStore) {
    simd::weighted_rows<Type>(rows, weights, count, hidden, out);
    return;
  }
#endif
  weighted_rows_portable<Type>(rows, weights, count, hidden, acc, out);
}

}  // namespace moecomm::cpu
