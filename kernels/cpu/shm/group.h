// Group: one rank's side of a shared-memory group (setup, epoch protocol, regions, collectives).
//
// Protocol for collective number c (every rank runs the same sequence; pull model: a rank writes only
// into its own window and reads from the peers'):
//   1. wait until every peer's `done` >= c - 1 (it has finished reading this rank's window and metadata
//      of collective c - 1; usually already true);
//   2. write its part into its own window (growing it if needed) and the metadata into its header;
//   3. arrive = c (release), then wait until every peer's `arrive` >= c (acquire);
//   4. map peers' new region generations, validate their metadata against the mapped sizes, read;
//   5. done = c.
// Every wait is bounded by the call's timeout and watches the awaited process; a failure names the rank
// and the collective and breaks the group (every later call fails at once). Not thread-safe: one
// thread at a time per Group (each rank of the TSan test owns its own Group).
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "layout.h"
#include "moecomm/cpu_kernels.h"
#include "segment.h"
#include "wait.h"

namespace moecomm::shm {

class Group {
 public:
  // names[r]: rank r's header segment name (random_segment_name()); nonce agreed by the group.
  Group(int rank, int world_size, uint64_t nonce, const std::vector<std::string>& names, double timeout_s);
  ~Group();
  Group(const Group&) = delete;
  Group& operator=(const Group&) = delete;

  int rank() const { return rank_; }
  int world_size() const { return world_; }
  unsigned own_segment_mode() const { return own_mode_; }
  unsigned own_segment_uid() const { return own_uid_; }

  void barrier(double timeout_s);
  void all_gather(const void* src, uint64_t nbytes, void* dst, int num_threads, double timeout_s);
  void all_to_all(const void* src, const int64_t* send_bytes, void* dst, const int64_t* recv_bytes,
                  int num_threads, double timeout_s);
  void reduce_scatter(const void* src, int64_t block_elems, cpu::ScalarType type, void* dst, int num_threads,
                      double timeout_s);

  void ensure_region(const std::string& label, uint64_t nbytes);
  // The mapping holding rank's region `label` (as of this rank's last barrier for peers), its data
  // pointer and usable bytes.
  std::shared_ptr<Mapping> region_view(int rank, const std::string& label, char** data,
                                       uint64_t* nbytes) const;

 private:
  struct OwnRegion {
    std::string label;
    int index = 0;
    uint32_t generation = 0;
    int fd = -1;  // kept open so peers can map it through /proc/<pid>/fd
    std::shared_ptr<Mapping> mapping;
    uint64_t data_bytes = 0;
    char* data() const { return mapping ? mapping->base() + kRegionDataOffset : nullptr; }
  };
  struct PeerRegion {
    std::string label;
    uint32_t generation = 0;
    std::shared_ptr<Mapping> mapping;
    uint64_t data_bytes = 0;
  };

  Header* header(int r) const { return reinterpret_cast<Header*>(headers_[static_cast<size_t>(r)]->base()); }
  Header* own() const { return header(rank_); }
  void setup(const std::vector<std::string>& names, const Deadline& deadline);
  void check_usable() const;
  [[noreturn]] void break_with(int code, const std::string& message);

  // Waits until every peer's `counter` has reached `target`; names the first missing or dead peer.
  void wait_peers(std::atomic<uint32_t> Header::*counter, uint32_t target, const Deadline& deadline,
                  const std::string& what);
  uint32_t begin_op(const Deadline& deadline);
  void publish_op(uint32_t op, OpKind kind, uint64_t total, uint64_t dtype);
  void arrive_and_wait(uint32_t op, OpKind kind, const Deadline& deadline);
  void finish_op(uint32_t op);
  std::string op_name(uint32_t op, OpKind kind) const;

  void refresh_peer_regions(const Deadline& deadline);
  void map_peer_region(int peer, int index, const Deadline& deadline);
  void forget_dead_peer(int peer);
  // Marks this rank as gone (closed or failed) and wakes every peer sleeping on its counters.
  void give_up(uint32_t how);
  // At close: waits (bounded by the open timeout) until every peer still in the group (alive, not closed,
  // not failed) has mapped the latest generation of each of this rank's regions, so a slower peer
  // finishing its last collective can still map it; the names are unlinked afterwards either way.
  void settle_pending_regions() const;

  OwnRegion& grow_region(const std::string& label, uint64_t nbytes);
  // Rank `peer`'s collective window, checked to hold at least `need` bytes.
  const char* peer_window(int peer, uint64_t need, uint32_t op, OpKind kind);

  int rank_;
  int world_;
  uint64_t nonce_;
  double timeout_s_;
  unsigned own_mode_ = 0;
  unsigned own_uid_ = 0;
  std::vector<std::string> header_names_;
  std::vector<std::shared_ptr<Mapping>> headers_;
  std::vector<PeerProcess> peers_;
  std::vector<OwnRegion> own_regions_;
  std::vector<std::vector<PeerRegion>> peer_regions_;  // [peer][region index in the peer's table]
  uint32_t seq_ = 0;
  std::string broken_;
};

// Label of the window the collectives use (user labels may not start with "__").
constexpr char kCollectiveLabel[] = "__collective__";

}  // namespace moecomm::shm
