// What lives in the shared-memory segments of the shm transport. No torch, no Python.
//
// Every rank owns one *header segment* (fixed size: identity, epoch counters, the metadata of the
// collective it is in, a table of named regions) and one *region segment* per named data region and
// generation. Header segments are named (the names are exchanged at setup) and unlinked once every peer
// has mapped them. Region segments are unlinked right after creation: the owner keeps the descriptor
// open and peers map it through /proc/<owner pid>/fd/<fd>, so a region never has a name in /dev/shm
// for longer than its creation takes (and a peer unlinks that pending name if the owner dies then). A rank
// only ever writes into its own header; peers write nothing but the "mapped" count of a region generation
// (see RegionEntry::published). Fields read by other processes while their owner may write them are atomics:
// release on write, acquire on read.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>

namespace moecomm::shm {

constexpr uint64_t kHeaderMagic = 0x31484d4f4345494dull;  // "MIECOMH1" little-endian
constexpr uint64_t kRegionMagic = 0x31524d4f4345494dull;  // "MIECOMR1"
constexpr uint32_t kVersion = 1;
constexpr int kMaxWorld = 1024;
constexpr int kMaxRegions = 8;
constexpr size_t kLabelWords = 4;           // region labels: up to 31 bytes + NUL
constexpr size_t kSegmentNameWords = 8;     // segment names: up to 63 bytes + NUL
constexpr size_t kRegionDataOffset = 4096;  // data of a region segment starts one page in
constexpr uint64_t kMinRegionBytes = 64 * 1024;

// Kinds of collective, published with the metadata so that ranks in different collectives are caught.
enum class OpKind : uint64_t { kNone = 0, kBarrier = 1, kAllGather = 2, kAllToAll = 3, kReduceScatter = 4 };

struct RegionEntry {
  std::atomic<uint64_t> label[kLabelWords];          // written once, before region_count covers it
  std::atomic<uint64_t> published;                   // generation << 32 | peers that mapped it
  std::atomic<uint64_t> data_bytes;                  // usable bytes of the current generation
  std::atomic<int64_t> fd;                           // owner's descriptor of the current generation
  std::atomic<uint64_t> pending[kSegmentNameWords];  // name being created (so a peer can unlink it
                                                     // if the owner dies mid-growth)
};

constexpr uint32_t kGaveUpNone = 0;
constexpr uint32_t kGaveUpClosed = 1;
constexpr uint32_t kGaveUpFailed = 2;

struct alignas(64) Header {
  std::atomic<uint64_t> magic;  // stored last at creation (release): a zero magic means "not ready"
  uint32_t version;
  uint32_t header_bytes;
  uint64_t nonce;
  int32_t rank;
  int32_t world;
  int32_t pid;
  int32_t reserved;
  // Epoch counters (futex words), each on its own cache line. For collective c a rank stores
  // arrive = c once its part is written and done = c once it has read what it needs from the peers.
  alignas(64) std::atomic<uint32_t> attached;  // 1 once this rank has mapped every peer's header
  alignas(64) std::atomic<uint32_t> arrive;
  alignas(64) std::atomic<uint32_t> done;
  alignas(64) std::atomic<uint32_t> region_count;
  // kGaveUpNone, kGaveUpClosed (closed its group) or kGaveUpFailed (a step failed on it): peers waiting
  // for it stop at once instead of running into their timeout.
  std::atomic<uint32_t> gave_up;
  RegionEntry regions[kMaxRegions];
  // The collective this rank is in (valid once arrive == op_seq): kind, bytes written into its
  // collective window, and kMaxWorld + 1 byte offsets (all-to-all: the part for rank d is
  // [offsets[d], offsets[d + 1])).
  alignas(64) std::atomic<uint64_t> op_seq;
  std::atomic<uint64_t> op_kind;
  std::atomic<uint64_t> op_total;
  std::atomic<uint64_t> op_dtype;
  std::atomic<uint64_t> offsets[kMaxWorld + 1];
};

struct alignas(64) RegionHeader {
  std::atomic<uint64_t> magic;
  uint64_t nonce;
  int32_t owner;
  int32_t index;
  uint64_t generation;
  uint64_t data_bytes;
};

static_assert(sizeof(RegionHeader) <= kRegionDataOffset, "region header must fit before the data");
static_assert(std::atomic<uint32_t>::is_always_lock_free && std::atomic<uint64_t>::is_always_lock_free,
              "shared-memory counters must be lock-free to work across processes");

}  // namespace moecomm::shm
