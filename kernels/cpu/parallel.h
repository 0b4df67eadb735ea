// A minimal fork-join parallel_for over [0, n) for the CPU kernels.
//
// It never terminates the process: a thread that cannot be created (std::system_error, std::bad_alloc)
// leaves its chunk to the calling thread, and an exception thrown by fn on any thread is caught, every
// started thread is joined, and the first exception is rethrown on the calling thread (the host layer
// turns it into a Python exception).
#pragma once

#include <algorithm>
#include <cstdint>
#include <exception>
#include <thread>
#include <vector>

namespace moecomm::cpu {

// Items per chunk parallel_for uses for these arguments (n > 0).
inline int64_t parallel_chunk_size(int64_t n, int num_threads, int64_t min_chunk) {
  const int64_t max_chunks = std::max<int64_t>(1, n / std::max<int64_t>(1, min_chunk));
  const int64_t chunks = std::min<int64_t>(std::max(1, num_threads), max_chunks);
  return (n + chunks - 1) / chunks;
}

// Number of chunks parallel_for will use for the same arguments.
inline int64_t parallel_chunks(int64_t n, int num_threads, int64_t min_chunk) {
  if (n <= 0) return 0;
  const int64_t per = parallel_chunk_size(n, num_threads, min_chunk);
  return (n + per - 1) / per;
}

// Splits [0, n) into at most num_threads contiguous chunks of at least min_chunk items and runs
// fn(begin, end, chunk_index) on each; the calling thread takes the first chunk, and every chunk whose
// thread could not be started.
template <typename Fn>
void parallel_for(int64_t n, int num_threads, int64_t min_chunk, Fn&& fn) {
  const int64_t chunks = parallel_chunks(n, num_threads, min_chunk);
  if (chunks <= 0) return;
  if (chunks == 1) {
    fn(int64_t{0}, n, int64_t{0});
    return;
  }
  const int64_t per = parallel_chunk_size(n, num_threads, min_chunk);
  // One slot per chunk, allocated before any thread starts; if even that fails, run everything here.
  std::vector<std::exception_ptr> errors;
  std::vector<std::thread> workers;
  try {
    errors.resize(static_cast<size_t>(chunks));
    workers.reserve(static_cast<size_t>(chunks - 1));
  } catch (...) {
    for (int64_t c = 0; c < chunks; ++c) fn(c * per, std::min(n, (c + 1) * per), c);
    return;
  }
  auto run_chunk = [&fn, &errors, n, per](int64_t c) noexcept {
    try {
      fn(c * per, std::min(n, (c + 1) * per), c);
    } catch (...) {
      errors[static_cast<size_t>(c)] = std::current_exception();
    }
  };
  int64_t started = 1;  // chunks [1, started) run on worker threads
  for (; started < chunks; ++started) {
    try {
      workers.emplace_back(run_chunk, started);
    } catch (...) {  // no thread (resource limit, out of memory): the calling thread takes the rest
      break;
    }
  }
  run_chunk(0);
  for (int64_t c = started; c < chunks; ++c) run_chunk(c);
  for (auto& w : workers) w.join();
  for (const auto& error : errors) {
    if (error) std::rethrow_exception(error);
  }
}

}  // namespace moecomm::cpu
