#include "segment.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "error.h"

namespace moecomm::shm {

namespace {
constexpr char kPrefix[] = "/moecomm-";
constexpr size_t kPrefixLength = sizeof(kPrefix) - 1;
constexpr size_t kHexDigits = 32;

void fill_random(void* out, size_t bytes) {
  auto* p = static_cast<unsigned char*>(out);
  while (bytes > 0) {
    const ssize_t got = getrandom(p, bytes, 0);
    if (got < 0) {
      if (errno == EINTR) continue;
      fail_errno("getrandom");
    }
    p += got;
    bytes -= static_cast<size_t>(got);
  }
}

// Closes a file descriptor when it goes out of scope.
struct FdCloser {
  int fd;
  ~FdCloser() {
    if (fd >= 0) close(fd);
  }
};
}  // namespace

void fail_errno(const std::string& what) {
  fail(MOECOMM_SHM_ESYS, what + ": " + std::strerror(errno));
}

Mapping::~Mapping() {
  if (base_ != nullptr) munmap(base_, length_);
}

std::string random_segment_name() {
  unsigned char bytes[kHexDigits / 2];
  fill_random(bytes, sizeof bytes);
  static const char digits[] = "0123456789abcdef";
  std::string name(kPrefix);
  for (unsigned char b : bytes) {
    name += digits[b >> 4];
    name += digits[b & 15];
  }
  return name;
}

uint64_t random_u64() {
  uint64_t value = 0;
  fill_random(&value, sizeof value);
  return value;
}

bool is_segment_name(const std::string& name) {
  if (name.size() != kPrefixLength + kHexDigits || name.compare(0, kPrefixLength, kPrefix) != 0) return false;
  for (size_t i = kPrefixLength; i < name.size(); ++i) {
    const char c = name[i];
    if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) return false;
  }
  return true;
}

Created create_segment(const std::string& name, size_t bytes, bool keep_fd) {
  const int fd = shm_open(name.c_str(), O_CREAT | O_EXCL | O_RDWR | O_CLOEXEC, 0600);
  if (fd < 0) {
    if (errno == EEXIST) {
      fail(MOECOMM_SHM_EREFUSED,
           "shared-memory segment " + name +
               " already exists: refusing to use a segment this process did not create");
    }
    fail_errno("shm_open(" + name + ", O_CREAT|O_EXCL)");
  }
  FdCloser closer{fd};
  try {
    if (fchmod(fd, 0600) != 0) fail_errno("fchmod(" + name + ")");  // umask can only narrow; be exact
    if (ftruncate(fd, static_cast<off_t>(bytes)) != 0) fail_errno("ftruncate(" + name + ")");
    struct stat st {};
    if (fstat(fd, &st) != 0) fail_errno("fstat(" + name + ")");
    void* base = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (base == MAP_FAILED) fail_errno("mmap(" + name + ")");
    Created created;
    created.mapping = std::make_shared<Mapping>(base, bytes);
    created.mode = static_cast<unsigned>(st.st_mode & 07777);
    created.uid = static_cast<unsigned>(st.st_uid);
    if (keep_fd) {
      created.fd = fd;
      closer.fd = -1;
    }
    return created;
  } catch (...) {
    shm_unlink(name.c_str());
    throw;
  }
}

namespace {

// Checks that `fd` is this user's private (0600) file of at least min_bytes and maps all of it. Returns
// nullptr while it is smaller than min_bytes (its creator is still sizing it) or cannot be mapped.
std::shared_ptr<Mapping> map_private_fd(int fd, const std::string& what, size_t min_bytes) {
  struct stat st {};
  if (fstat(fd, &st) != 0) fail_errno("fstat(" + what + ")");
  if (st.st_uid != geteuid()) {
    fail(MOECOMM_SHM_EREFUSED, "segment " + what + " is owned by uid " + std::to_string(st.st_uid) +
                                   ", not by this process's uid " + std::to_string(geteuid()));
  }
  if ((st.st_mode & 0077) != 0) {
    fail(MOECOMM_SHM_EREFUSED, "segment " + what + " is accessible by other users (mode " +
                                   std::to_string(st.st_mode & 0777) + " decimal); expected 0600");
  }
  if (!S_ISREG(st.st_mode) || st.st_size < 0 || static_cast<size_t>(st.st_size) < min_bytes) return nullptr;
  const size_t bytes = static_cast<size_t>(st.st_size);
  void* base = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  if (base == MAP_FAILED) return nullptr;
  return std::make_shared<Mapping>(base, bytes);
}

}  // namespace

std::shared_ptr<Mapping> open_segment(const std::string& name, size_t min_bytes) {
  const int fd = shm_open(name.c_str(), O_RDWR | O_CLOEXEC, 0);
  if (fd < 0) {
    if (errno == ENOENT) return nullptr;
    fail_errno("shm_open(" + name + ")");
  }
  FdCloser closer{fd};
  return map_private_fd(fd, name, min_bytes);
}

std::shared_ptr<Mapping> open_process_fd(int pid, int fd, size_t min_bytes) {
  const std::string path = "/proc/" + std::to_string(pid) + "/fd/" + std::to_string(fd);
  const int local = open(path.c_str(), O_RDWR | O_CLOEXEC);
  if (local < 0) return nullptr;
  FdCloser closer{local};
  return map_private_fd(local, path, min_bytes);
}

void unlink_segment(const std::string& name) {
  if (!name.empty()) shm_unlink(name.c_str());  // ENOENT: somebody (or we) unlinked it already
}

void store_words(std::atomic<uint64_t>* words, size_t count, const std::string& text) {
  char buffer[sizeof(uint64_t) * 16] = {};
  const size_t capacity = count * sizeof(uint64_t);
  if (count > 16 || text.size() >= capacity) fail(MOECOMM_SHM_EINVAL, "name too long for its slot: " + text);
  std::memcpy(buffer, text.data(), text.size());
  for (size_t i = 0; i < count; ++i) {
    uint64_t word;
    std::memcpy(&word, buffer + i * sizeof(uint64_t), sizeof word);
    words[i].store(word, std::memory_order_relaxed);
  }
}

std::string load_words(const std::atomic<uint64_t>* words, size_t count) {
  char buffer[sizeof(uint64_t) * 16 + 1] = {};
  if (count > 16) count = 16;
  for (size_t i = 0; i < count; ++i) {
    const uint64_t word = words[i].load(std::memory_order_relaxed);
    std::memcpy(buffer + i * sizeof(uint64_t), &word, sizeof word);
  }
  buffer[count * sizeof(uint64_t)] = '\0';
  return std::string(buffer);  // stops at the first NUL, never past the slot
}

}  // namespace moecomm::shm
