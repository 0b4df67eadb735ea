// select_kept: capacity-limited choice of kept (token, k) pairs per bucket of experts.
#include <algorithm>
#include <limits>
#include <vector>

#include "moecomm/cpu_kernels.h"

namespace moecomm::cpu {

template <typename Id>
int64_t select_kept(const Id* ids, int64_t num_tokens, int64_t top_k, int64_t num_experts,
                    int64_t experts_per_bucket, const int64_t* capacity, const float* weights,
                    bool* is_kept) {
  const int64_t num_pairs = num_tokens * top_k;
  const int64_t num_buckets = num_experts / experts_per_bucket;
  for (int64_t i = 0; i < num_pairs; ++i) {
    const int64_t id = static_cast<int64_t>(ids[i]);
    if (id < 0 || id >= num_experts) return i;
  }
  std::vector<int64_t> load(static_cast<size_t>(num_buckets), 0);
  if (weights == nullptr) {
    // position: the first capacity[b] pairs of bucket b in (token, k) order are kept.
    for (int64_t i = 0; i < num_pairs; ++i) {
      const int64_t b = static_cast<int64_t>(ids[i]) / experts_per_bucket;
      is_kept[i] = load[b] < capacity[b];  // a negative capacity keeps nothing
      ++load[b];
    }
    return kOk;
  }
  // probs: group pairs by bucket (stable), then keep the capacity[b] largest weights of each
  // over-full bucket, ties by pair index (token, then k).
  for (int64_t i = 0; i < num_pairs; ++i) ++load[static_cast<int64_t>(ids[i]) / experts_per_bucket];
  std::vector<int64_t> offset(static_cast<size_t>(num_buckets) + 1, 0);
  for (int64_t b = 0; b < num_buckets; ++b) offset[b + 1] = offset[b] + load[b];
  std::vector<int64_t> cursor(offset.begin(), offset.end() - 1);
  std::vector<int64_t> pairs(static_cast<size_t>(num_pairs));
  for (int64_t i = 0; i < num_pairs; ++i) {
    pairs[cursor[static_cast<int64_t>(ids[i]) / experts_per_bucket]++] = i;
  }
  // NaN sorts as -inf so the order stays a strict weak ordering whatever the weights hold.
  auto key = [weights](int64_t i) {
    const float w = weights[i];
    return w != w ? -std::numeric_limits<float>::infinity() : w;
  };
  auto higher_first = [&key](int64_t a, int64_t b) {
    const float wa = key(a), wb = key(b);
    if (wa != wb) return wa > wb;
    return a < b;
  };
  for (int64_t b = 0; b < num_buckets; ++b) {
    auto first = pairs.begin() + offset[b], last = pairs.begin() + offset[b + 1];
    const int64_t keep = std::max<int64_t>(0, std::min<int64_t>(capacity[b], load[b]));
    if (keep < load[b]) std::nth_element(first, first + keep, last, higher_first);
    for (auto it = first; it != last; ++it) is_kept[*it] = (it - first) < keep;
  }
  return kOk;
}

template int64_t select_kept<int32_t>(const int32_t*, int64_t, int64_t, int64_t, int64_t, const int64_t*,
                                      const float*, bool*);
template int64_t select_kept<int64_t>(const int64_t*, int64_t, int64_t, int64_t, int64_t, const int64_t*,
                                      const float*, bool*);

}  // namespace moecomm::cpu
