// The C ABI of moecomm/shm.h over moecomm::shm::Group: exceptions become status codes + messages.
#include <cstring>
#include <memory>
#include <new>
#include <string>
#include <vector>

#include "error.h"
#include "group.h"
#include "moecomm/shm.h"

struct moecomm_shm_group {
  moecomm::shm::Group group;
  template <typename... Args>
  explicit moecomm_shm_group(Args&&... args) : group(std::forward<Args>(args)...) {}
};

struct moecomm_shm_view {
  std::shared_ptr<moecomm::shm::Mapping> mapping;
};

namespace {

void write_error(char* err, size_t err_len, const char* message) {
  if (err == nullptr || err_len == 0) return;
  std::strncpy(err, message, err_len - 1);
  err[err_len - 1] = '\0';
}

template <typename Fn>
int guarded(char* err, size_t err_len, Fn&& fn) {
  try {
    fn();
    if (err != nullptr && err_len > 0) err[0] = '\0';
    return MOECOMM_SHM_OK;
  } catch (const moecomm::shm::ShmError& e) {
    write_error(err, err_len, e.what());
    return e.code();
  } catch (const std::bad_alloc&) {
    write_error(err, err_len, "out of memory");
    return MOECOMM_SHM_ESYS;
  } catch (const std::exception& e) {
    write_error(err, err_len, e.what());
    return MOECOMM_SHM_ESYS;
  }
}

moecomm::shm::Group& checked(moecomm_shm_group* group) {
  if (group == nullptr) moecomm::shm::fail(MOECOMM_SHM_EINVAL, "group: NULL handle");
  return group->group;
}

void check_data(const void* data, uint64_t nbytes, const char* name) {
  if (data == nullptr && nbytes > 0) {
    moecomm::shm::fail(MOECOMM_SHM_EINVAL, std::string(name) + ": NULL pointer for a non-empty buffer");
  }
}

}  // namespace

