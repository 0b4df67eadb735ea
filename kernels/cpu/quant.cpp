// quantize_rows / dequantize_rows: int8 per-token and float8 e4m3fn per-block rows for quantized dispatch.
// Definition of the arithmetic: moecomm/quant_kernels.h. Threads over rows; the inner loops are branch-free.
#include <algorithm>
#include <cstring>
#include <limits>
#include <type_traits>
#include <vector>

#include "convert.h"
#include "copy.h"
#include "moecomm/quant_kernels.h"
#include "parallel.h"
#include "row_cover.h"
#include "row_segments.h"
#include "simd.h"

namespace moecomm::cpu {

namespace {

// Codes: encode(v) = the code of clamp(v, -kMax, kMax), for finite |v| < 2^22. The clamp is applied to the
// integer code (the same result, since kMax is representable): it keeps the loops free of float selects.
// With AVX-512, encode_lanes / decode_lanes do the same for 16 lanes (codes in the low byte of each 32-bit
// lane), with the same integer steps; the float steps are the same IEEE operations (no fma: this file is
// built with -ffp-contract=off).
struct Int8Code {
  using Storage = int8_t;
  static constexpr float kMax = 127.0f;
  static int8_t encode(float v) {
    const int32_t rounded = static_cast<int32_t>(round_half_even(v));
    return static_cast<int8_t>(std::min(std::max(rounded, int32_t{-127}), int32_t{127}));
  }
  static float decode(int8_t q) { return static_cast<float>(q); }
#if defined(MOECOMM_SIMD_AVX512)
  static __m512i encode_lanes(__m512 v) {
    const __m512i rounded = _mm512_cvt_roundps_epi32(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    return _mm512_max_epi32(_mm512_min_epi32(rounded, _mm512_set1_epi32(127)), _mm512_set1_epi32(-127));
  }
  static __m512 decode_lanes(__m128i codes) {
    return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(codes));
  }
#endif
};

struct Float8E4M3Code {
  using Storage = uint8_t;
  static constexpr float kMax = kFloat8E4M3Max;
  static uint8_t encode(float v) { return float_to_e4m3_saturated(v); }
  static float decode(uint8_t q) { return e4m3_to_float(q); }
#if defined(MOECOMM_SIMD_AVX512)
  static __m512i encode_lanes(__m512 v) {  // float_to_e4m3_saturated
    const __m512i u = _mm512_castps_si512(v);
    const __m512i sign = _mm512_and_si512(_mm512_srli_epi32(u, 24), _mm512_set1_epi32(0x80));
    const __m512i abs = _mm512_and_si512(u, _mm512_set1_epi32(0x7fffffff));
    const __m512i odd = _mm512_and_si512(_mm512_srli_epi32(abs, 20), _mm512_set1_epi32(1));
    const __m512i normal = _mm512_sub_epi32(
        _mm512_srli_epi32(_mm512_add_epi32(_mm512_add_epi32(abs, _mm512_set1_epi32(0x7ffff)), odd), 20),
        _mm512_set1_epi32(120 << 3));
    const __m512 shifted = _mm512_add_ps(_mm512_mul_ps(_mm512_castsi512_ps(abs), _mm512_set1_ps(512.0f)),
                                         _mm512_set1_ps(8388608.0f));
    const __m512i subnormal = _mm512_sub_epi32(_mm512_castps_si512(shifted), _mm512_set1_epi32(0x4b000000));
    const __mmask16 is_normal = _mm512_cmpge_epu32_mask(abs, _mm512_set1_epi32(0x3c800000));
    const __m512i magnitude = _mm512_mask_blend_epi32(is_normal, subnormal, normal);
    return _mm512_or_si512(sign, _mm512_min_epu32(magnitude, _mm512_set1_epi32(0x7e)));
  }
  static __m512 decode_lanes(__m128i codes) {  // e4m3_to_float
    const __m512i b = _mm512_cvtepu8_epi32(codes);
    const __m512i magnitude = _mm512_and_si512(b, _mm512_set1_epi32(0x7f));
    const __m512i sign = _mm512_slli_epi32(_mm512_srli_epi32(b, 7), 31);
    const __m512 value = _mm512_mul_ps(_mm512_castsi512_ps(_mm512_slli_epi32(magnitude, 20)),
                                       _mm512_set1_ps(1.329227995784916e+36f));
    const __mmask16 nan = _mm512_cmpeq_epi32_mask(magnitude, _mm512_set1_epi32(0x7f));
    const __m512i bits =
        _mm512_mask_mov_epi32(_mm512_castps_si512(value), nan, _mm512_set1_epi32(0x7fc00000));
    return _mm512_castsi512_ps(_mm512_or_si512(sign, bits));
  }
#endif
};

constexpr uint32_t kInfinityBits = 0x7f800000u;
constexpr int64_t kRowsPerChunk = 4;

// Calls fn(Type{}) for the float element type `type`; false if it is not one.
template <typename Fn>
bool visit_float_type(ScalarType type, Fn&& fn) {
  switch (type) {
    case ScalarType::kFloat32:
      fn(Float32{});
      return true;
    case ScalarType::kFloat16:
      fn(Float16{});
      return true;
    case ScalarType::kBFloat16:
      fn(BFloat16{});
      return true;
    default:
      return false;
  }
}

// Calls fn(Code{}) for `kind`; false if it is not a known kind.
template <typename Fn>
bool visit_code(QuantKind kind, Fn&& fn) {
  switch (kind) {
    case QuantKind::kInt8:
      fn(Int8Code{});
      return true;
    case QuantKind::kFloat8E4M3:
      fn(Float8E4M3Code{});
      return true;
  }
  return false;
}

// Blocks of block_cols columns: block b covers [begin, end), empty past column `hidden`.
struct Blocks {
  int64_t hidden, block_cols, used;  // used = ceil(hidden / block_cols): blocks holding columns
  int64_t begin(int64_t b) const { return b < used ? b * block_cols : hidden; }
  int64_t end(int64_t b) const { return b < used ? std::min(hidden, b * block_cols + block_cols) : hidden; }
};

// Sizes a kernel can trust: block_cols >= 1 and scales_per_row blocks cover every column.
bool blocks_cover(int64_t num_rows, int64_t hidden, int64_t block_cols, int64_t scales_per_row,
                  Blocks* blocks) {
  if (num_rows < 0 || hidden < 0 || block_cols < 1 || scales_per_row < 0) return false;
  const int64_t used = hidden / block_cols + (hidden % block_cols != 0);
  if (scales_per_row < used) return false;
  *blocks = Blocks{hidden, block_cols, used};
  return true;
}

// Largest |v| over n values, as float32 bits: inf and NaN compare above every finite value.
template <typename Type>
uint32_t absmax_bits(const typename Type::Storage* v, int64_t n) {
  uint32_t m = 0;
  for (int64_t i = 0; i < n; ++i) m = std::max(m, float_to_bits(Type::load(v[i])) & 0x7fffffffu);
  return m;
}

// How one block's values become codes (moecomm/quant_kernels.h): v = x * inverse, or x / scale when the
// inverse overflows; no codes to compute when the scale is 0.
struct BlockScale {
  float scale = 0.0f;    // absmax / max_code: what travels
  float inverse = 0.0f;  // max_code / absmax
  bool multiply = true;  // inverse is finite
};

template <typename Code>
BlockScale block_scale(uint32_t absmax_bits_value) {
  const float absmax = bits_to_float(absmax_bits_value);
  BlockScale s;
  s.scale = absmax / Code::kMax;
  if (s.scale == 0.0f) return s;
  s.inverse = Code::kMax / absmax;
  s.multiply = s.inverse <= std::numeric_limits<float>::max();
  return s;
}

template <typename Type, typename Code>
void quantize_block(const typename Type::Storage* v, int64_t n, const BlockScale& s,
                    typename Code::Storage* q) {
  if (s.multiply) {
    for (int64_t i = 0; i < n; ++i) q[i] = Code::encode(Type::load(v[i]) * s.inverse);
  } else {
    for (int64_t i = 0; i < n; ++i) q[i] = Code::encode(Type::load(v[i]) / s.scale);
  }
}

#if defined(MOECOMM_SIMD_AVX512)
// absmax_bits over 16 lanes at a time (a masked tail loads 0 in its missing lanes).
template <typename Type>
uint32_t absmax_bits_lanes(const typename Type::Storage* v, int64_t n) {
  using L = simd::Lanes<Type>;
  const __m512i magnitude = _mm512_set1_epi32(0x7fffffff);
  auto abs_bits = [&](__m512 lanes) { return _mm512_and_si512(_mm512_castps_si512(lanes), magnitude); };
  __m512i m0 = _mm512_setzero_si512(), m1 = _mm512_setzero_si512();
  int64_t i = 0;
  for (; i + 2 * simd::kLanes <= n; i += 2 * simd::kLanes) {
    m0 = _mm512_max_epu32(m0, abs_bits(L::load(v + i, simd::kAllLanes)));
    m1 = _mm512_max_epu32(m1, abs_bits(L::load(v + i + simd::kLanes, simd::kAllLanes)));
  }
  for (; i < n; i += simd::kLanes)
    m0 = _mm512_max_epu32(m0, abs_bits(L::load(v + i, simd::first_lanes(n - i))));
  return _mm512_reduce_max_epu32(_mm512_max_epu32(m0, m1));
}

// quantize_block over 16 lanes at a time: the same products (or quotients), the codes' lane encoders; whole
// 64-code groups are packed and stored with one unmasked store (masked and down-converting stores are slow
// on some cores).
template <typename Type, typename Code, bool kMultiply>
void quantize_block_lanes(const typename Type::Storage* v, int64_t n, const BlockScale& s,
                          typename Code::Storage* q) {
  using L = simd::Lanes<Type>;
  const __m512 factor = _mm512_set1_ps(kMultiply ? s.inverse : s.scale);
  auto codes_of = [&](int64_t i, __mmask16 m) {
    const __m512 x = L::load(v + i, m);
    return _mm512_cvtepi32_epi8(
        Code::encode_lanes(kMultiply ? _mm512_mul_ps(x, factor) : _mm512_div_ps(x, factor)));
  };
  int64_t i = 0;
  for (; i + 4 * simd::kLanes <= n; i += 4 * simd::kLanes) {
    __m512i packed = _mm512_castsi128_si512(codes_of(i, simd::kAllLanes));
    packed = _mm512_inserti32x4(packed, codes_of(i + 16, simd::kAllLanes), 1);
    packed = _mm512_inserti32x4(packed, codes_of(i + 32, simd::kAllLanes), 2);
    packed = _mm512_inserti32x4(packed, codes_of(i + 48, simd::kAllLanes), 3);
    _mm512_storeu_si512(q + i, packed);
  }
  for (; i < n; i += simd::kLanes) {
    const __mmask16 m = simd::first_lanes(n - i);
    _mm_mask_storeu_epi8(q + i, m, codes_of(i, m));
  }
}

// BFloat16 rows, 32 values per 64-byte load. The sign-cleared bf16 bits order like the magnitudes (as
// float32 bits do, and a bf16 is the top half of its float32), so the absmax is taken on 16-bit lanes and
// widened once at the end; a masked tail loads 0 in its missing lanes.
inline uint32_t absmax_bits_bf16(const uint16_t* v, int64_t n) {
  const __m512i magnitude = _mm512_set1_epi16(0x7fff);
  __m512i m0 = _mm512_setzero_si512(), m1 = _mm512_setzero_si512();
  int64_t i = 0;
  for (; i + 64 <= n; i += 64) {
    m0 = _mm512_max_epu16(m0, _mm512_and_si512(_mm512_loadu_si512(v + i), magnitude));
    m1 = _mm512_max_epu16(m1, _mm512_and_si512(_mm512_loadu_si512(v + i + 32), magnitude));
  }
  for (; i < n; i += 32) {
    const int64_t left = n - i;
    const __mmask32 m = left >= 32 ? ~__mmask32{0} : static_cast<__mmask32>((uint32_t{1} << left) - 1u);
    m0 = _mm512_max_epu16(m0, _mm512_and_si512(_mm512_maskz_loadu_epi16(m, v + i), magnitude));
  }
  m0 = _mm512_max_epu16(m0, m1);
  const __m512i low = _mm512_and_si512(m0, _mm512_set1_epi32(0xffff));
  const __m512i high = _mm512_srli_epi32(m0, 16);
  return static_cast<uint32_t>(_mm512_reduce_max_epu32(_mm512_max_epu32(low, high))) << 16;
}

// quantize_block_lanes for BFloat16 rows, 64 values per step without shuffling the inputs: in each 32-bit
// lane of a load the even value is the low half (a float32 after a shift) and the odd one the high half (a
// float32 after a mask). Their codes (low byte of each lane, as encode_lanes gives them) are merged back
// into memory order, two per lane, and two loads' worth packed into 64 codes by one pack and one permute.
// The same float32 values, products (or quotients) and encoders as quantize_block_lanes: the same codes.
template <typename Code, bool kMultiply>
void quantize_bf16_block_lanes(const uint16_t* v, int64_t n, const BlockScale& s, typename Code::Storage* q) {
  const __m512 factor = _mm512_set1_ps(kMultiply ? s.inverse : s.scale);
  const __m512i high_half = _mm512_set1_epi32(static_cast<int32_t>(0xffff0000u));
  const __m512i low_byte = _mm512_set1_epi32(0xff);
  auto codes_of = [&](__m512i bits) {
    const __m512 x = _mm512_castsi512_ps(bits);
    return Code::encode_lanes(kMultiply ? _mm512_mul_ps(x, factor) : _mm512_div_ps(x, factor));
  };
  // 32 values -> their 32 codes in memory order, a pair in the low 16 bits of each 32-bit lane
  auto code_pairs = [&](__m512i raw) {
    const __m512i even = codes_of(_mm512_slli_epi32(raw, 16));
    const __m512i odd = codes_of(_mm512_and_si512(raw, high_half));
    const __m512i odd_byte = _mm512_srli_epi32(_mm512_slli_epi32(odd, 24), 16);  // bits 8..15, rest 0
    return _mm512_ternarylogic_epi32(even, low_byte, odd_byte, 0xea);            // (even & 0xff) | odd_byte
  };
  // packus interleaves its inputs per 128-bit lane (8 codes of a, 8 of b, ...): put the 64-bit groups back
  const __m512i order = _mm512_setr_epi64(0, 2, 4, 6, 1, 3, 5, 7);
  int64_t i = 0;
  for (; i + 64 <= n; i += 64) {
    const __m512i a = code_pairs(_mm512_loadu_si512(v + i));
    const __m512i b = code_pairs(_mm512_loadu_si512(v + i + 32));
    _mm512_storeu_si512(q + i, _mm512_permutexvar_epi64(order, _mm512_packus_epi32(a, b)));
  }
  if (i < n) quantize_block_lanes<BFloat16, Code, kMultiply>(v + i, n - i, s, q + i);
}

// dequantizes one block (n codes, one scale) into out over 16 lanes at a time.
template <typename Code, typename Type>
void dequantize_block_lanes(const typename Code::Storage* q, int64_t n, float scale,
                            typename Type::Storage* out) {
  const __m512 factor = _mm512_set1_ps(scale);
  for (int64_t i = 0; i < n; i += simd::kLanes) {
    const __mmask16 m = simd::first_lanes(n - i);
    const __m512 values = Code::decode_lanes(_mm_maskz_loadu_epi8(m, q + i));
    simd::Lanes<Type>::store(out + i, _mm512_mul_ps(values, factor), m);
  }
}
#endif

// absmax_bits / quantize_block with vector lanes where the build and the element type have them.
template <typename Type>
uint32_t block_absmax_bits(const typename Type::Storage* v, int64_t n) {
#if defined(MOECOMM_SIMD_AVX512)
  if constexpr (std::is_same_v<Type, BFloat16>) return absmax_bits_bf16(v, n);
  if constexpr (simd::Lanes<Type>::kLoad) return absmax_bits_lanes<Type>(v, n);
#endif
  return absmax_bits<Type>(v, n);
}

template <typename Type, typename Code>
void encode_block(const typename Type::Storage* v, int64_t n, const BlockScale& s,
                  typename Code::Storage* q) {
#if defined(MOECOMM_SIMD_AVX512)
  if constexpr (std::is_same_v<Type, BFloat16>) {
    if (s.multiply) {
      quantize_bf16_block_lanes<Code, true>(v, n, s, q);
    } else {
      quantize_bf16_block_lanes<Code, false>(v, n, s, q);
    }
    return;
  } else if constexpr (simd::Lanes<Type>::kLoad) {
    if (s.multiply) {
      quantize_block_lanes<Type, Code, true>(v, n, s, q);
    } else {
      quantize_block_lanes<Type, Code, false>(v, n, s, q);
    }
    return;
  }
#endif
  quantize_block<Type, Code>(v, n, s, q);
}

// Quantizes one contiguous row into q_row and scale_row; false (nothing more written) at a block holding
// inf or NaN.
template <typename Type, typename Code>
bool quantize_row(const typename Type::Storage* row, const Blocks& blocks, int64_t scales_per_row,
                  typename Code::Storage* q_row, float* scale_row) {
  for (int64_t b = 0; b < scales_per_row; ++b) {
    const int64_t begin = blocks.begin(b), n = blocks.end(b) - begin;
    const uint32_t absmax = block_absmax_bits<Type>(row + begin, n);
    if (absmax >= kInfinityBits) return false;
    const BlockScale s = block_scale<Code>(absmax);
    scale_row[b] = s.scale;
    if (s.scale == 0.0f) {
      zero_bytes(reinterpret_cast<char*>(q_row + begin),
                 n * static_cast<int64_t>(sizeof(typename Code::Storage)));
    } else {
      encode_block<Type, Code>(row + begin, n, s, q_row + begin);
    }
  }
  return true;
}

// Output rows of input row r: row_of_pair[r * top_k ..] (entries -1 skipped), or r alone without a scatter.
struct Destinations {
  const RowScatter& scatter;
  template <typename Fn>
  void each(int64_t r, Fn&& fn) const {
    if (scatter.row_of_pair == nullptr) {
      fn(r);
      return;
    }
    for (int64_t k = 0; k < scatter.top_k; ++k) {
      const int64_t row = scatter.row_of_pair[r * scatter.top_k + k];
      if (row >= 0) fn(row);
    }
  }
};

// kOk when the scatter is usable for num_rows input rows, else kBadRowMapBase - (the pair check_row_cover
// names).
int64_t check_scatter(const RowScatter& scatter, int64_t num_rows) {
  if (scatter.row_of_pair == nullptr) return kOk;
  if (scatter.top_k < 0 || scatter.num_out_rows < 0) return kBadQuantArgs;
  const int64_t bad = check_row_cover(scatter.row_of_pair, num_rows * scatter.top_k, scatter.num_out_rows);
  return bad == kOk ? kOk : kBadRowMapBase - bad;
}

// Where one output row's scales sit relative to its codes. In wire rows (codes, zero padding, scales in one
// row) the whole span [codes, end of scales) is staged and written with one copy; else codes and scales are
// copied separately.
struct RowSpan {
  bool packed = false;
  int64_t scales_offset = 0;  // bytes from a row's first code to its first scale (packed only)
  int64_t bytes = 0;          // bytes written per output row when packed
};

// Packed when in every non-empty segment the scales start at the same offset after the codes, inside the
// row, and both advance by the same row stride.
RowSpan row_span(const RowSegments& q, const RowSegments& scales, int64_t code_bytes,
                 int64_t scales_per_row) {
  const int64_t scale_bytes = scales_per_row * static_cast<int64_t>(sizeof(float));
  if (scales.row_stride != q.row_stride) return {};
  RowSpan span{};
  bool first = true;
  for (int64_t s = 0; s < q.count; ++s) {
    if (q.first_row[s + 1] == q.first_row[s]) continue;
    const auto q_addr = reinterpret_cast<uintptr_t>(q.bases[s]);
    const auto s_addr = reinterpret_cast<uintptr_t>(scales.bases[s]);
    if (s_addr < q_addr) return {};
    const auto offset = static_cast<int64_t>(s_addr - q_addr);
    if (offset < code_bytes || offset % static_cast<int64_t>(sizeof(float)) != 0 ||
        offset + scale_bytes > q.row_stride || (!first && offset != span.scales_offset)) {
      return {};
    }
    span = {true, offset, offset + scale_bytes};
    first = false;
  }
  return span;
}

template <typename Type, typename Code>
int64_t quantize_typed(const typename Type::Storage* x, int64_t num_rows, const Blocks& blocks,
                       int64_t x_stride_row, int64_t x_stride_hidden, int64_t scales_per_row,
                       const RowScatter& scatter, const RowSegments& q, const RowSegments& scales,
                       int num_threads) {
  using Storage = typename Type::Storage;
  using CodeStorage = typename Code::Storage;
  const int64_t hidden = blocks.hidden;
  const int64_t row_bytes = hidden * static_cast<int64_t>(sizeof(CodeStorage));
  const int64_t scale_bytes = scales_per_row * static_cast<int64_t>(sizeof(float));
  const RowSpan span = row_span(q, scales, row_bytes, scales_per_row);
  const int64_t num_out_rows = row_segments_rows(q);
  const bool streaming = num_out_rows * (span.packed ? span.bytes : row_bytes) >= kStreamingOutputBytes;
  const Destinations destinations{scatter};
  std::vector<int64_t> first_bad(static_cast<size_t>(parallel_chunks(num_rows, num_threads, kRowsPerChunk)),
                                 kOk);
  parallel_for(num_rows, num_threads, kRowsPerChunk, [&](int64_t r0, int64_t r1, int64_t chunk) {
    std::vector<Storage> gathered(x_stride_hidden == 1 ? 0 : static_cast<size_t>(hidden));  // strided rows
    // Each row is quantized once into `staged` (codes, zero padding, scales when packed), then copied to
    // every output row it goes to. float storage keeps the staged scales aligned.
    const int64_t staged_bytes = span.packed ? span.bytes : row_bytes + scale_bytes;
    std::vector<float> staged_storage(static_cast<size_t>(staged_bytes / 4 + 2), 0.0f);
    char* staged = reinterpret_cast<char*>(staged_storage.data());
    float* staged_scales =
        reinterpret_cast<float*>(staged + (span.packed ? span.scales_offset : (row_bytes + 3) / 4 * 4));
    for (int64_t r = r0; r < r1; ++r) {
      const Storage* row = x + r * x_stride_row;
      if (x_stride_hidden != 1) {
        copy_row(reinterpret_cast<char*>(gathered.data()), reinterpret_cast<const char*>(row), hidden,
                 x_stride_hidden, sizeof(Storage));
        row = gathered.data();
      }
      if (!quantize_row<Type, Code>(row, blocks, scales_per_row, reinterpret_cast<CodeStorage*>(staged),
                                    staged_scales)) {
        first_bad[static_cast<size_t>(chunk)] = r;
        break;
      }
      destinations.each(r, [&](int64_t out_row) {
        char* q_row = segment_row(q, out_row);
        const int64_t bytes = span.packed ? span.bytes : row_bytes;
        if (streaming) {
          copy_row_streaming(q_row, staged, bytes);
        } else if (bytes > 0) {
          std::memcpy(q_row, staged, static_cast<size_t>(bytes));
        }
        if (!span.packed && scale_bytes > 0) {
          std::memcpy(segment_row(scales, out_row), staged_scales, static_cast<size_t>(scale_bytes));
        }
      });
    }
    if (streaming) streaming_fence();
  });
  for (int64_t bad : first_bad) {
    if (bad != kOk) return bad;  // chunks are in row order, each reports its first bad row
  }
  return kOk;
}

template <typename Code, typename Type>
void dequantize_row(const typename Code::Storage* q_row, const float* scale_row, const Blocks& blocks,
                    typename Type::Storage* out) {
  for (int64_t b = 0; b < blocks.used; ++b) {
    const float scale = scale_row[b];
    const int64_t begin = blocks.begin(b), end = blocks.end(b);
#if defined(MOECOMM_SIMD_AVX512)
    if constexpr (simd::Lanes<Type>::kStore) {
      dequantize_block_lanes<Code, Type>(q_row + begin, end - begin, scale, out + begin);
      continue;
    }
#endif
    for (int64_t h = begin; h < end; ++h) out[h] = Type::store(Code::decode(q_row[h]) * scale);
  }
}

template <typename Code, typename Type>
void dequantize_typed(const typename Code::Storage* q, int64_t num_rows, const Blocks& blocks,
                      int64_t q_stride_row, const float* scales, int64_t scales_stride_row,
                      const RowScatter& scatter, typename Type::Storage* out, int num_threads) {
  using OutStorage = typename Type::Storage;
  const int64_t hidden = blocks.hidden;
  const int64_t out_row_bytes = hidden * static_cast<int64_t>(sizeof(OutStorage));
  const int64_t num_out_rows = scatter.row_of_pair == nullptr ? num_rows : scatter.num_out_rows;
  const bool streaming = num_out_rows * out_row_bytes >= kStreamingOutputBytes;
  const Destinations destinations{scatter};
  parallel_for(num_rows, num_threads, kRowsPerChunk, [&](int64_t r0, int64_t r1, int64_t) {
    // Large outputs: each row is dequantized into `staged` (cached) and streamed to its rows; small ones are
    // computed into their first row and copied to the others.
    std::vector<OutStorage> staged(streaming ? static_cast<size_t>(hidden) : 0);
    for (int64_t r = r0; r < r1; ++r) {
      const typename Code::Storage* q_row = q + r * q_stride_row;
      const float* scale_row = scales + r * scales_stride_row;
      const OutStorage* computed = nullptr;
      destinations.each(r, [&](int64_t out_row) {
        OutStorage* target = out + out_row * hidden;
        if (computed == nullptr) {
          OutStorage* into = streaming ? staged.data() : target;
          dequantize_row<Code, Type>(q_row, scale_row, blocks, into);
          computed = into;
          if (!streaming) return;
        }
        if (streaming) {
          copy_row_streaming(reinterpret_cast<char*>(target), reinterpret_cast<const char*>(computed),
                             out_row_bytes);
        } else if (out_row_bytes > 0) {
          std::memcpy(target, computed, static_cast<size_t>(out_row_bytes));
        }
      });
    }
    if (streaming) streaming_fence();
  });
}

}  // namespace

int64_t quantize_rows(const void* x, ScalarType type, int64_t num_rows, int64_t hidden, int64_t x_stride_row,
                      int64_t x_stride_hidden, QuantKind kind, int64_t block_cols, int64_t scales_per_row,
                      const RowScatter& scatter, const RowSegments& q, const RowSegments& scales,
                      int num_threads) {
  Blocks blocks{};
  if (!blocks_cover(num_rows, hidden, block_cols, scales_per_row, &blocks)) return kBadQuantArgs;
  if (!row_segments_valid(q, hidden) ||  // codes of both kinds are one byte
      !row_segments_valid(scales, scales_per_row * static_cast<int64_t>(sizeof(float))) ||
      scales.count != q.count) {
    return kBadQuantArgs;
  }
  for (int64_t s = 0; s <= q.count; ++s) {
    if (scales.first_row[s] != q.first_row[s]) return kBadQuantArgs;
  }
  const int64_t num_out_rows = row_segments_rows(q);
  if (num_out_rows != (scatter.row_of_pair == nullptr ? num_rows : scatter.num_out_rows))
    return kBadQuantArgs;
  const int64_t scatter_ok = check_scatter(scatter, num_rows);
  if (scatter_ok != kOk) return scatter_ok;
  int64_t result = kBadQuantArgs;
  visit_float_type(type, [&](auto element) {
    using Type = decltype(element);
    visit_code(kind, [&](auto code) {
      using Code = decltype(code);
      result = quantize_typed<Type, Code>(static_cast<const typename Type::Storage*>(x), num_rows, blocks,
                                          x_stride_row, x_stride_hidden, scales_per_row, scatter, q, scales,
                                          num_threads);
    });
  });
  return result;
}

int64_t dequantize_rows(const void* q, QuantKind kind, int64_t num_rows, int64_t hidden, int64_t q_stride_row,
                        const float* scales, int64_t scales_stride_row, int64_t block_cols,
                        int64_t scales_per_row, const RowScatter& scatter, ScalarType out_type, void* out,
                        int num_threads) {
  Blocks blocks{};
  if (!blocks_cover(num_rows, hidden, block_cols, scales_per_row, &blocks)) return kBadQuantArgs;
  if (q_stride_row < 0 || scales_stride_row < 0) return kBadQuantArgs;
  for (int64_t r = 0; r < num_rows; ++r) {
    for (int64_t b = 0; b < scales_per_row; ++b) {
      const float scale = scales[r * scales_stride_row + b];
      if (!(scale >= 0.0f && scale <= std::numeric_limits<float>::max()))
        return r * scales_per_row + b;  // NaN too
    }
  }
  const int64_t scatter_ok = check_scatter(scatter, num_rows);
  if (scatter_ok != kOk) return scatter_ok;
  bool known = false;
  visit_float_type(out_type, [&](auto element) {
    using Type = decltype(element);
    known = visit_code(kind, [&](auto code) {
      using Code = decltype(code);
      dequantize_typed<Code, Type>(static_cast<const typename Code::Storage*>(q), num_rows, blocks,
                                   q_stride_row, scales, scales_stride_row, scatter,
                                   static_cast<typename Type::Storage*>(out), num_threads);
    });
  });
  return known ? kOk : kBadQuantArgs;
}

}  // namespace moecomm::cpu
