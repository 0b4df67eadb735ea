// permute: scatter each token's row to its (token, k) pairs' expert-major rows.
#include "copy.h"
#include "moecomm/cpu_kernels.h"
#include "parallel.h"
#include "row_cover.h"
#include "row_segments.h"

namespace moecomm::cpu {

int64_t permute(const void* x, int64_t num_tokens, int64_t hidden, int64_t x_stride_token,
                int64_t x_stride_hidden, size_t elem_size, const int64_t* row_of_pair, int64_t top_k,
                const RowSegments& out, int num_threads) {
  const int64_t row_bytes = hidden * static_cast<int64_t>(elem_size);
  if (!row_segments_valid(out, row_bytes)) return kBadRowSegments;
  const int64_t num_rows = row_segments_rows(out);
  const int64_t bad = check_row_cover(row_of_pair, num_tokens * top_k, num_rows);
  if (bad != kOk) return bad;
  const char* src = static_cast<const char*>(x);
  const int64_t token_bytes = x_stride_token * static_cast<int64_t>(elem_size);
  const bool streaming = x_stride_hidden == 1 && num_rows * row_bytes >= kStreamingOutputBytes;
  parallel_for(num_tokens, num_threads, 16, [&](int64_t t0, int64_t t1, int64_t) {
    for (int64_t t = t0; t < t1; ++t) {
      const char* x_row = src + t * token_bytes;
      for (int64_t k = 0; k < top_k; ++k) {
        const int64_t row = row_of_pair[t * top_k + k];
        if (row < 0) continue;
        char* dst = segment_row(out, row);
        if (streaming) {
          copy_row_streaming(dst, x_row, row_bytes);
        } else {
          copy_row(dst, x_row, hidden, x_stride_hidden, elem_size);
        }
      }
    }
    if (streaming) streaming_fence();
  });
  return kOk;
}

}  // namespace moecomm::cpu