extern "C" {

int moecomm_shm_random_name(char* out, size_t out_len, char* err, size_t err_len) {
  return guarded(err, err_len, [&] {
    if (out == nullptr || out_len < MOECOMM_SHM_NAME_MAX) {
      moecomm::shm::fail(MOECOMM_SHM_EINVAL, "out: expected a buffer of at least MOECOMM_SHM_NAME_MAX bytes");
    }
    const std::string name = moecomm::shm::random_segment_name();
    std::memcpy(out, name.c_str(), name.size() + 1);
  });
}

int moecomm_shm_random_u64(uint64_t* out, char* err, size_t err_len) {
  return guarded(err, err_len, [&] {
    if (out == nullptr) moecomm::shm::fail(MOECOMM_SHM_EINVAL, "out: NULL");
    *out = moecomm::shm::random_u64();
  });
}

int moecomm_shm_open(int rank, int world_size, uint64_t nonce, const char* const* names, double timeout_s,
                     moecomm_shm_group** out, char* err, size_t err_len) {
  return guarded(err, err_len, [&] {
    if (out == nullptr) moecomm::shm::fail(MOECOMM_SHM_EINVAL, "out: NULL");
    *out = nullptr;
    if (names == nullptr || world_size < 1 || world_size > moecomm::shm::kMaxWorld) {
      moecomm::shm::fail(MOECOMM_SHM_EINVAL, "names/world_size: expected world_size in 1.." +
                                                 std::to_string(moecomm::shm::kMaxWorld) + " names");
    }
    std::vector<std::string> list;
    for (int r = 0; r < world_size; ++r) {
      if (names[r] == nullptr)
        moecomm::shm::fail(MOECOMM_SHM_EINVAL, "names[" + std::to_string(r) + "]: NULL");
      list.emplace_back(names[r], strnlen(names[r], MOECOMM_SHM_NAME_MAX));
    }
    *out = new moecomm_shm_group(rank, world_size, nonce, list, timeout_s);
  });
}

void moecomm_shm_close(moecomm_shm_group* group) {
  delete group;
}

int moecomm_shm_own_segment_mode(const moecomm_shm_group* group, unsigned* mode, unsigned* uid) {
  if (group == nullptr || mode == nullptr || uid == nullptr) return MOECOMM_SHM_EINVAL;
  *mode = group->group.own_segment_mode();
  *uid = group->group.own_segment_uid();
  return MOECOMM_SHM_OK;
}

int moecomm_shm_barrier(moecomm_shm_group* group, double timeout_s, char* err, size_t err_len) {
  return guarded(err, err_len, [&] { checked(group).barrier(timeout_s); });
}

int moecomm_shm_all_gather(moecomm_shm_group* group, const void* src, uint64_t nbytes, void* dst,
                           int num_threads, double timeout_s, char* err, size_t err_len) {
  return guarded(err, err_len, [&] {
    moecomm::shm::Group& g = checked(group);
    check_data(src, nbytes, "src");
    check_data(dst, nbytes, "dst");
    g.all_gather(src, nbytes, dst, num_threads, timeout_s);
  });
}

int moecomm_shm_all_to_all(moecomm_shm_group* group, const void* src, const int64_t* send_bytes, void* dst,
                           const int64_t* recv_bytes, int num_threads, double timeout_s, char* err,
                           size_t err_len) {
  return guarded(err, err_len, [&] {
    moecomm::shm::Group& g = checked(group);
    if (send_bytes == nullptr || recv_bytes == nullptr) {
      moecomm::shm::fail(MOECOMM_SHM_EINVAL, "send_bytes/recv_bytes: NULL");
    }
    uint64_t sent = 0, received = 0;
    for (int r = 0; r < g.world_size(); ++r) {
      sent += static_cast<uint64_t>(send_bytes[r] > 0 ? send_bytes[r] : 0);
      received += static_cast<uint64_t>(recv_bytes[r] > 0 ? recv_bytes[r] : 0);
    }
    check_data(src, sent, "src");
    check_data(dst, received, "dst");
    g.all_to_all(src, send_bytes, dst, recv_bytes, num_threads, timeout_s);
  });
}

int moecomm_shm_reduce_scatter(moecomm_shm_group* group, const void* src, int64_t block_elems, int dtype,
                               void* dst, int num_threads, double timeout_s, char* err, size_t err_len) {
  return guarded(err, err_len, [&] {
    moecomm::shm::Group& g = checked(group);
    if (dtype < MOECOMM_SHM_FLOAT32 || dtype > MOECOMM_SHM_INT64) {
      moecomm::shm::fail(MOECOMM_SHM_EINVAL, "dtype: unsupported code " + std::to_string(dtype));
    }
    check_data(src, block_elems > 0 ? 1 : 0, "src");
    check_data(dst, block_elems > 0 ? 1 : 0, "dst");
    g.reduce_scatter(src, block_elems, static_cast<moecomm::cpu::ScalarType>(dtype), dst, num_threads,
                     timeout_s);
  });
}

int moecomm_shm_ensure_region(moecomm_shm_group* group, const char* label, uint64_t nbytes, char* err,
                              size_t err_len) {
  return guarded(err, err_len, [&] {
    if (label == nullptr) moecomm::shm::fail(MOECOMM_SHM_EINVAL, "region: NULL label");
    checked(group).ensure_region(label, nbytes);
  });
}

int moecomm_shm_sync(moecomm_shm_group* group, double timeout_s, char* err, size_t err_len) {
  return guarded(err, err_len, [&] { checked(group).barrier(timeout_s); });
}

int moecomm_shm_region_view(moecomm_shm_group* group, int rank, const char* label, moecomm_shm_view** out,
                            void** data, uint64_t* nbytes, char* err, size_t err_len) {
  return guarded(err, err_len, [&] {
    if (label == nullptr || out == nullptr || data == nullptr || nbytes == nullptr) {
      moecomm::shm::fail(MOECOMM_SHM_EINVAL, "region_view: NULL argument");
    }
    char* base = nullptr;
    uint64_t size = 0;
    auto mapping = checked(group).region_view(rank, label, &base, &size);
    *out = new moecomm_shm_view{std::move(mapping)};
    *data = base;
    *nbytes = size;
  });
}

void moecomm_shm_view_release(moecomm_shm_view* view) {
  delete view;
}

}  // extern "C"
