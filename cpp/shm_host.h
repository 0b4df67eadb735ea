// Host side of the shm transport: TensorArg checks over the C ABI of moecomm/shm.h, status codes turned
// into exceptions (bad input: std::invalid_argument naming the argument; a failed collective: ShmError).
#pragma once

#include <cstdint>
#include <memory>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "moecomm/shm.h"
#include "tensor_arg.h"

namespace moecomm::host {

// A collective or setup step failed (a peer late, dead or disagreeing, a refused segment, an OS error).
class ShmError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

std::string shm_random_name();
uint64_t shm_random_nonce();

// One counted view of a mapped region: the memory stays mapped while this object lives.
class ShmRegionBuffer {
 public:
  ShmRegionBuffer(moecomm_shm_view* view, void* data, uint64_t nbytes)
      : view_(view), data_(data), nbytes_(nbytes) {}
  ~ShmRegionBuffer() { moecomm_shm_view_release(view_); }
  ShmRegionBuffer(const ShmRegionBuffer&) = delete;
  ShmRegionBuffer& operator=(const ShmRegionBuffer&) = delete;
  void* data() const { return data_; }
  uint64_t nbytes() const { return nbytes_; }

 private:
  moecomm_shm_view* view_;
  void* data_;
  uint64_t nbytes_;
};

class ShmGroupHost {
 public:
  ShmGroupHost(int rank, int world_size, uint64_t nonce, const std::vector<std::string>& names,
               double timeout_s);
  ~ShmGroupHost() { close(); }
  ShmGroupHost(const ShmGroupHost&) = delete;
  ShmGroupHost& operator=(const ShmGroupHost&) = delete;

  int rank() const { return rank_; }
  int world_size() const { return world_; }
  void close();
  // (st_mode & 07777, st_uid) of this rank's segment as created.
  std::pair<unsigned, unsigned> own_segment_mode() const;

  void barrier(double timeout_s);
  // tensor [N, *S] contiguous (any dtype); out [world_size * N, *S] (any shape of that many elements)
  // contiguous, same dtype.
  void all_gather(const TensorArg& tensor, const TensorArg& out, int num_threads, double timeout_s);
  // tensor [N, *S] contiguous; input_splits [world_size] rows per destination (sum N); out [M, *S]
  // contiguous, same dtype; output_splits [world_size] rows per source (sum M).
  void all_to_all(const TensorArg& tensor, const std::vector<int64_t>& input_splits, const TensorArg& out,
                  const std::vector<int64_t>& output_splits, int num_threads, double timeout_s);
  // tensor [world_size * M, *S] contiguous float32/float16/bfloat16/int32/int64; out [M, *S] same dtype.
  void reduce_scatter(const TensorArg& tensor, const TensorArg& out, int num_threads, double timeout_s);

  void ensure_region(const std::string& region, int64_t nbytes);
  void sync(double timeout_s);
  std::unique_ptr<ShmRegionBuffer> region(int rank, const std::string& region);

 private:
  moecomm_shm_group* handle() const;
  int rank_;
  int world_;
  moecomm_shm_group* group_ = nullptr;
};

}  // namespace moecomm::host
