#include "group.h"

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <set>
#include <sstream>
#include <thread>

#include "error.h"

namespace moecomm::shm {

namespace {

constexpr uint64_t kMaxRegionBytes = uint64_t{1} << 46;

size_t header_segment_bytes() {
  const size_t page = 4096;
  return (sizeof(Header) + page - 1) / page * page;
}

std::string seconds(double s) {
  std::ostringstream out;
  out << s << " s";
  return out.str();
}

const char* kind_name(uint64_t kind) {
  switch (static_cast<OpKind>(kind)) {
    case OpKind::kBarrier:
      return "barrier";
    case OpKind::kAllGather:
      return "all_gather";
    case OpKind::kAllToAll:
      return "all_to_all";
    case OpKind::kReduceScatter:
      return "reduce_scatter";
    case OpKind::kNone:
      break;
  }
  return "no collective";
}

// Sleeps a little while polling for something another process does (setup, region mapping).
void poll_pause(int attempt) {
  std::this_thread::sleep_for(std::chrono::microseconds(std::min(100 << std::min(attempt, 6), 5000)));
}

bool valid_label(const std::string& label) {
  if (label.empty() || label.size() >= kLabelWords * sizeof(uint64_t)) return false;
  return std::all_of(label.begin(), label.end(), [](char c) { return c > ' ' && c < 127; });
}

}  // namespace

Group::Group(int rank, int world_size, uint64_t nonce, const std::vector<std::string>& names,
             double timeout_s)
    : rank_(rank), world_(world_size), nonce_(nonce), timeout_s_(timeout_s) {
  if (world_size < 1 || world_size > kMaxWorld) {
    fail(MOECOMM_SHM_EINVAL,
         "world_size: expected 1.." + std::to_string(kMaxWorld) + ", got " + std::to_string(world_size));
  }
  if (rank < 0 || rank >= world_size) {
    fail(MOECOMM_SHM_EINVAL,
         "rank: expected 0.." + std::to_string(world_size - 1) + ", got " + std::to_string(rank));
  }
  if (names.size() != static_cast<size_t>(world_size)) {
    fail(MOECOMM_SHM_EINVAL, "names: expected " + std::to_string(world_size) + " segment names, got " +
                                 std::to_string(names.size()));
  }
  for (size_t r = 0; r < names.size(); ++r) {
    if (!is_segment_name(names[r])) {
      fail(MOECOMM_SHM_EINVAL,
           "names[" + std::to_string(r) + "]: expected '/moecomm-' + 32 hex digits, got '" + names[r] + "'");
    }
  }
  if (std::set<std::string>(names.begin(), names.end()).size() != names.size()) {
    fail(MOECOMM_SHM_EINVAL, "names: segment names must be distinct");
  }
  if (!(timeout_s > 0)) fail(MOECOMM_SHM_EINVAL, "timeout_s: expected > 0, got " + std::to_string(timeout_s));
  header_names_ = names;
  headers_.resize(names.size());
  peers_.resize(names.size());
  peer_regions_.resize(names.size());
  const Deadline deadline(timeout_s);
  try {
    setup(names, deadline);
  } catch (...) {
    // The group never came up: nobody will use any of its names, so none may stay in /dev/shm.
    for (const auto& name : names) unlink_segment(name);
    throw;
  }
}

void Group::setup(const std::vector<std::string>& names, const Deadline& deadline) {
  Created created = create_segment(names[static_cast<size_t>(rank_)], header_segment_bytes());
  own_mode_ = created.mode;
  own_uid_ = created.uid;
  headers_[static_cast<size_t>(rank_)] = created.mapping;
  Header* h = own();
  h->version = kVersion;
  h->header_bytes = static_cast<uint32_t>(sizeof(Header));
  h->nonce = nonce_;
  h->rank = rank_;
  h->world = world_;
  h->pid = static_cast<int32_t>(getpid());
  h->magic.store(kHeaderMagic, std::memory_order_release);

  for (int p = 0; p < world_; ++p) {
    if (p == rank_) continue;
    const std::string& name = names[static_cast<size_t>(p)];
    for (int attempt = 0;; ++attempt) {
      std::shared_ptr<Mapping> mapping = open_segment(name, sizeof(Header));
      if (mapping) {
        const Header* peer = reinterpret_cast<const Header*>(mapping->base());
        const uint64_t magic = peer->magic.load(std::memory_order_acquire);
        if (magic != 0) {
          const std::string who = "segment " + name + " (given for rank " + std::to_string(p) + ")";
          if (magic != kHeaderMagic || peer->version != kVersion) {
            fail(MOECOMM_SHM_EREFUSED,
                 who + " is not a moecomm shm header of version " + std::to_string(kVersion));
          }
          if (peer->nonce != nonce_) {
            fail(MOECOMM_SHM_EREFUSED, who + " belongs to another group (nonce mismatch): refused");
          }
          if (peer->rank != p || peer->world != world_) {
            fail(MOECOMM_SHM_EREFUSED, who + " claims rank " + std::to_string(peer->rank) + " of " +
                                           std::to_string(peer->world) + ": refused");
          }
          headers_[static_cast<size_t>(p)] = mapping;
          peers_[static_cast<size_t>(p)] = PeerProcess(peer->pid);
          break;
        }
      }
      if (deadline.passed()) {
        fail(MOECOMM_SHM_ETIMEOUT, "rank " + std::to_string(p) +
                                       " did not create its shared-memory segment within " +
                                       seconds(deadline.timeout_s()) + " (setup)");
      }
      poll_pause(attempt);
    }
  }
  publish_epoch(h->attached, 1);
  wait_peers(&Header::attached, 1, deadline, "setup (mapping every peer's segment)");
  // Every peer has mapped this rank's header: its name is no longer needed by anybody.
  unlink_segment(names[static_cast<size_t>(rank_)]);
}

Group::~Group() {
  if (!headers_.empty() && headers_[static_cast<size_t>(rank_)]) {
    // First say so (peers waiting for this rank stop, peers closing too stop waiting for it), then give
    // peers still in their last collective the chance to map this rank's newest regions.
    give_up(kGaveUpClosed);
    if (broken_.empty()) settle_pending_regions();
  }
  for (const OwnRegion& region : own_regions_) {
    if (region.fd >= 0) close(region.fd);
  }
  if (!headers_.empty() && headers_[static_cast<size_t>(rank_)]) {
    for (int p = 0; p < world_; ++p) {
      if (p != rank_ && headers_[static_cast<size_t>(p)] && !peers_[static_cast<size_t>(p)].alive()) {
        forget_dead_peer(p);
      }
    }
  }
}

void Group::settle_pending_regions() const {
  const Deadline deadline(timeout_s_);
  for (int attempt = 0;; ++attempt) {
    bool pending = false;
    for (const OwnRegion& region : own_regions_) {
      const uint64_t published = own()->regions[region.index].published.load(std::memory_order_acquire);
      pending = pending || static_cast<int>(published & 0xffffffffu) < world_ - 1;
    }
    if (!pending || deadline.passed()) return;
    bool anyone_left = false;
    for (int p = 0; p < world_; ++p) {
      if (p == rank_) continue;
      anyone_left = anyone_left || (header(p)->gave_up.load(std::memory_order_acquire) == kGaveUpNone &&
                                    peers_[static_cast<size_t>(p)].alive());
    }
    if (!anyone_left) return;
    poll_pause(attempt);
  }
}

void Group::check_usable() const {
  if (!broken_.empty()) {
    fail(MOECOMM_SHM_EREFUSED,
         "the shared-memory group is broken since an earlier failure (" + broken_ + ")");
  }
}

void Group::break_with(int code, const std::string& message) {
  if (broken_.empty()) broken_ = message;
  give_up(kGaveUpFailed);
  fail(code, message);
}

void Group::give_up(uint32_t how) {
  Header* h = own();
  if (h->gave_up.load(std::memory_order_relaxed) != kGaveUpNone) return;
  h->gave_up.store(how, std::memory_order_release);
  wake_all(h->attached);
  wake_all(h->arrive);
  wake_all(h->done);
}

void Group::forget_dead_peer(int peer) {
  unlink_segment(header_names_[static_cast<size_t>(peer)]);
  const Header* h = header(peer);
  // Every slot, counted or not: a peer killed mid-growth may have a pending segment in a new slot.
  for (int i = 0; i < kMaxRegions; ++i) unlink_segment(load_words(h->regions[i].pending, kSegmentNameWords));
}

void Group::wait_peers(std::atomic<uint32_t> Header::*counter, uint32_t target, const Deadline& deadline,
                       const std::string& what) {
  for (int step = 1; step < world_; ++step) {
    const int p = (rank_ + step) % world_;
    const Header* peer = header(p);
    const WaitResult result =
        wait_for_epoch(peer->*counter, target, deadline, peers_[static_cast<size_t>(p)], peer->gave_up);
    if (result == WaitResult::kReached) continue;
    const std::string who = "rank " + std::to_string(p) + " (pid " + std::to_string(peer->pid) + ")";
    if (result == WaitResult::kPeerGaveUp) {
      const bool failed = peer->gave_up.load(std::memory_order_acquire) == kGaveUpFailed;
      break_with(MOECOMM_SHM_EREFUSED,
                 who + (failed ? " failed a step" : " closed its group") + " and will not arrive at " + what);
    }
    if (result == WaitResult::kPeerDied) {
      forget_dead_peer(p);
      break_with(MOECOMM_SHM_EPEERDEAD, who + " exited without arriving at " + what);
    }
    break_with(MOECOMM_SHM_ETIMEOUT,
               who + " did not arrive at " + what + " within " + seconds(deadline.timeout_s()));
  }
}

std::string Group::op_name(uint32_t op, OpKind kind) const {
  return std::string(kind_name(static_cast<uint64_t>(kind))) + " (collective #" + std::to_string(op) + ")";
}

uint32_t Group::begin_op(const Deadline& deadline) {
  check_usable();
  const uint32_t op = seq_ + 1;
  if (op > 1) wait_peers(&Header::done, op - 1, deadline, "the end of collective #" + std::to_string(op - 1));
  seq_ = op;
  return op;
}

void Group::publish_op(uint32_t op, OpKind kind, uint64_t total, uint64_t dtype) {
  Header* h = own();
  h->op_seq.store(op, std::memory_order_relaxed);
  h->op_kind.store(static_cast<uint64_t>(kind), std::memory_order_relaxed);
  h->op_total.store(total, std::memory_order_relaxed);
  h->op_dtype.store(dtype, std::memory_order_relaxed);
}

void Group::arrive_and_wait(uint32_t op, OpKind kind, const Deadline& deadline) {
  publish_epoch(own()->arrive, op);  // release: the window and the metadata are visible to whoever sees op
  wait_peers(&Header::arrive, op, deadline, op_name(op, kind));
  for (int p = 0; p < world_; ++p) {
    const Header* h = header(p);
    if (h->gave_up.load(std::memory_order_acquire) == kGaveUpFailed) {
      // It arrived, then gave up waiting for somebody else: this collective did not complete for it.
      break_with(MOECOMM_SHM_EREFUSED, "rank " + std::to_string(p) + " failed " + op_name(op, kind) +
                                           " (a peer was late or dead for it); not using its data");
    }
    const uint64_t peer_op = h->op_seq.load(std::memory_order_relaxed);
    const uint64_t peer_kind = h->op_kind.load(std::memory_order_relaxed);
    if (peer_op != op || peer_kind != static_cast<uint64_t>(kind)) {
      break_with(MOECOMM_SHM_EREFUSED, "rank " + std::to_string(p) + " is in " + kind_name(peer_kind) +
                                           " (collective #" + std::to_string(peer_op) + ") while rank " +
                                           std::to_string(rank_) + " is in " + op_name(op, kind));
    }
  }
  refresh_peer_regions(deadline);
}

void Group::finish_op(uint32_t op) {
  publish_epoch(own()->done, op);
}

void Group::barrier(double timeout_s) {
  const Deadline deadline(timeout_s);
  const uint32_t op = begin_op(deadline);
  publish_op(op, OpKind::kBarrier, 0, 0);
  arrive_and_wait(op, OpKind::kBarrier, deadline);
  finish_op(op);
}

void Group::refresh_peer_regions(const Deadline& deadline) {
  for (int p = 0; p < world_; ++p) {
    if (p == rank_) continue;
    const Header* h = header(p);
    const uint32_t count = std::min<uint32_t>(h->region_count.load(std::memory_order_acquire), kMaxRegions);
    auto& mapped = peer_regions_[static_cast<size_t>(p)];
    if (mapped.size() < count) mapped.resize(count);
    for (uint32_t i = 0; i < count; ++i) {
      const uint32_t generation =
          static_cast<uint32_t>(h->regions[i].published.load(std::memory_order_acquire) >> 32);
      if (generation != 0 && generation != mapped[i].generation)
        map_peer_region(p, static_cast<int>(i), deadline);
    }
  }
}

void Group::map_peer_region(int peer, int index, const Deadline& deadline) {
  RegionEntry& entry = header(peer)->regions[index];
  const int pid = header(peer)->pid;
  const std::string who = "rank " + std::to_string(peer) + "'s region #" + std::to_string(index);
  for (int attempt = 0;; ++attempt) {
    uint64_t published = entry.published.load(std::memory_order_acquire);
    const uint32_t generation = static_cast<uint32_t>(published >> 32);
    const std::string label = load_words(entry.label, kLabelWords);
    const int64_t fd = entry.fd.load(std::memory_order_relaxed);
    std::shared_ptr<Mapping> mapping = fd >= 0 && fd < (int64_t{1} << 30)
                                           ? open_process_fd(pid, static_cast<int>(fd), kRegionDataOffset)
                                           : nullptr;
    bool current = false;
    uint64_t data_bytes = 0;
    if (mapping) {
      const RegionHeader* rh = reinterpret_cast<const RegionHeader*>(mapping->base());
      data_bytes = rh->data_bytes;
      const bool verified = rh->magic.load(std::memory_order_acquire) == kRegionMagic &&
                            rh->nonce == nonce_ && rh->owner == peer && rh->index == index &&
                            data_bytes <= mapping->length() - kRegionDataOffset;
      const bool moved_on =
          static_cast<uint32_t>(entry.published.load(std::memory_order_acquire) >> 32) != generation;
      if (!verified && !moved_on) {
        break_with(MOECOMM_SHM_EREFUSED,
                   who + " (descriptor " + std::to_string(fd) + ") failed verification: refused");
      }
      current = verified && rh->generation == generation;
    }
    if (current) {
      // Count this mapping (the owner waits for the count at close, so slow peers can still map).
      while (static_cast<uint32_t>(published >> 32) == generation) {
        if (entry.published.compare_exchange_weak(published, published + 1, std::memory_order_acq_rel)) {
          PeerRegion& slot = peer_regions_[static_cast<size_t>(peer)][static_cast<size_t>(index)];
          slot = PeerRegion{label, generation, std::move(mapping), data_bytes};
          return;
        }
      }
    }
    // Superseded while we looked, or not mappable: retry within the deadline.
    if (!peers_[static_cast<size_t>(peer)].alive()) {
      forget_dead_peer(peer);
      break_with(MOECOMM_SHM_EPEERDEAD, "rank " + std::to_string(peer) + " (pid " + std::to_string(pid) +
                                            ") exited while its region '" + label + "' was being mapped");
    }
    if (deadline.passed()) {
      break_with(MOECOMM_SHM_ETIMEOUT, who + " ('" + label + "', generation " + std::to_string(generation) +
                                           ") could not be mapped within " + seconds(deadline.timeout_s()));
    }
    poll_pause(attempt);
  }
}

Group::OwnRegion& Group::grow_region(const std::string& label, uint64_t nbytes) {
  auto found = std::find_if(own_regions_.begin(), own_regions_.end(),
                            [&](const OwnRegion& r) { return r.label == label; });
  Header* h = own();
  if (found == own_regions_.end()) {
    if (own_regions_.size() >= static_cast<size_t>(kMaxRegions)) {
      fail(MOECOMM_SHM_EINVAL, "region: at most " + std::to_string(kMaxRegions - 1) +
                                   " named regions per rank, cannot add '" + label + "'");
    }
    OwnRegion region;
    region.label = label;
    region.index = static_cast<int>(own_regions_.size());
    store_words(h->regions[region.index].label, kLabelWords, label);
    own_regions_.push_back(region);
    found = own_regions_.end() - 1;
  }
  OwnRegion& region = *found;
  if (region.mapping && region.data_bytes >= nbytes) return region;
  if (nbytes > kMaxRegionBytes) {
    fail(MOECOMM_SHM_EINVAL, "nbytes: " + std::to_string(nbytes) + " is more than a region may hold (2^46)");
  }
  uint64_t grown = std::max<uint64_t>({nbytes, region.data_bytes * 2, kMinRegionBytes});
  grown = (grown + 4095) / 4096 * 4096;
  RegionEntry& entry = h->regions[region.index];
  const std::string name = random_segment_name();
  store_words(entry.pending, kSegmentNameWords, name);  // a peer that sees us die unlinks it
  Created created = create_segment(name, kRegionDataOffset + grown, /*keep_fd=*/true);
  unlink_segment(name);  // peers map it through /proc/<pid>/fd: no name needs to outlive this call
  store_words(entry.pending, kSegmentNameWords, "");
  const uint32_t generation = region.generation + 1;
  RegionHeader* rh = reinterpret_cast<RegionHeader*>(created.mapping->base());
  rh->nonce = nonce_;
  rh->owner = rank_;
  rh->index = region.index;
  rh->generation = generation;
  rh->data_bytes = grown;
  rh->magic.store(kRegionMagic, std::memory_order_release);
  if (region.mapping && region.data_bytes > 0) {
    std::memcpy(created.mapping->base() + kRegionDataOffset, region.data(), region.data_bytes);
  }
  entry.fd.store(created.fd, std::memory_order_relaxed);
  entry.data_bytes.store(grown, std::memory_order_relaxed);
  entry.published.store(static_cast<uint64_t>(generation) << 32, std::memory_order_release);
  if (h->region_count.load(std::memory_order_relaxed) <= static_cast<uint32_t>(region.index)) {
    h->region_count.store(static_cast<uint32_t>(region.index) + 1, std::memory_order_release);
  }
  // The previous generation is superseded: peers that did not map it yet will map the new one.
  if (region.fd >= 0) close(region.fd);
  region.generation = generation;
  region.fd = created.fd;
  region.mapping = std::move(created.mapping);
  region.data_bytes = grown;
  return region;
}

void Group::ensure_region(const std::string& label, uint64_t nbytes) {
  check_usable();
  if (!valid_label(label) || label.rfind("__", 0) == 0) {
    fail(MOECOMM_SHM_EINVAL,
         "region: expected 1-31 printable characters not starting with '__', got '" + label + "'");
  }
  grow_region(label, nbytes);
}

std::shared_ptr<Mapping> Group::region_view(int rank, const std::string& label, char** data,
                                            uint64_t* nbytes) const {
  check_usable();
  if (rank < 0 || rank >= world_) {
    fail(MOECOMM_SHM_EINVAL,
         "rank: expected 0.." + std::to_string(world_ - 1) + ", got " + std::to_string(rank));
  }
  if (rank == rank_) {
    for (const OwnRegion& region : own_regions_) {
      if (region.label == label && region.mapping) {
        *data = region.data();
        *nbytes = region.data_bytes;
        return region.mapping;
      }
    }
  } else {
    for (const PeerRegion& region : peer_regions_[static_cast<size_t>(rank)]) {
      if (region.label == label && region.mapping) {
        *data = region.mapping->base() + kRegionDataOffset;
        *nbytes = region.data_bytes;
        return region.mapping;
      }
    }
  }
  fail(MOECOMM_SHM_EINVAL, "region: rank " + std::to_string(rank) + " has no region '" + label +
                               "' (as of this rank's last sync; peers' new regions appear after sync)");
}

const char* Group::peer_window(int peer, uint64_t need, uint32_t op, OpKind kind) {
  for (const PeerRegion& region : peer_regions_[static_cast<size_t>(peer)]) {
    if (region.label == kCollectiveLabel && region.mapping) {
      if (region.data_bytes < need || region.mapping->length() < kRegionDataOffset + need) break;
      return region.mapping->base() + kRegionDataOffset;
    }
  }
  break_with(MOECOMM_SHM_EREFUSED, "rank " + std::to_string(peer) + " published " + std::to_string(need) +
                                       " bytes for " + op_name(op, kind) +
                                       " but its mapped window holds fewer: refused (corrupted header?)");
}

}  // namespace moecomm::shm
