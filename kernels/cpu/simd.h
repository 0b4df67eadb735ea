// AVX-512 lanes of the float kernels: 16 values of a row at a time, loaded from and stored to the element
// types exactly as convert.h converts them one by one (masked, so a tail never touches a byte past the row).
// Defined only when the build targets AVX-512F+BW (-march=native on a machine that has it); the kernels keep
// their portable loops for every other build, and for the types these helpers do not cover.
#pragma once

#if defined(__AVX512F__) && defined(__AVX512BW__)
#define MOECOMM_SIMD_AVX512 1
#include <immintrin.h>

#include <cstdint>

#include "convert.h"

namespace moecomm::cpu::simd {

constexpr int64_t kLanes = 16;
constexpr __mmask16 kAllLanes = 0xffff;

// Lanes [0, n) of 16, for n in [0, 16].
inline __mmask16 first_lanes(int64_t n) {
  return n >= kLanes ? kAllLanes : static_cast<__mmask16>((1u << n) - 1u);
}

// Lanes<Type>: 16 values of element type Type (convert.h) as float32 lanes. load is exact; store rounds like
// Type::store. Types without a specialisation have no vector path.
template <typename Type>
struct Lanes {
  static constexpr bool kLoad = false, kStore = false;
};

template <>
struct Lanes<BFloat16> {
  static constexpr bool kLoad = true, kStore = true;
  // the bits moved to the top half
  static __m512 load(const uint16_t* p, __mmask16 m) {
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(m, p)), 16));
  }
  // round to nearest even, NaN kept quiet with its sign (float_to_bf16, lane by lane)
  static void store(uint16_t* p, __m512 v, __mmask16 m) {
    const __m512i u = _mm512_castps_si512(v);
    const __m512i high = _mm512_srli_epi32(u, 16);
    const __m512i odd = _mm512_and_si512(high, _mm512_set1_epi32(1));
    __m512i rounded =
        _mm512_srli_epi32(_mm512_add_epi32(_mm512_add_epi32(u, _mm512_set1_epi32(0x7fff)), odd), 16);
    const __mmask16 nan = _mm512_cmpgt_epu32_mask(_mm512_and_si512(u, _mm512_set1_epi32(0x7fffffff)),
                                                  _mm512_set1_epi32(0x7f800000));
    rounded = _mm512_mask_mov_epi32(rounded, nan, _mm512_or_si512(high, _mm512_set1_epi32(0x40)));
    const __m256i packed = _mm512_cvtepi32_epi16(rounded);
    if (m == kAllLanes) {
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), packed);  // masked stores are slower on some cores
    } else {
      _mm256_mask_storeu_epi16(p, m, packed);
    }
  }
};

template <>
struct Lanes<Float32> {
  static constexpr bool kLoad = true, kStore = true;
  static __m512 load(const float* p, __mmask16 m) { return _mm512_maskz_loadu_ps(m, p); }
  static void store(float* p, __m512 v, __mmask16 m) {
    if (m == kAllLanes) {
      _mm512_storeu_ps(p, v);
    } else {
      _mm512_mask_storeu_ps(p, m, v);
    }
  }
};

template <>
struct Lanes<Float16> {
  // load only: vcvtph2ps is exact (a signalling NaN comes back quiet, still a NaN); its float32 -> float16
  // direction differs from float_to_fp16 in NaN payloads, so stores stay scalar.
  static constexpr bool kLoad = true, kStore = false;
  static __m512 load(const uint16_t* p, __mmask16 m) {
    return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, p));
  }
};

}  // namespace moecomm::cpu::simd
#endif
