// Bounded waits on epoch counters in shared memory: spin briefly, then sleep on a futex (so ranks that
// outnumber cores do not starve the rank they wait for), re-checking the deadline and whether the
// awaited process is still alive.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>

namespace moecomm::shm {

// A point in time `timeout_s` from construction (steady clock).
class Deadline {
 public:
  explicit Deadline(double timeout_s);
  bool passed() const { return std::chrono::steady_clock::now() >= end_; }
  // Nanoseconds left (0 once passed).
  int64_t remaining_ns() const;
  double timeout_s() const { return timeout_s_; }

 private:
  double timeout_s_;
  std::chrono::steady_clock::time_point end_;
};

// A peer process watched through a pidfd (falls back to kill(pid, 0) where pidfds are missing). The
// pidfd is opened while the peer is known alive, so a recycled pid can never pass for it.
class PeerProcess {
 public:
  PeerProcess() = default;
  explicit PeerProcess(int pid);
  ~PeerProcess();
  PeerProcess(PeerProcess&& other) noexcept;
  PeerProcess& operator=(PeerProcess&& other) noexcept;
  PeerProcess(const PeerProcess&) = delete;
  PeerProcess& operator=(const PeerProcess&) = delete;

  int pid() const { return pid_; }
  // False once the process has exited (a zombie counts as exited).
  bool alive() const;

 private:
  int pid_ = 0;
  int pidfd_ = -1;
};

// Counters are 32-bit epochs that may wrap: `value` has reached `target` when (int32)(value - target) >= 0.
inline bool reached(uint32_t value, uint32_t target) {
  return static_cast<int32_t>(value - target) >= 0;
}

enum class WaitResult { kReached, kTimedOut, kPeerDied, kPeerGaveUp };

// Waits until reached(word, target) (acquire), the deadline passes, `peer` is seen dead, or the peer's
// `gave_up` word turns non-zero (it closed its group or failed a step).
WaitResult wait_for_epoch(const std::atomic<uint32_t>& word, uint32_t target, const Deadline& deadline,
                          const PeerProcess& peer, const std::atomic<uint32_t>& gave_up);

// Wakes every process sleeping on `word` (after a store another process waits for).
void wake_all(std::atomic<uint32_t>& word);

// Stores `value` (release) and wakes every process sleeping on the word.
void publish_epoch(std::atomic<uint32_t>& word, uint32_t value);

}  // namespace moecomm::shm
