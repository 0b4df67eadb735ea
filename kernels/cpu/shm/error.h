// ShmError: how the shm transport's native core reports a failure (code + message). The C ABI in
// moecomm/shm.h turns it into a status code and a message buffer.
#pragma once

#include <stdexcept>
#include <string>

#include "moecomm/shm.h"

namespace moecomm::shm {

class ShmError : public std::runtime_error {
 public:
  ShmError(int code, const std::string& message) : std::runtime_error(message), code_(code) {}
  int code() const { return code_; }

 private:
  int code_;
};

[[noreturn]] inline void fail(int code, const std::string& message) {
  throw ShmError(code, message);
}

// "<what>: <strerror(errno)>" as MOECOMM_SHM_ESYS.
[[noreturn]] void fail_errno(const std::string& what);

}  // namespace moecomm::shm
