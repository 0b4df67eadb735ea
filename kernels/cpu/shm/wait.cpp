#include "wait.h"

#include <linux/futex.h>
#include <poll.h>
#include <signal.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <thread>

namespace moecomm::shm {

namespace {

constexpr int kSpinRounds = 200;             // ~ a few microseconds of polling before sleeping
constexpr int64_t kFirstSleepNs = 50'000;    // futex sleeps grow from 50 us ...
constexpr int64_t kMaxSleepNs = 10'000'000;  // ... to 10 ms, so a dead peer is seen within ~10 ms

inline void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#elif defined(__aarch64__)
  asm volatile("yield");
#endif
}

uint32_t* futex_word(const std::atomic<uint32_t>& word) {
  return reinterpret_cast<uint32_t*>(const_cast<std::atomic<uint32_t>*>(&word));
}

// Sleeps while *word == expected, at most timeout_ns (shared futex: the word lives in shared memory).
void futex_wait(const std::atomic<uint32_t>& word, uint32_t expected, int64_t timeout_ns) {
  struct timespec ts;
  ts.tv_sec = static_cast<time_t>(timeout_ns / 1'000'000'000);
  ts.tv_nsec = static_cast<long>(timeout_ns % 1'000'000'000);
  syscall(SYS_futex, futex_word(word), FUTEX_WAIT, expected, &ts, nullptr, 0);
}

}  // namespace

Deadline::Deadline(double timeout_s) : timeout_s_(timeout_s) {
  const double clamped = std::min(std::max(timeout_s, 0.0), 1e7);
  end_ = std::chrono::steady_clock::now() + std::chrono::duration_cast<std::chrono::steady_clock::duration>(
                                                std::chrono::duration<double>(clamped));
}

int64_t Deadline::remaining_ns() const {
  const auto left = end_ - std::chrono::steady_clock::now();
  return std::max<int64_t>(0, std::chrono::duration_cast<std::chrono::nanoseconds>(left).count());
}

PeerProcess::PeerProcess(int pid) : pid_(pid) {
#if defined(SYS_pidfd_open)
  if (pid != getpid()) pidfd_ = static_cast<int>(syscall(SYS_pidfd_open, pid, 0));
#endif
}

PeerProcess::~PeerProcess() {
  if (pidfd_ >= 0) close(pidfd_);
}

PeerProcess::PeerProcess(PeerProcess&& other) noexcept : pid_(other.pid_), pidfd_(other.pidfd_) {
  other.pidfd_ = -1;
}

PeerProcess& PeerProcess::operator=(PeerProcess&& other) noexcept {
  if (this != &other) {
    if (pidfd_ >= 0) close(pidfd_);
    pid_ = other.pid_;
    pidfd_ = other.pidfd_;
    other.pidfd_ = -1;
  }
  return *this;
}

bool PeerProcess::alive() const {
  if (pid_ <= 0 || pid_ == getpid()) return true;
  if (pidfd_ >= 0) {
    struct pollfd p = {pidfd_, POLLIN, 0};
    const int ready = poll(&p, 1, 0);
    return !(ready > 0 && (p.revents & (POLLIN | POLLHUP)));
  }
  return !(kill(pid_, 0) != 0 && errno == ESRCH);
}

WaitResult wait_for_epoch(const std::atomic<uint32_t>& word, uint32_t target, const Deadline& deadline,
                          const PeerProcess& peer, const std::atomic<uint32_t>& gave_up) {
  for (int i = 0; i < kSpinRounds; ++i) {
    if (reached(word.load(std::memory_order_acquire), target)) return WaitResult::kReached;
    cpu_relax();
  }
  std::this_thread::yield();
  int64_t sleep_ns = kFirstSleepNs;
  while (true) {
    const uint32_t value = word.load(std::memory_order_acquire);
    if (reached(value, target)) return WaitResult::kReached;
    if (gave_up.load(std::memory_order_acquire) != 0) {
      return reached(word.load(std::memory_order_acquire), target) ? WaitResult::kReached
                                                                   : WaitResult::kPeerGaveUp;
    }
    if (!peer.alive()) {
      // The peer may have arrived just before it exited: its store is what counts.
      return reached(word.load(std::memory_order_acquire), target) ? WaitResult::kReached
                                                                   : WaitResult::kPeerDied;
    }
    const int64_t left = deadline.remaining_ns();
    if (left <= 0) return WaitResult::kTimedOut;
    futex_wait(word, value, std::min({sleep_ns, left, kMaxSleepNs}));
    sleep_ns = std::min(sleep_ns * 2, kMaxSleepNs);
  }
}

void wake_all(std::atomic<uint32_t>& word) {
  syscall(SYS_futex, futex_word(word), FUTEX_WAKE, INT32_MAX, nullptr, nullptr, 0);
}

void publish_epoch(std::atomic<uint32_t>& word, uint32_t value) {
  word.store(value, std::memory_order_release);
  wake_all(word);
}

}  // namespace moecomm::shm
