// The invariant permute and unpermute rely on: row_of_pair maps the kept (token, k) pairs one-to-one
// onto the rows [0, N) of the expert-major buffer (-1 marks a dropped pair).
#pragma once

#include <cstdint>
#include <vector>

#include "moecomm/cpu_kernels.h"

namespace moecomm::cpu {

// Checks row_of_pair [num_pairs] against num_rows in O(num_pairs) with a bitmap of at most num_pairs
// bytes. Returns kOk; the flat index of the first pair whose row is outside [-1, num_rows) or repeats
// an earlier pair's row; or num_pairs when the kept pairs are fewer than num_rows (some row would
// never be written).
inline int64_t check_row_cover(const int64_t* row_of_pair, int64_t num_pairs, int64_t num_rows) {
  if (num_rows > num_pairs) {
    for (int64_t i = 0; i < num_pairs; ++i) {
      if (row_of_pair[i] < -1 || row_of_pair[i] >= num_rows) return i;
    }
    return num_pairs;
  }
  std::vector<uint8_t> used(static_cast<size_t>(num_rows), 0);
  int64_t kept = 0;
  for (int64_t i = 0; i < num_pairs; ++i) {
    const int64_t row = row_of_pair[i];
    if (row == -1) continue;
    if (row < -1 || row >= num_rows || used[static_cast<size_t>(row)]) return i;
    used[static_cast<size_t>(row)] = 1;
    ++kept;
  }
  return kept == num_rows ? kOk : num_pairs;
}

}  // namespace moecomm::cpu
