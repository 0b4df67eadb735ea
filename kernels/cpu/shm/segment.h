// POSIX shared-memory segments of the shm transport: random names, exclusive creation with mode
// 0600, verified opening, mappings that live as long as anyone holds them.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

namespace moecomm::shm {

// One mmap of a whole segment; unmapped when the last holder lets go (views handed to callers keep it).
class Mapping {
 public:
  Mapping(void* base, size_t length) : base_(base), length_(length) {}
  ~Mapping();
  Mapping(const Mapping&) = delete;
  Mapping& operator=(const Mapping&) = delete;
  char* base() const { return static_cast<char*>(base_); }
  size_t length() const { return length_; }

 private:
  void* base_;
  size_t length_;
};

// "/moecomm-<32 hex digits>" from 128 bits of getrandom().
std::string random_segment_name();
uint64_t random_u64();

// True when `name` has the form random_segment_name() produces.
bool is_segment_name(const std::string& name);

struct Created {
  std::shared_ptr<Mapping> mapping;
  int fd = -1;        // kept open only when asked (see create_segment)
  unsigned mode = 0;  // st_mode & 07777 of the new segment, as fstat saw it
  unsigned uid = 0;
};

// Creates `name` exclusively (O_CREAT|O_EXCL, mode 0600), sizes it to `bytes` and maps it. On any
// failure the name is unlinked (when this call created it) and ShmError is thrown. With keep_fd the
// descriptor stays open in Created::fd (the caller closes it).
Created create_segment(const std::string& name, size_t bytes, bool keep_fd = false);

// Maps an existing segment after checking it belongs to this user and is private (mode 0600).
// Returns nullptr while the name does not exist yet or holds fewer than `min_bytes` (its creator is
// still sizing it); throws ShmError when it exists but is not acceptable.
std::shared_ptr<Mapping> open_segment(const std::string& name, size_t min_bytes);

// Maps descriptor `fd` of process `pid` through /proc/<pid>/fd/<fd> (same checks as open_segment).
// Returns nullptr when it cannot be opened or mapped (the process exited, or the descriptor now refers
// to something else); throws ShmError when it is a file of another user or not private.
std::shared_ptr<Mapping> open_process_fd(int pid, int fd, size_t min_bytes);

// shm_unlink that ignores a name already gone.
void unlink_segment(const std::string& name);

// Strings stored as atomic 64-bit words in shared memory (so a concurrent reader sees no data race).
void store_words(std::atomic<uint64_t>* words, size_t count, const std::string& text);
std::string load_words(const std::atomic<uint64_t>* words, size_t count);

}  // namespace moecomm::shm
