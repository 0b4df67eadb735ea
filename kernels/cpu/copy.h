// Row copies shared by the data-movement kernels: strided source, contiguous destination.
// Size-0 copies touch nothing (an empty tensor's data pointer may be null, which memcpy must not see).
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>

namespace moecomm::cpu {

// Copies one row of `hidden` elements; dst is contiguous, src has element stride src_stride.
inline void copy_row(char* dst, const char* src, int64_t hidden, int64_t src_stride, size_t elem_size) {
  if (hidden <= 0) return;
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

// Zeroes `bytes` bytes at dst (nothing when bytes is 0, whatever dst is).
inline void zero_bytes(char* dst, int64_t bytes) {
  if (bytes > 0) std::memset(dst, 0, static_cast<size_t>(bytes));
}

}  // namespace moecomm::cpu
