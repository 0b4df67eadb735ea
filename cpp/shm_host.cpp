#include "shm_host.h"

namespace moecomm::host {

namespace {

constexpr size_t kErrorBytes = 1024;

void raise_on(int status, const char* err) {
  if (status == MOECOMM_SHM_OK) return;
  if (status == MOECOMM_SHM_EINVAL) throw std::invalid_argument(err);
  throw ShmError(err);
}

// Bytes of a contiguous tensor of any supported dtype.
uint64_t checked_bytes(const TensorArg& t) {
  check_tensor(t, t.dim(),
               {static_cast<int>(cpu::ScalarType::kFloat32), static_cast<int>(cpu::ScalarType::kFloat16),
                static_cast<int>(cpu::ScalarType::kBFloat16), static_cast<int>(cpu::ScalarType::kInt32),
                static_cast<int>(cpu::ScalarType::kInt64), static_cast<int>(cpu::ScalarType::kBool)});
  check_contiguous(t);
  return static_cast<uint64_t>(t.numel()) * cpu::element_size(t.scalar_type());
}

void check_same_dtype(const TensorArg& out, const TensorArg& tensor) {
  if (out.dtype != tensor.dtype)
    fail(out, "expected dtype " + dtype_name(tensor.dtype) + ", got " + dtype_name(out.dtype));
}

void check_timeout(double timeout_s) {
  if (!(timeout_s > 0))
    throw std::invalid_argument("timeout_s: expected > 0, got " + std::to_string(timeout_s));
}

// Rows of `splits` (one per rank, each >= 0) checked to sum to `rows`.
void check_splits(const char* name, const std::vector<int64_t>& splits, int world, int64_t rows) {
  if (static_cast<int>(splits.size()) != world) {
    throw std::invalid_argument(std::string(name) + ": expected " + std::to_string(world) + " entries, got " +
                                std::to_string(splits.size()));
  }
  int64_t sum = 0;
  for (int64_t s : splits) {
    if (s < 0)
      throw std::invalid_argument(std::string(name) + ": expected sizes >= 0, got " + std::to_string(s));
    sum += s;
  }
  if (sum != rows) {
    throw std::invalid_argument(std::string(name) + ": sizes sum to " + std::to_string(sum) + ", expected " +
                                std::to_string(rows) + " rows");
  }
}

}  // namespace

std::string shm_random_name() {
  char name[MOECOMM_SHM_NAME_MAX];
  char err[kErrorBytes];
  raise_on(moecomm_shm_random_name(name, sizeof name, err, sizeof err), err);
  return name;
}

uint64_t shm_random_nonce() {
  uint64_t nonce = 0;
  char err[kErrorBytes];
  raise_on(moecomm_shm_random_u64(&nonce, err, sizeof err), err);
  return nonce;
}

ShmGroupHost::ShmGroupHost(int rank, int world_size, uint64_t nonce, const std::vector<std::string>& names,
                           double timeout_s)
    : rank_(rank), world_(world_size) {
  check_timeout(timeout_s);
  std::vector<const char*> pointers;
  for (const auto& name : names) pointers.push_back(name.c_str());
  if (static_cast<int>(pointers.size()) != world_size) {
    throw std::invalid_argument("names: expected " + std::to_string(world_size) + " names, got " +
                                std::to_string(pointers.size()));
  }
  char err[kErrorBytes];
  raise_on(moecomm_shm_open(rank, world_size, nonce, pointers.data(), timeout_s, &group_, err, sizeof err),
           err);
}

void ShmGroupHost::close() {
  moecomm_shm_close(group_);
  group_ = nullptr;
}

moecomm_shm_group* ShmGroupHost::handle() const {
  if (group_ == nullptr) throw std::invalid_argument("group: the shm group is closed");
  return group_;
}

std::pair<unsigned, unsigned> ShmGroupHost::own_segment_mode() const {
  unsigned mode = 0, uid = 0;
  moecomm_shm_own_segment_mode(handle(), &mode, &uid);
  return {mode, uid};
}

void ShmGroupHost::barrier(double timeout_s) {
  check_timeout(timeout_s);
  char err[kErrorBytes];
  raise_on(moecomm_shm_barrier(handle(), timeout_s, err, sizeof err), err);
}

void ShmGroupHost::all_gather(const TensorArg& tensor, const TensorArg& out, int num_threads,
                              double timeout_s) {
  check_timeout(timeout_s);
  const uint64_t nbytes = checked_bytes(tensor);
  const uint64_t out_bytes = checked_bytes(out);
  check_same_dtype(out, tensor);
  if (out_bytes != nbytes * static_cast<uint64_t>(world_)) {
    fail(out, "expected " + std::to_string(world_) + " x " + std::to_string(tensor.numel()) +
                  " elements, got " + std::to_string(out.numel()));
  }
  char err[kErrorBytes];
  raise_on(moecomm_shm_all_gather(handle(), tensor.ptr<const void>(), nbytes, out.ptr<void>(), num_threads,
                                  timeout_s, err, sizeof err),
           err);
}

void ShmGroupHost::all_to_all(const TensorArg& tensor, const std::vector<int64_t>& input_splits,
                              const TensorArg& out, const std::vector<int64_t>& output_splits,
                              int num_threads, double timeout_s) {
  check_timeout(timeout_s);
  checked_bytes(tensor);
  checked_bytes(out);
  check_same_dtype(out, tensor);
  if (tensor.dim() < 1) fail(tensor, "expected at least 1 dimension");
  if (out.dim() != tensor.dim()) fail(out, "expected " + std::to_string(tensor.dim()) + " dimensions");
  int64_t row_elems = 1;
  for (int64_t d = 1; d < tensor.dim(); ++d) {
    if (out.size(d) != tensor.size(d)) {
      fail(out, "expected trailing shape of tensor " + shape_string(tensor.shape) + ", got " +
                    shape_string(out.shape));
    }
    row_elems *= tensor.size(d);
  }
  check_splits("input_splits", input_splits, world_, tensor.size(0));
  check_splits("output_splits", output_splits, world_, out.size(0));
  const int64_t row_bytes = row_elems * static_cast<int64_t>(cpu::element_size(tensor.scalar_type()));
  std::vector<int64_t> send_bytes, recv_bytes;
  for (int r = 0; r < world_; ++r) {
    send_bytes.push_back(input_splits[static_cast<size_t>(r)] * row_bytes);
    recv_bytes.push_back(output_splits[static_cast<size_t>(r)] * row_bytes);
  }
  char err[kErrorBytes];
  raise_on(moecomm_shm_all_to_all(handle(), tensor.ptr<const void>(), send_bytes.data(), out.ptr<void>(),
                                  recv_bytes.data(), num_threads, timeout_s, err, sizeof err),
           err);
}

void ShmGroupHost::reduce_scatter(const TensorArg& tensor, const TensorArg& out, int num_threads,
                                  double timeout_s) {
  check_timeout(timeout_s);
  checked_bytes(tensor);
  checked_bytes(out);
  check_same_dtype(out, tensor);
  if (tensor.scalar_type() == cpu::ScalarType::kBool) fail(tensor, "bool tensors cannot be summed");
  if (tensor.numel() != out.numel() * world_) {
    fail(out, "expected " + std::to_string(tensor.numel()) + " / " + std::to_string(world_) +
                  " elements, got " + std::to_string(out.numel()));
  }
  char err[kErrorBytes];
  raise_on(moecomm_shm_reduce_scatter(handle(), tensor.ptr<const void>(), out.numel(), tensor.dtype,
                                      out.ptr<void>(), num_threads, timeout_s, err, sizeof err),
           err);
}

void ShmGroupHost::ensure_region(const std::string& region, int64_t nbytes) {
  if (nbytes < 0) throw std::invalid_argument("nbytes: expected >= 0, got " + std::to_string(nbytes));
  char err[kErrorBytes];
  raise_on(
      moecomm_shm_ensure_region(handle(), region.c_str(), static_cast<uint64_t>(nbytes), err, sizeof err),
      err);
}

void ShmGroupHost::sync(double timeout_s) {
  check_timeout(timeout_s);
  char err[kErrorBytes];
  raise_on(moecomm_shm_sync(handle(), timeout_s, err, sizeof err), err);
}

std::unique_ptr<ShmRegionBuffer> ShmGroupHost::region(int rank, const std::string& region) {
  moecomm_shm_view* view = nullptr;
  void* data = nullptr;
  uint64_t nbytes = 0;
  char err[kErrorBytes];
  raise_on(moecomm_shm_region_view(handle(), rank, region.c_str(), &view, &data, &nbytes, err, sizeof err),
           err);
  return std::make_unique<ShmRegionBuffer>(view, data, nbytes);
}

}  // namespace moecomm::host
