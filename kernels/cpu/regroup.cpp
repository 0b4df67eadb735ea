// regroup_blocks: reorder row blocks from (a, b)-major to (b, a)-major order.
#include <vector>

#include "copy.h"
#include "moecomm/cpu_kernels.h"
#include "parallel.h"

namespace moecomm::cpu {

int64_t regroup_blocks(const void* rows, int64_t num_rows, int64_t hidden, int64_t stride_row,
                       int64_t stride_hidden, size_t elem_size, const int64_t* block_rows, int64_t num_outer,
                       int64_t num_inner, void* out, int num_threads) {
  const int64_t num_blocks = num_outer * num_inner;
  // Source offsets in (outer, inner) order; validate while summing.
  std::vector<int64_t> source_first(static_cast<size_t>(num_blocks));
  int64_t total = 0;
  for (int64_t i = 0; i < num_blocks; ++i) {
    if (block_rows[i] < 0 || block_rows[i] > num_rows - total) return i;
    source_first[i] = total;
    total += block_rows[i];
  }
  if (total != num_rows) return num_blocks;
  if (hidden == 0) return kOk;  // nothing to copy, however many rows
  // Destination offsets in (inner, outer) order.
  std::vector<int64_t> dest_first(static_cast<size_t>(num_blocks));
  int64_t next = 0;
  for (int64_t b = 0; b < num_inner; ++b) {
    for (int64_t a = 0; a < num_outer; ++a) {
      dest_first[a * num_inner + b] = next;
      next += block_rows[a * num_inner + b];
    }
  }
  const int64_t es = static_cast<int64_t>(elem_size);
  const char* src = static_cast<const char*>(rows);
  char* dst = static_cast<char*>(out);
  parallel_for(num_blocks, num_threads, 1, [&](int64_t i0, int64_t i1, int64_t) {
    for (int64_t i = i0; i < i1; ++i) {
      copy_rows(dst + dest_first[i] * hidden * es, src + source_first[i] * stride_row * es, block_rows[i],
                hidden, stride_row, stride_hidden, elem_size);
    }
  });
  return kOk;
}

}  // namespace moecomm::cpu
