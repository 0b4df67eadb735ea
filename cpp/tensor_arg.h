// TensorArg: a tensor handed to the native core as a raw pointer, shape, strides and dtype code,
// with the checks the host layer applies before any kernel runs. No libtorch.
#pragma once

#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include "moecomm/cpu_kernels.h"

namespace moecomm::host {

// ScalarType codes as the ints TensorArg carries.
inline constexpr int kF32 = static_cast<int>(cpu::ScalarType::kFloat32);
inline constexpr int kF16 = static_cast<int>(cpu::ScalarType::kFloat16);
inline constexpr int kBF16 = static_cast<int>(cpu::ScalarType::kBFloat16);
inline constexpr int kI32 = static_cast<int>(cpu::ScalarType::kInt32);
inline constexpr int kI64 = static_cast<int>(cpu::ScalarType::kInt64);
inline constexpr int kBool = static_cast<int>(cpu::ScalarType::kBool);
inline constexpr int kI8 = static_cast<int>(cpu::ScalarType::kInt8);
inline constexpr int kF8E4M3 = static_cast<int>(cpu::ScalarType::kFloat8E4M3FN);

struct TensorArg {
  std::string name;  // the Python argument name, used in every error message
  uintptr_t data = 0;
  std::vector<int64_t> shape;
  std::vector<int64_t> strides;  // in elements
  int dtype = 0;                 // moecomm::cpu::ScalarType code
  int64_t nbytes = 0;            // bytes the core may touch from `data` on (to the end of the storage)

  cpu::ScalarType scalar_type() const { return static_cast<cpu::ScalarType>(dtype); }
  int64_t dim() const { return static_cast<int64_t>(shape.size()); }
  int64_t size(int64_t d) const { return shape.at(static_cast<size_t>(d)); }
  int64_t stride(int64_t d) const { return strides.at(static_cast<size_t>(d)); }
  int64_t numel() const {
    int64_t n = 1;
    for (int64_t s : shape) n *= s;
    return n;
  }
  template <typename T>
  T* ptr() const {
    return reinterpret_cast<T*>(data);
  }
};

[[noreturn]] inline void fail(const TensorArg& t, const std::string& what) {
  throw std::invalid_argument(t.name + ": " + what);
}

std::string dtype_name(int dtype);
std::string shape_string(const std::vector<int64_t>& shape);

// Checks rank, dtype in `allowed`, non-negative sizes/strides, matching metadata lengths, a non-null
// pointer whenever the tensor holds elements, and that every element its shape and strides address
// lies in [data, data + nbytes) (the extent check every kernel's bounds rest on).
void check_tensor(const TensorArg& t, int64_t expected_dim, std::initializer_list<int> allowed);
// Checks that shape and strides address only bytes in [data, data + nbytes) (no int64 overflow on the
// way) and returns the end of the last addressed element's bytes (0 for an empty tensor).
int64_t check_extent(const TensorArg& t);
void check_contiguous(const TensorArg& t);
void check_shape(const TensorArg& t, const std::vector<int64_t>& expected);
// check_tensor + contiguous + exact shape: what every small index/count tensor must satisfy.
void check_dense(const TensorArg& t, std::initializer_list<int> allowed, const std::vector<int64_t>& shape);

}  // namespace moecomm::host
