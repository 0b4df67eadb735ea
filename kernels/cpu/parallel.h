// A minimal fork-join parallel_for over [0, n) for the CPU kernels.
#pragma once

#include <algorithm>
#include <cstdint>
#include <thread>
#include <vector>

namespace moecomm::cpu {

// Splits [0, n) into at most num_threads contiguous chunks of at least min_chunk items and runs
// fn(begin, end, chunk_index) on each; the calling thread takes the first chunk.
template <typename Fn>
void parallel_for(int64_t n, int num_threads, int64_t min_chunk, Fn&& fn) {
  if (n <= 0) return;
  int64_t max_chunks = std::max<int64_t>(1, n / std::max<int64_t>(1, min_chunk));
  int64_t chunks = std::min<int64_t>(std::max(1, num_threads), max_chunks);
  if (chunks == 1) {
    fn(int64_t{0}, n, int64_t{0});
    return;
  }
  int64_t per = (n + chunks - 1) / chunks;
  std::vector<std::thread> workers;
  workers.reserve(static_cast<size_t>(chunks - 1));
  for (int64_t c = 1; c < chunks; ++c) {
    int64_t begin = c * per, end = std::min(n, begin + per);
    if (begin >= end) break;
    workers.emplace_back([&fn, begin, end, c] { fn(begin, end, c); });
  }
  fn(int64_t{0}, std::min(n, per), int64_t{0});
  for (auto& w : workers) w.join();
}

// Number of chunks parallel_for will use for the same arguments.
inline int64_t parallel_chunks(int64_t n, int num_threads, int64_t min_chunk) {
  if (n <= 0) return 0;
  int64_t max_chunks = std::max<int64_t>(1, n / std::max<int64_t>(1, min_chunk));
  int64_t chunks = std::min<int64_t>(std::max(1, num_threads), max_chunks);
  int64_t per = (n + chunks - 1) / chunks;
  return (n + per - 1) / per;
}

}  // namespace moecomm::cpu
