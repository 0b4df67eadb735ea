// float32 <-> float16 / bfloat16 / float8 e4m3fn conversions (round to nearest even), portable C++,
// and the element types the float kernels are templated on.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>

namespace moecomm::cpu {

inline float bits_to_float(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

inline uint32_t float_to_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}

inline float bf16_to_float(uint16_t h) {
  return bits_to_float(static_cast<uint32_t>(h) << 16);
}

inline uint16_t float_to_bf16(float f) {
  const uint32_t u = float_to_bits(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x0040u);  // NaN
  return static_cast<uint16_t>((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}

inline float fp16_to_float(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t exponent = (h >> 10) & 0x1fu;
  uint32_t mantissa = h & 0x3ffu;
  if (exponent == 0x1f) return bits_to_float(sign | 0x7f800000u | (mantissa << 13));  // inf / NaN
  if (exponent != 0) return bits_to_float(sign | ((exponent + 112u) << 23) | (mantissa << 13));
  if (mantissa == 0) return bits_to_float(sign);
  // subnormal: value = mantissa * 2^-24
  const float magnitude = static_cast<float>(mantissa) * 5.9604644775390625e-08f;
  return sign ? -magnitude : magnitude;
}

inline uint16_t float_to_fp16(float f) {
  const uint32_t u = float_to_bits(f);
  const uint16_t sign = static_cast<uint16_t>((u >> 16) & 0x8000u);
  const uint32_t abs = u & 0x7fffffffu;
  if (abs > 0x7f800000u) return static_cast<uint16_t>(sign | 0x7e00u);   // NaN
  if (abs >= 0x477ff000u) return static_cast<uint16_t>(sign | 0x7c00u);  // overflow -> inf
  if (abs < 0x38800000u) {
    // subnormal or zero in fp16: round abs / 2^-24 to nearest even
    const float scaled = bits_to_float(abs) * 16777216.0f;  // exact: power of two
    uint32_t m = static_cast<uint32_t>(scaled);
    const float rest = scaled - static_cast<float>(m);
    if (rest > 0.5f || (rest == 0.5f && (m & 1u))) ++m;
    return static_cast<uint16_t>(sign | m);
  }
  const uint32_t rounded = abs + 0xfffu + ((abs >> 13) & 1u);
  return static_cast<uint16_t>(sign | (((rounded >> 13) - (112u << 10)) & 0x7fffu));
}

// Rounds v to the nearest integer, ties to even, for |v| < 2^22 (the default FP rounding mode does it:
// adding and removing 1.5 * 2^23 leaves no fraction bits). Branch-free, so loops over it vectorise.
inline float round_half_even(float v) {
  constexpr float kMagic = 12582912.0f;  // 1.5 * 2^23
  return (v + kMagic) - kMagic;
}

// float8 e4m3fn (1 sign, 4 exponent bits with bias 7, 3 mantissa bits; no infinity, NaN = 0x7f / 0xff).
constexpr float kFloat8E4M3Max = 448.0f;

// Encodes a finite v with |v| < 2^22, round to nearest even, saturating to +-448; -0 keeps its sign.
// Matches torch's float32 -> float8_e4m3fn conversion of clamp(v, -448, 448). Branch-free.
inline uint8_t float_to_e4m3_saturated(float v) {
  const uint32_t u = float_to_bits(v);
  const uint32_t sign = (u >> 24) & 0x80u;
  const uint32_t abs = u & 0x7fffffffu;
  // normal range (|v| >= 2^-6): drop 20 mantissa bits with round to nearest even, rebias 127 -> 7
  const uint32_t normal = ((abs + 0x7ffffu + ((abs >> 20) & 1u)) >> 20) - (120u << 3);
  // subnormal range: a multiple of 2^-9, rounded by adding 2^23 (exact scaling by 2^9 first)
  const uint32_t subnormal = float_to_bits(bits_to_float(abs) * 512.0f + 8388608.0f) - 0x4b000000u;
  const uint32_t magnitude = abs >= 0x3c800000u ? normal : subnormal;
  return static_cast<uint8_t>(sign | std::min(magnitude, 0x7eu));  // 0x7e = 448; 0x7f would be NaN
}

// Decodes an e4m3fn byte exactly (0x7f / 0xff decode to NaN, as torch does). The 7 magnitude bits placed
// at the top of a float32 mantissa read as the value times 2^-120 (subnormal codes as float32 subnormals),
// so one exact multiply by 2^120 decodes every code; no selects on floats, so loops over it vectorise.
inline float e4m3_to_float(uint8_t b) {
  const uint32_t magnitude = b & 0x7fu;
  const uint32_t sign = static_cast<uint32_t>(b >> 7) << 31;
  const float value = bits_to_float(magnitude << 20) * 1.329227995784916e+36f;  // 2^120
  return bits_to_float(sign | (magnitude == 0x7fu ? 0x7fc00000u : float_to_bits(value)));
}

// Element types of the float kernels: storage type and exact conversions to and from float32.
struct Float32 {
  using Storage = float;
  static float load(float v) { return v; }
  static float store(float v) { return v; }
};
struct BFloat16 {
  using Storage = uint16_t;
  static float load(uint16_t v) { return bf16_to_float(v); }
  static uint16_t store(float v) { return float_to_bf16(v); }
};
struct Float16 {
  using Storage = uint16_t;
  static float load(uint16_t v) { return fp16_to_float(v); }
  static uint16_t store(float v) { return float_to_fp16(v); }
};

}  // namespace moecomm::cpu
