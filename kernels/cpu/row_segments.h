// Addressing of RowSegments (moecomm/cpu_kernels.h): output rows split over several buffers.
#pragma once

#include <algorithm>
#include <cstdint>

#include "moecomm/cpu_kernels.h"

namespace moecomm::cpu {

// True when `segments` can be addressed: count >= 1, first_row starts at 0 and does not decrease, every
// non-empty segment has a base (unless rows hold no bytes: an empty tensor's data may be null), and
// row_stride >= min_row_bytes.
inline bool row_segments_valid(const RowSegments& segments, int64_t min_row_bytes) {
  if (segments.count < 1 || segments.bases == nullptr || segments.first_row == nullptr) return false;
  if (segments.first_row[0] != 0 || segments.row_stride < min_row_bytes) return false;
  for (int64_t s = 0; s < segments.count; ++s) {
    const int64_t rows = segments.first_row[s + 1] - segments.first_row[s];
    if (rows < 0 || (rows > 0 && min_row_bytes > 0 && segments.bases[s] == nullptr)) return false;
  }
  return true;
}

inline int64_t row_segments_rows(const RowSegments& segments) {
  return segments.first_row[segments.count];
}

// Start of output row r, for r in [0, row_segments_rows(segments)) of valid segments (null in a segment
// without a base, whose rows hold no bytes).
inline char* segment_row(const RowSegments& segments, int64_t r) {
  int64_t s = 0;
  if (segments.count > 1) {
    const int64_t* end = segments.first_row + segments.count + 1;
    s = std::upper_bound(segments.first_row + 1, end, r) - (segments.first_row + 1);
  }
  char* base = segments.bases[s];
  return base == nullptr ? nullptr : base + (r - segments.first_row[s]) * segments.row_stride;
}

}  // namespace moecomm::cpu
