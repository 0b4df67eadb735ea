// pack_padded / unpack_padded: expert-major rows <-> zero-padded [buckets, capacity, H] buffers.
#include <vector>

#include "copy.h"
#include "moecomm/cpu_kernels.h"
#include "parallel.h"

namespace moecomm::cpu {

namespace {

// Checks counts and returns kOk or the first bad bucket; fills the first row of every bucket.
int64_t bucket_offsets(const int64_t* counts, int64_t num_buckets, int64_t capacity, int64_t num_rows,
                       std::vector<int64_t>& first_row) {
  first_row.assign(static_cast<size_t>(num_buckets) + 1, 0);
  for (int64_t b = 0; b < num_buckets; ++b) {
    if (counts[b] < 0 || counts[b] > capacity || counts[b] > num_rows - first_row[b])
      return b;  // no overflow
    first_row[b + 1] = first_row[b] + counts[b];
  }
  return first_row[num_buckets] == num_rows ? kOk : num_buckets;
}

}  // namespace

int64_t pack_padded(const void* rows, int64_t num_rows, int64_t hidden, int64_t stride_row,
                    int64_t stride_hidden, size_t elem_size, const int64_t* counts, int64_t num_buckets,
                    int64_t capacity, void* out, int num_threads) {
  std::vector<int64_t> first_row;
  const int64_t bad = bucket_offsets(counts, num_buckets, capacity, num_rows, first_row);
  if (bad != kOk || hidden == 0) return bad;  // H = 0: nothing to copy or zero, whatever the counts
  const int64_t es = static_cast<int64_t>(elem_size);
  const int64_t bucket_bytes = capacity * hidden * es;
  const char* src = static_cast<const char*>(rows);
  char* dst = static_cast<char*>(out);
  parallel_for(num_buckets, num_threads, 1, [&](int64_t b0, int64_t b1, int64_t) {
    for (int64_t b = b0; b < b1; ++b) {
      char* bucket = dst + b * bucket_bytes;
      copy_rows(bucket, src + first_row[b] * stride_row * es, counts[b], hidden, stride_row, stride_hidden,
                elem_size);
      zero_bytes(bucket + counts[b] * hidden * es, (capacity - counts[b]) * hidden * es);
    }
  });
  return kOk;
}

int64_t unpack_padded(const void* buffer, int64_t num_buckets, int64_t capacity, int64_t hidden,
                      int64_t stride_bucket, int64_t stride_slot, int64_t stride_hidden, size_t elem_size,
                      const int64_t* counts, void* out, int64_t num_rows, int num_threads) {
  std::vector<int64_t> first_row;
  const int64_t bad = bucket_offsets(counts, num_buckets, capacity, num_rows, first_row);
  if (bad != kOk || hidden == 0) return bad;  // H = 0: nothing to copy, whatever the counts
  const int64_t es = static_cast<int64_t>(elem_size);
  const char* src = static_cast<const char*>(buffer);
  char* dst = static_cast<char*>(out);
  parallel_for(num_buckets, num_threads, 1, [&](int64_t b0, int64_t b1, int64_t) {
    for (int64_t b = b0; b < b1; ++b) {
      copy_rows(dst + first_row[b] * hidden * es, src + b * stride_bucket * es, counts[b], hidden,
                stride_slot, stride_hidden, elem_size);
    }
  });
  return kOk;
}

}  // namespace moecomm::cpu
