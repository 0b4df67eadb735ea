// route_layout: stable counting sort of (token, k) pairs by expert, O(T*K), no comparison sort.
#include <vector>

#include "moecomm/cpu_kernels.h"
#include "parallel.h"

namespace moecomm::cpu {

size_t element_size(ScalarType type) {
  switch (type) {
    case ScalarType::kFloat32:
      return 4;
    case ScalarType::kFloat16:
      return 2;
    case ScalarType::kBFloat16:
      return 2;
    case ScalarType::kInt32:
      return 4;
    case ScalarType::kInt64:
      return 8;
    case ScalarType::kBool:
      return 1;
    case ScalarType::kInt8:
      return 1;
    case ScalarType::kFloat8E4M3FN:
      return 1;
  }
  return 0;
}

template <typename Id>
int64_t route_layout(const Id* ids, int64_t num_tokens, int64_t top_k, int64_t num_experts,
                     const bool* is_kept, int64_t* tokens_per_expert, int64_t* row_of_pair, int num_threads) {
  const int64_t num_pairs = num_tokens * top_k;
  for (int64_t e = 0; e < num_experts; ++e) tokens_per_expert[e] = 0;
  // Validate every id once, before any index is used.
  for (int64_t i = 0; i < num_pairs; ++i) {
    const int64_t id = static_cast<int64_t>(ids[i]);
    if (id < 0 || id >= num_experts) return i;
  }
  // Pass 1: per-chunk counts (chunks are contiguous token ranges, so order stays stable).
  const int64_t min_chunk_tokens = 4096;
  const int64_t chunks = std::max<int64_t>(1, parallel_chunks(num_tokens, num_threads, min_chunk_tokens));
  std::vector<int64_t> counts(static_cast<size_t>(chunks * num_experts), 0);
  parallel_for(num_tokens, num_threads, min_chunk_tokens, [&](int64_t t0, int64_t t1, int64_t c) {
    int64_t* mine = counts.data() + c * num_experts;
    for (int64_t i = t0 * top_k; i < t1 * top_k; ++i) {
      if (is_kept == nullptr || is_kept[i]) ++mine[static_cast<int64_t>(ids[i])];
    }
  });
  // Pass 2: exclusive prefix over (expert, chunk) gives each chunk its first row per expert.
  int64_t next_row = 0;
  for (int64_t e = 0; e < num_experts; ++e) {
    for (int64_t c = 0; c < chunks; ++c) {
      const int64_t n = counts[c * num_experts + e];
      counts[c * num_experts + e] = next_row;
      next_row += n;
      tokens_per_expert[e] += n;
    }
  }
  // Pass 3: assign rows.
  parallel_for(num_tokens, num_threads, min_chunk_tokens, [&](int64_t t0, int64_t t1, int64_t c) {
    int64_t* cursor = counts.data() + c * num_experts;
    for (int64_t i = t0 * top_k; i < t1 * top_k; ++i) {
      if (is_kept == nullptr || is_kept[i]) {
        row_of_pair[i] = cursor[static_cast<int64_t>(ids[i])]++;
      } else {
        row_of_pair[i] = -1;
      }
    }
  });
  return kOk;
}

template int64_t route_layout<int32_t>(const int32_t*, int64_t, int64_t, int64_t, const bool*, int64_t*,
                                       int64_t*, int);
template int64_t route_layout<int64_t>(const int64_t*, int64_t, int64_t, int64_t, const bool*, int64_t*,
                                       int64_t*, int);

}  // namespace moecomm::cpu
