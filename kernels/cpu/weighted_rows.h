// Weighted sum of a few rows into one output row, float32 accumulation: out[h] = sum_j w[j] * rows[j][h],
// the pairs taken in order (acc = fma(w, row, acc) from acc = 0), rounded once to the output type.
//
// With AVX-512 (built with -march=native on a machine that has it) bfloat16 and float32 rows take a vector
// path that keeps 32 columns of the sum in registers across all rows (the rows are read once, the sum is
// never spilled) and rounds to bfloat16 to nearest even in registers; tails use masked loads and stores, so
// no byte outside the rows and the output is touched. Every other case, and builds without AVX-512, take the
// portable loop, which gives the same result when the compiler contracts a*b+c into fma (gnu++17 with FMA).
#pragma once

#include <cstdint>
#include <type_traits>

#include "convert.h"

#if defined(__AVX512F__) && defined(__AVX512BW__)
#include <immintrin.h>
#define MOECOMM_WEIGHTED_ROWS_AVX512 1
#endif

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

#if defined(MOECOMM_WEIGHTED_ROWS_AVX512)
namespace simd {

// 16 bfloat16 (masked) -> 16 float32: the bits shifted to the top half, exact.
inline __m512 load_bf16(const uint16_t* p, __mmask16 m) {
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(m, p)), 16));
}

// 16 float32 -> 16 bfloat16, round to nearest even, NaN kept quiet: float_to_bf16 lane by lane.
inline void store_bf16(uint16_t* p, __m512 v, __mmask16 m) {
  const __m512i u = _mm512_castps_si512(v);
  const __m512i high = _mm512_srli_epi32(u, 16);
  const __m512i odd = _mm512_and_si512(high, _mm512_set1_epi32(1));
  __m512i rounded =
      _mm512_srli_epi32(_mm512_add_epi32(_mm512_add_epi32(u, _mm512_set1_epi32(0x7fff)), odd), 16);
  const __mmask16 nan = _mm512_cmpgt_epu32_mask(_mm512_and_si512(u, _mm512_set1_epi32(0x7fffffff)),
                                                _mm512_set1_epi32(0x7f800000));
  rounded = _mm512_mask_mov_epi32(rounded, nan, _mm512_or_si512(high, _mm512_set1_epi32(0x40)));
  _mm256_mask_storeu_epi16(p, m, _mm512_cvtepi32_epi16(rounded));
}

inline __m512 load(const uint16_t* p, __mmask16 m) {
  return load_bf16(p, m);
}
inline __m512 load(const float* p, __mmask16 m) {
  return _mm512_maskz_loadu_ps(m, p);
}
inline void store(uint16_t* p, __m512 v, __mmask16 m) {
  store_bf16(p, v, m);
}
inline void store(float* p, __m512 v, __mmask16 m) {
  _mm512_mask_storeu_ps(p, m, v);
}

// Lanes [0, n) of 16, for n in [0, 16].
inline __mmask16 first_lanes(int64_t n) {
  return n >= 16 ? static_cast<__mmask16>(0xffff) : static_cast<__mmask16>((1u << n) - 1u);
}

template <typename Storage>
void weighted_rows(const Storage* const* rows, const float* weights, int64_t count, int64_t hidden,
                   Storage* out) {
  int64_t h = 0;
  const __mmask16 all = 0xffff;
  for (; h + 32 <= hidden; h += 32) {
    __m512 low = _mm512_setzero_ps(), high = _mm512_setzero_ps();
    for (int64_t j = 0; j < count; ++j) {
      const __m512 w = _mm512_set1_ps(weights[j]);
      low = _mm512_fmadd_ps(w, load(rows[j] + h, all), low);
      high = _mm512_fmadd_ps(w, load(rows[j] + h + 16, all), high);
    }
    store(out + h, low, all);
    store(out + h + 16, high, all);
  }
  for (; h < hidden; h += 16) {
    const __mmask16 m = first_lanes(hidden - h);
    __m512 sum = _mm512_setzero_ps();
    for (int64_t j = 0; j < count; ++j)
      sum = _mm512_fmadd_ps(_mm512_set1_ps(weights[j]), load(rows[j] + h, m), sum);
    store(out + h, sum, m);
  }
}

}  // namespace simd
#endif

// out = the weighted sum of rows[0..count) (contiguous rows of `hidden` elements); acc: `hidden` floats of
// scratch for the portable path.
template <typename Type>
void weighted_rows(const typename Type::Storage* const* rows, const float* weights, int64_t count,
                   int64_t hidden, float* acc, typename Type::Storage* out) {
#if defined(MOECOMM_WEIGHTED_ROWS_AVX512)
  if constexpr (std::is_same_v<Type, BFloat16> || std::is_same_v<Type, Float32>) {
    simd::weighted_rows(rows, weights, count, hidden, out);
    return;
  }
#endif
  weighted_rows_portable<Type>(rows, weights, count, hidden, acc, out);
}

}  // namespace moecomm::cpu
