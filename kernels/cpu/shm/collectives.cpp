// all_gather, all_to_all and reduce_scatter over the epoch protocol of group.h.
#include <algorithm>
#include <cstring>
#include <string>
#include <vector>

#include "../convert.h"
#include "../copy.h"
#include "../parallel.h"
#include "error.h"
#include "group.h"

namespace moecomm::shm {

namespace {

constexpr int64_t kCopyChunk = int64_t{1} << 20;  // bytes per thread chunk of a copy
constexpr int64_t kReduceChunk = 1024;            // elements accumulated at once (on the stack)

// Copies nbytes with up to num_threads threads (nothing at all for 0 bytes).
void parallel_copy(char* dst, const char* src, uint64_t nbytes, int num_threads) {
  cpu::parallel_for(static_cast<int64_t>(nbytes), num_threads, kCopyChunk,
                    [&](int64_t begin, int64_t end, int64_t) {
                      cpu::copy_row(dst + begin, src + begin, end - begin, 1, 1);
                    });
}

// Integers add modulo 2^64 (unsigned: no undefined overflow), then wrap to the dtype like torch does.
struct Int32Sum {
  using Storage = int32_t;
  static uint64_t load(int32_t v) { return static_cast<uint64_t>(static_cast<int64_t>(v)); }
  static int32_t store(uint64_t v) { return static_cast<int32_t>(static_cast<uint32_t>(v)); }
};
struct Int64Sum {
  using Storage = int64_t;
  static uint64_t load(int64_t v) { return static_cast<uint64_t>(v); }
  static int64_t store(uint64_t v) { return static_cast<int64_t>(v); }
};

// dst[i] = sum over ranks (in rank order) of blocks[r][i], accumulated in the type Codec::load returns
// (float32 for the float codecs of convert.h, uint64 modulo 2^64 for integers).
template <typename Codec>
void reduce_blocks(const std::vector<const char*>& blocks, int64_t elems, char* dst, int num_threads) {
  using T = typename Codec::Storage;
  using Acc = decltype(Codec::load(T{}));
  cpu::parallel_for(elems, num_threads, 16 * kReduceChunk, [&](int64_t begin, int64_t end, int64_t) {
    Acc acc[kReduceChunk];
    for (int64_t start = begin; start < end; start += kReduceChunk) {
      const int64_t n = std::min(kReduceChunk, end - start);
      std::fill(acc, acc + n, Acc{});
      for (const char* block : blocks) {
        const T* src = reinterpret_cast<const T*>(block) + start;
        for (int64_t i = 0; i < n; ++i) acc[i] += Codec::load(src[i]);
      }
      T* out = reinterpret_cast<T*>(dst) + start;
      for (int64_t i = 0; i < n; ++i) out[i] = Codec::store(acc[i]);
    }
  });
}

}  // namespace

void Group::all_gather(const void* src, uint64_t nbytes, void* dst, int num_threads, double timeout_s) {
  const Deadline deadline(timeout_s);
  const uint32_t op = begin_op(deadline);
  if (nbytes > 0)
    parallel_copy(grow_region(kCollectiveLabel, nbytes).data(), static_cast<const char*>(src), nbytes,
                  num_threads);
  publish_op(op, OpKind::kAllGather, nbytes, 0);
  arrive_and_wait(op, OpKind::kAllGather, deadline);
  char* out = static_cast<char*>(dst);
  for (int p = 0; p < world_; ++p) {
    if (nbytes == 0) break;
    const uint64_t total = header(p)->op_total.load(std::memory_order_relaxed);
    if (total != nbytes) {
      break_with(MOECOMM_SHM_EREFUSED, "rank " + std::to_string(p) + " gathers " + std::to_string(total) +
                                           " bytes but rank " + std::to_string(rank_) + " gathers " +
                                           std::to_string(nbytes) + " in " + op_name(op, OpKind::kAllGather) +
                                           " (every rank must pass the same shape and dtype)");
    }
    const char* from =
        p == rank_ ? static_cast<const char*>(src) : peer_window(p, nbytes, op, OpKind::kAllGather);
    parallel_copy(out + static_cast<uint64_t>(p) * nbytes, from, nbytes, num_threads);
  }
  if (nbytes == 0) {  // still catch a peer that gathers something
    for (int p = 0; p < world_; ++p) {
      if (header(p)->op_total.load(std::memory_order_relaxed) != 0) {
        break_with(MOECOMM_SHM_EREFUSED, "rank " + std::to_string(p) +
                                             " gathers a non-empty tensor but rank " + std::to_string(rank_) +
                                             " an empty one in " + op_name(op, OpKind::kAllGather));
      }
    }
  }
  finish_op(op);
}

void Group::all_to_all(const void* src, const int64_t* send_bytes, void* dst, const int64_t* recv_bytes,
                       int num_threads, double timeout_s) {
  uint64_t total_send = 0;
  for (int d = 0; d < world_; ++d) {
    if (send_bytes[d] < 0 || recv_bytes[d] < 0) {
      fail(MOECOMM_SHM_EINVAL, "send_bytes/recv_bytes: negative size for rank " + std::to_string(d));
    }
    total_send += static_cast<uint64_t>(send_bytes[d]);
  }
  const Deadline deadline(timeout_s);
  const uint32_t op = begin_op(deadline);
  Header* h = own();
  uint64_t offset = 0;
  for (int d = 0; d < world_; ++d) {
    h->offsets[d].store(offset, std::memory_order_relaxed);
    offset += static_cast<uint64_t>(send_bytes[d]);
  }
  h->offsets[world_].store(offset, std::memory_order_relaxed);
  if (total_send > 0) {
    parallel_copy(grow_region(kCollectiveLabel, total_send).data(), static_cast<const char*>(src), total_send,
                  num_threads);
  }
  publish_op(op, OpKind::kAllToAll, total_send, 0);
  arrive_and_wait(op, OpKind::kAllToAll, deadline);
  char* out = static_cast<char*>(dst);
  uint64_t out_offset = 0;
  for (int p = 0; p < world_; ++p) {
    const uint64_t want = static_cast<uint64_t>(recv_bytes[p]);
    const Header* peer = header(p);
    const uint64_t begin = peer->offsets[rank_].load(std::memory_order_relaxed);
    const uint64_t end = peer->offsets[rank_ + 1].load(std::memory_order_relaxed);
    const uint64_t total = peer->op_total.load(std::memory_order_relaxed);
    if (begin > end || end > total) {
      break_with(MOECOMM_SHM_EREFUSED, "rank " + std::to_string(p) + " published inconsistent offsets for " +
                                           op_name(op, OpKind::kAllToAll) + ": refused (corrupted header?)");
    }
    if (end - begin != want) {
      break_with(MOECOMM_SHM_EREFUSED, "rank " + std::to_string(p) + " sends " + std::to_string(end - begin) +
                                           " bytes to rank " + std::to_string(rank_) + " but rank " +
                                           std::to_string(rank_) + " expects " + std::to_string(want) +
                                           " in " + op_name(op, OpKind::kAllToAll) +
                                           " (output_splits disagree with that rank's input_splits)");
    }
    if (want > 0) {
      const char* from =
          p == rank_ ? static_cast<const char*>(src) : peer_window(p, total, op, OpKind::kAllToAll);
      parallel_copy(out + out_offset, from + begin, want, num_threads);
    }
    out_offset += want;
  }
  finish_op(op);
}

void Group::reduce_scatter(const void* src, int64_t block_elems, cpu::ScalarType type, void* dst,
                           int num_threads, double timeout_s) {
  if (block_elems < 0)
    fail(MOECOMM_SHM_EINVAL, "block_elems: expected >= 0, got " + std::to_string(block_elems));
  if (type == cpu::ScalarType::kBool) fail(MOECOMM_SHM_EINVAL, "dtype: bool cannot be summed");
  const uint64_t block_bytes = static_cast<uint64_t>(block_elems) * cpu::element_size(type);
  const uint64_t total = block_bytes * static_cast<uint64_t>(world_);
  const Deadline deadline(timeout_s);
  const uint32_t op = begin_op(deadline);
  if (total > 0) {
    parallel_copy(grow_region(kCollectiveLabel, total).data(), static_cast<const char*>(src), total,
                  num_threads);
  }
  publish_op(op, OpKind::kReduceScatter, total, static_cast<uint64_t>(type));
  arrive_and_wait(op, OpKind::kReduceScatter, deadline);
  std::vector<const char*> blocks(static_cast<size_t>(world_));
  for (int p = 0; p < world_; ++p) {
    const Header* peer = header(p);
    const uint64_t peer_total = peer->op_total.load(std::memory_order_relaxed);
    const uint64_t peer_dtype = peer->op_dtype.load(std::memory_order_relaxed);
    if (peer_total != total || peer_dtype != static_cast<uint64_t>(type)) {
      break_with(MOECOMM_SHM_EREFUSED,
                 "rank " + std::to_string(p) + " reduces " + std::to_string(peer_total) +
                     " bytes of dtype code " + std::to_string(peer_dtype) + " but rank " +
                     std::to_string(rank_) + " " + std::to_string(total) + " bytes of dtype code " +
                     std::to_string(static_cast<int>(type)) + " in " + op_name(op, OpKind::kReduceScatter));
    }
    const char* base = p == rank_ ? static_cast<const char*>(src)
                                  : (total > 0 ? peer_window(p, total, op, OpKind::kReduceScatter) : nullptr);
    blocks[static_cast<size_t>(p)] =
        base == nullptr ? nullptr : base + static_cast<uint64_t>(rank_) * block_bytes;
  }
  if (block_elems > 0) {
    char* out = static_cast<char*>(dst);
    switch (type) {
      case cpu::ScalarType::kFloat32:
        reduce_blocks<cpu::Float32>(blocks, block_elems, out, num_threads);
        break;
      case cpu::ScalarType::kFloat16:
        reduce_blocks<cpu::Float16>(blocks, block_elems, out, num_threads);
        break;
      case cpu::ScalarType::kBFloat16:
        reduce_blocks<cpu::BFloat16>(blocks, block_elems, out, num_threads);
        break;
      case cpu::ScalarType::kInt32:
        reduce_blocks<Int32Sum>(blocks, block_elems, out, num_threads);
        break;
      case cpu::ScalarType::kInt64:
        reduce_blocks<Int64Sum>(blocks, block_elems, out, num_threads);
        break;
      case cpu::ScalarType::kBool:
        break;
    }
  }
  finish_op(op);
}

}  // namespace moecomm::shm
