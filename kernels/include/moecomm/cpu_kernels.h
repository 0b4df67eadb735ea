// Plain C++17 ABI of moecomm's CPU kernels. No torch, no Python: raw pointers, sizes and strides.
//
// Conventions
// - T tokens, K routed experts per token, E experts, H hidden size, N rows in expert-major order.
// - Strides are in elements, not bytes.
// - Every kernel validates the indices it dereferences and returns the flat index of the first bad
//   one (or another documented code) instead of reading or writing out of bounds; kOk (-1) on success.
#pragma once

#include <cstddef>
#include <cstdint>

namespace moecomm::cpu {

constexpr int64_t kOk = -1;

enum class ScalarType : int {
  kFloat32 = 0,
  kFloat16 = 1,
  kBFloat16 = 2,
  kInt32 = 3,
  kInt64 = 4,
  kBool = 5,
  kInt8 = 6,
  kFloat8E4M3FN = 7,  // float8 e4m3fn bytes
};

size_t element_size(ScalarType type);

// Counting sort of (token, k) pairs by expert id, stable in (token, k) order.
// ids: [T, K] contiguous; is_kept: [T, K] contiguous or nullptr (all kept).
// Writes tokens_per_expert [E] (kept pairs only) and row_of_pair [T, K] (row in expert-major order,
// -1 for a dropped pair). Returns kOk, or the flat index t*K+k of the first id outside [0, E).
template <typename Id>
int64_t route_layout(const Id* ids, int64_t num_tokens, int64_t top_k, int64_t num_experts,
                     const bool* is_kept, int64_t* tokens_per_expert, int64_t* row_of_pair, int num_threads);

// Marks which (token, k) pairs are kept under a per-bucket capacity. A bucket is a block of
// experts_per_bucket consecutive experts (1: per expert; E/R: per destination rank).
// weights == nullptr: earlier pairs win (token index, then k). Otherwise higher weight wins, ties by
// token index, then k. capacity: [E / experts_per_bucket], each >= 0.
// Returns kOk, or the flat index of the first id outside [0, E).
template <typename Id>
int64_t select_kept(const Id* ids, int64_t num_tokens, int64_t top_k, int64_t num_experts,
                    int64_t experts_per_bucket, const int64_t* capacity, const float* weights, bool* is_kept);

// Output rows [0, N) of a kernel, split over `count` buffers in row order: segment s holds the rows
// [first_row[s], first_row[s + 1]) at bases[s], each row_stride bytes after the previous one (row_stride may
// exceed the bytes a kernel writes per row: padded rows). One buffer is count 1, first_row {0, N}. A kernel
// writing the rows of several buffers at once (the peers' shared regions of one dispatch) reads each input
// row once. Valid when count >= 1, first_row[0] == 0, first_row does not decrease and row_stride >= 0;
// a kernel checks this before it writes (row_segments_valid).
struct RowSegments {
  char* const* bases = nullptr;        // [count]
  const int64_t* first_row = nullptr;  // [count + 1]; N = first_row[count]
  int64_t count = 0;
  int64_t row_stride = 0;  // bytes
};
constexpr int64_t kBadRowSegments = -2;

// out row row_of_pair[t, k] = x[t] for every pair with row >= 0. x: [T, H] with strides
// (x_stride_token, x_stride_hidden); out: N rows of H elements (row_stride >= H * elem_size). Bytes are
// copied as they are. The kept pairs must cover the rows [0, N) exactly once (so every output row is
// written): returns kOk, kBadRowSegments, the flat index of the first pair whose row is outside [-1, N) or
// repeats a row, or T*K when fewer than N rows are covered.
int64_t permute(const void* x, int64_t num_tokens, int64_t hidden, int64_t x_stride_token,
                int64_t x_stride_hidden, size_t elem_size, const int64_t* row_of_pair, int64_t top_k,
                const RowSegments& out, int num_threads);

// out[t - token_begin] = sum over k with row >= 0 of weights[t, k] * y[row_of_pair[t, k]], accumulated in
// float32, for the tokens t in [token_begin, token_end) (a slice of [0, T): the combine of one source's
// tokens). y: [N, H] with strides (y_stride_row, y_stride_hidden); weights: [T, K] float32 contiguous; out:
// [token_end - token_begin, H] contiguous, same type as y. The whole row_of_pair [T, K] is checked as for
// permute (same return codes); a range outside [0, T] (or reversed) returns kBadTokenRange.
constexpr int64_t kBadTokenRange = -3;  // (-2: a dtype the kernel does not take)
int64_t unpermute(const void* y, ScalarType type, int64_t num_rows, int64_t hidden, int64_t y_stride_row,
                  int64_t y_stride_hidden, const int64_t* row_of_pair, const float* weights,
                  int64_t num_tokens, int64_t top_k, int64_t token_begin, int64_t token_end, void* out,
                  int num_threads);

// Copies expert-major rows [N, H] (strides given) into a zero-padded [B, capacity, H] contiguous
// buffer; bucket b takes counts[b] consecutive rows. The caller checked counts (each in
// [0, capacity], summing to N); the kernel re-checks and returns the first bad bucket index.
int64_t pack_padded(const void* rows, int64_t num_rows, int64_t hidden, int64_t stride_row,
                    int64_t stride_hidden, size_t elem_size, const int64_t* counts, int64_t num_buckets,
                    int64_t capacity, void* out, int num_threads);

// Inverse of pack_padded: buffer [B, capacity, H] (strides given) -> rows [sum(counts), H] contiguous.
int64_t unpack_padded(const void* buffer, int64_t num_buckets, int64_t capacity, int64_t hidden,
                      int64_t stride_bucket, int64_t stride_slot, int64_t stride_hidden, size_t elem_size,
                      const int64_t* counts, void* out, int64_t num_rows, int num_threads);

// Reorders row blocks: rows [N, H] (strides given) hold blocks in (outer, inner) order with
// block_rows [num_outer, num_inner] rows each; out [N, H] contiguous receives them in (inner, outer)
// order. Returns kOk, the first bad block index, or num_outer*num_inner if the blocks do not sum to N.
int64_t regroup_blocks(const void* rows, int64_t num_rows, int64_t hidden, int64_t stride_row,
                       int64_t stride_hidden, size_t elem_size, const int64_t* block_rows, int64_t num_outer,
                       int64_t num_inner, void* out, int num_threads);

}  // namespace moecomm::cpu
