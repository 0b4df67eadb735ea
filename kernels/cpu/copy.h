// Row copies shared by the data-movement kernels: strided source, contiguous destination; streaming
// (non-temporal) row stores for outputs too large to stay cached. Size-0 copies touch nothing (an empty
// tensor's data pointer may be null, which memcpy/memset must not see).
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>

#if defined(__AVX512F__)
#include <immintrin.h>
#elif defined(__SSE2__)
#include <emmintrin.h>
#endif

namespace moecomm::cpu {

// Copies one row of `hidden` elements; dst is contiguous, src has element stride src_stride.
inline void copy_row(char* dst, const char* src, int64_t hidden, int64_t src_stride, size_t elem_size) {
  if (hidden <= 0) return;  // empty buffers may be null: memcpy(nullptr, nullptr, 0) is undefined
  if (src_stride == 1) {
    std::memcpy(dst, src, static_cast<size_t>(hidden) * elem_size);
    return;
  }
  const int64_t es = static_cast<int64_t>(elem_size);
  for (int64_t h = 0; h < hidden; ++h) std::memcpy(dst + h * es, src + h * src_stride * es, elem_size);
}

// Copies `count` rows of `hidden` elements; source rows are stride_row elements apart.
inline void copy_rows(char* dst, const char* src, int64_t count, int64_t hidden, int64_t stride_row,
                      int64_t stride_hidden, size_t elem_size) {
  if (hidden <= 0) return;  // nothing to copy, however many rows (no loop over empty rows)
  const int64_t es = static_cast<int64_t>(elem_size);
  for (int64_t r = 0; r < count; ++r) {
    copy_row(dst + r * hidden * es, src + r * stride_row * es, hidden, stride_hidden, elem_size);
  }
}

// Outputs larger than this bypass the cache with streaming stores: they cannot stay cached anyway,
// and skipping the read-for-ownership of every destination line saves a third of the traffic.
constexpr int64_t kStreamingOutputBytes = int64_t{32} << 20;

// Copies `bytes` bytes with non-temporal stores: plain stores up to dst's first 64-byte boundary, streaming
// stores for the whole cache lines after it, plain stores for the tail. Streaming whole, aligned lines keeps
// the write-combining buffers full (a streamed partial line costs a read-modify-write), so any size and
// alignment streams nearly all of its bytes at full speed: wire rows of quantized dispatch are rarely 64-byte
// multiples.
inline void copy_row_streaming(char* dst, const char* src, int64_t bytes) {
#if defined(__SSE2__)
  const int64_t misalign = static_cast<int64_t>(reinterpret_cast<uintptr_t>(dst) & 63);
  const int64_t head = std::min<int64_t>(bytes, misalign == 0 ? 0 : 64 - misalign);
  if (head > 0) std::memcpy(dst, src, static_cast<size_t>(head));
  dst += head;
  src += head;
  bytes -= head;
  const int64_t body = bytes & ~int64_t{63};
  for (int64_t i = 0; i < body; i += 64) {
#if defined(__AVX512F__)
    _mm512_stream_si512(reinterpret_cast<__m512i*>(dst + i), _mm512_loadu_si512(src + i));
#else
    const __m128i a = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + i));
    const __m128i b = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + i + 16));
    const __m128i c = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + i + 32));
    const __m128i d = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + i + 48));
    _mm_stream_si128(reinterpret_cast<__m128i*>(dst + i), a);
    _mm_stream_si128(reinterpret_cast<__m128i*>(dst + i + 16), b);
    _mm_stream_si128(reinterpret_cast<__m128i*>(dst + i + 32), c);
    _mm_stream_si128(reinterpret_cast<__m128i*>(dst + i + 48), d);
#endif
  }
  if (bytes > body) std::memcpy(dst + body, src + body, static_cast<size_t>(bytes - body));
  return;
#endif
  if (bytes > 0) std::memcpy(dst, src, static_cast<size_t>(bytes));
}

inline void streaming_fence() {
#if defined(__SSE2__)
  _mm_sfence();
#endif
}

// Zeroes `bytes` bytes at dst (nothing when bytes is 0, whatever dst is).
inline void zero_bytes(char* dst, int64_t bytes) {
  if (bytes > 0) std::memset(dst, 0, static_cast<size_t>(bytes));
}

}  // namespace moecomm::cpu
